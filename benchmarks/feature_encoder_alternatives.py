"""Alternatives tried for the `tiny` feature encoder's training step, measured against what it does now.

    .venv/bin/python benchmarks/feature_encoder_alternatives.py

1. GroupNorm folded into the first conv. The first conv has one input channel and no bias that
   survives the norm, so each channel's mean and variance over an utterance follow exactly from
   the mean and 10 x 10 covariance of the waveform's frames (computed here in float64):
   ``group_norm(conv(x))`` is then one per-utterance affine product of the frames, with no
   pass over the (B, 32, T) conv output for statistics, normalisation or their gradients.
   Prints the largest output / gradient difference to the current encoder and both times.
2. The second conv's backward (32 channels, kernel 3, stride 2, 4 x 12,799 frames, time-major):
   oneDNN's input and weight gradients in one call, in two calls, and the weight gradient with
   the same frames regrouped into more, shorter sequences (where oneDNN's kernel runs faster).

One torch thread, the allocator setting of our training loops, CPU-time medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from hfspeech.configuration import SpeechEncoderConfig
from hfspeech.modeling.feature_encoder import FeatureEncoder
from hfspeech.training.acceleration import reuse_freed_memory


def median_cpu_ms(function, repeats: int) -> float:
    for _ in range(3):
        function()
    times = []
    for _ in range(repeats):
        began = time.process_time()
        function()
        times.append(time.process_time() - began)
    return 1e3 * statistics.median(times)


def folded_first_block(encoder: FeatureEncoder, audio: torch.Tensor) -> torch.Tensor:
    """The first block's normalised pre-activation, (B, C, 1, T) time-major, by one product per utterance."""
    first = encoder.conv_layers[0]
    weight = first.conv.weight.squeeze(1)  # (C, k)
    kernel = weight.shape[1]
    frames = audio.unfold(1, kernel, first.stride)  # (B, T, k) view
    batch, num_frames, _ = frames.shape
    with torch.no_grad():
        frames64 = frames.double()
        mean = frames64.mean(1)  # (B, k)
        centered = frames64 - mean[:, None]
        covariance = centered.transpose(1, 2) @ centered / num_frames  # (B, k, k)
    w64 = weight.double()
    variance = ((w64 @ covariance) * w64).sum(-1)  # (B, C): Var_t(frames @ w)
    scale = first.norm.weight.double() * torch.rsqrt(variance + first.norm.eps)
    shift = first.norm.bias.double() - (mean @ w64.T) * scale
    folded = torch.cat([w64 * scale[..., None], shift[..., None]], -1).to(audio.dtype)  # (B, C, k + 1)
    augmented = torch.empty(batch, num_frames, kernel + 1, dtype=audio.dtype)
    augmented[..., :kernel] = frames
    augmented[..., kernel] = 1.0  # the shift as one more input column: no broadcast copy
    return torch.bmm(augmented, folded.transpose(1, 2)).transpose(1, 2).unsqueeze(2)


def folded_forward(encoder: FeatureEncoder, audio: torch.Tensor) -> torch.Tensor:
    hidden = folded_first_block(encoder, audio)
    norm = None  # the first block's norm is inside the product
    for layer in encoder.conv_layers[1:]:
        hidden = layer.pre_activation(hidden, norm, None, encoder.channels_last)
        norm = layer.norm
    return F.gelu(hidden.squeeze(2)).transpose(1, 2)


def compare_fold(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    encoder = FeatureEncoder(SpeechEncoderConfig.from_preset("tiny", objective="hubert"))
    if not encoder.channels_last or encoder.conv_layers[0].norm is None:
        raise SystemExit("expects the tiny preset's time-major group-norm encoder")
    with torch.no_grad():  # non-trivial norm parameters
        for parameter in encoder.parameters():
            if parameter.dim() == 1:
                parameter.add_(0.3 * torch.randn_like(parameter))
    audio = 0.1 * torch.randn(args.batch, int(args.seconds * 16000)) + 0.01
    current, folded = encoder(audio), folded_forward(encoder, audio)
    difference = float((folded - current).detach().abs().max())
    upstream = torch.randn_like(current)
    parameters = list(encoder.parameters())
    grads_current = torch.autograd.grad((current * upstream).sum(), parameters)
    grads_folded = torch.autograd.grad((folded * upstream).sum(), parameters)
    relative = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(grads_folded, grads_current))
    print(f"folded vs current: max |output difference| {difference:.1e} "
          f"(outputs up to {float(current.detach().abs().max()):.1e}); max relative gradient difference {relative:.1e}")

    def step(forward):
        def run() -> None:
            encoder.zero_grad(set_to_none=True)
            forward(encoder, audio).backward(upstream)
        return run

    for round_ in range(args.rounds):  # alternate, so drift on the machine hits both
        now = median_cpu_ms(step(FeatureEncoder.forward), args.repeats)
        fold = median_cpu_ms(step(folded_forward), args.repeats)
        print(f"round {round_ + 1}: forward + backward, current {now:.2f} ms, GroupNorm folded {fold:.2f} ms")


def compare_conv_backward(args: argparse.Namespace) -> None:
    channels, frames = 32, int(args.seconds * 16000 - 10) // 5 + 1

    def conv_backward(groups: int, needs: list[bool]):
        hidden = torch.randn(args.batch * groups, channels, 1, frames // groups).contiguous(
            memory_format=torch.channels_last)
        weight = torch.randn(channels, channels, 1, 3).contiguous(memory_format=torch.channels_last)
        grad = torch.randn_like(F.conv2d(hidden, weight, None, (1, 2)))
        return lambda: torch.ops.aten.convolution_backward(
            grad, hidden, weight, None, [1, 2], [0, 0], [1, 1], False, [0, 0], 1, needs)

    both = median_cpu_ms(conv_backward(1, [True, True, False]), args.repeats)
    data = median_cpu_ms(conv_backward(1, [True, False, False]), args.repeats)
    weights = median_cpu_ms(conv_backward(1, [False, True, False]), args.repeats)
    print(f"second conv backward, {args.batch} x {frames} frames: one call {both:.2f} ms; "
          f"input gradient {data:.2f} + weight gradient {weights:.2f} ms")
    for groups in (2, 4):
        regrouped = median_cpu_ms(conv_backward(groups, [False, True, False]), args.repeats)
        print(f"  weight gradient with the frames as {args.batch * groups} sequences of {frames // groups}: "
              f"{regrouped:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    reuse_freed_memory()
    torch.set_num_threads(1)
    compare_fold(args)
    compare_conv_backward(args)


if __name__ == "__main__":
    main()

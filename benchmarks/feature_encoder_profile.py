"""Where hfspeech's conv feature encoder spends a training step: forward + backward CPU time and
the most expensive ops (torch.profiler self time, grouped by input shape).

    .venv/bin/python benchmarks/feature_encoder_profile.py --size tiny

One torch thread, the allocator setting of our training loops (`reuse_freed_memory`), a random
4 x 4 s batch, the preset's HuBERT configuration.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import profile

from hfspeech.configuration import SpeechEncoderConfig
from hfspeech.modeling import feature_encoder
from hfspeech.modeling.feature_encoder import FeatureEncoder
from hfspeech.training.acceleration import reuse_freed_memory


def helper_times(step, steps: int) -> None:
    """Wall time per step inside the encoder's conv / GELU helpers, timed without the profiler.

    Under torch.profiler the step runs slower and its per-op times add up to more than the
    unprofiled step takes, so the split between the helpers is measured with plain timers.
    """
    helpers = ("_conv", "_conv_backward", "_gelu", "_gelu_backward_into")
    spent = dict.fromkeys(helpers, 0.0)
    originals = {name: getattr(feature_encoder, name) for name in helpers}

    def timed(name):
        def run(*args, **kwargs):
            began = time.perf_counter()
            try:
                return originals[name](*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - began
        return run

    for name in helpers:
        setattr(feature_encoder, name, timed(name))
    try:
        began = time.perf_counter()
        for _ in range(steps):
            step()
        total = time.perf_counter() - began
    finally:
        for name, function in originals.items():
            setattr(feature_encoder, name, function)
    parts = ", ".join(f"{name} {1e3 * seconds / steps:.2f}" for name, seconds in spent.items())
    rest = 1e3 * (total - sum(spent.values())) / steps
    print(f"timed helpers (ms/step of {1e3 * total / steps:.2f} wall): {parts}; everything else {rest:.2f} "
          "(first conv's backward, GroupNorm, its gradient, autograd)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rows", type=int, default=12)
    args = parser.parse_args()
    reuse_freed_memory()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    encoder = FeatureEncoder(SpeechEncoderConfig.from_preset(args.size, objective="hubert"))
    audio = torch.randn(args.batch, int(args.seconds * 16000))
    grad = torch.randn_like(encoder(audio))

    def step() -> None:
        encoder.zero_grad(set_to_none=True)
        encoder(audio).backward(grad)

    for _ in range(3):
        step()
    began = time.process_time()
    for _ in range(args.steps):
        step()
    print(f"{args.size} feature encoder, forward + backward: {1e3 * (time.process_time() - began) / args.steps:.2f} ms CPU")
    helper_times(step, args.steps)
    with profile(record_shapes=True) as profiler:
        for _ in range(5):
            step()
    events = sorted(profiler.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
    print(f"under torch.profiler: {sum(e.self_cpu_time_total for e in events) / 5e3:.2f} ms/step of op self time")
    for event in events[: args.rows]:
        print(f"{event.key:32s} {event.self_cpu_time_total / 5e3:6.2f} ms/step  {str(event.input_shapes)[:90]}")
    # the same GELU alone, on a tensor of the first block's output shape that stays in cache
    first = torch.randn(args.batch, int(args.seconds * 16000 - 10) // 5 + 1, encoder.conv_layers[0].conv.out_channels)
    began = time.process_time()
    for _ in range(50):
        torch.nn.functional.gelu(first)
    print(f"GELU alone on {tuple(first.shape)}, repeated: {1e3 * (time.process_time() - began) / 50:.2f} ms")


if __name__ == "__main__":
    main()

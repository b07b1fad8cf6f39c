"""Mask + negative sampling and quantizer speed: hfspeech (torch, vectorised) vs transformers (NumPy / one-hot).

Part 1 times one pretraining step's worth of sampling: a span mask (p=0.65, M=10, min 2 spans)
for a padded batch plus K=100 negatives per masked step, for
``batch 8 x 30 s`` and ``batch 32 x 15 s`` (50 frames/s, utterance lengths drawn uniformly
in [50%, 100%] of the longest, fixed seed):

* ours: `compute_span_mask` + `sample_negative_indices` (torch, CPU here);
* reference: transformers' ``_compute_mask_indices`` + ``_sample_negative_indices`` (NumPy,
  Python loop over utterances), plus the ``torch.tensor`` copy their example does.

Part 2 times a training-mode forward+backward of the Gumbel quantizer with the base shape
(C=512, G=2, V=320, D=256) on ``batch x seconds`` frames, ours vs transformers'
``Wav2Vec2GumbelVectorQuantizer`` (same weights), and records the largest tensor each creates.

Runs alternate (ours, theirs, ...) so background load hits both; medians are reported.

    .venv/bin/python benchmarks/masking.py --repeats 30 --quantizer-repeats 3 --threads 1 --output benchmarks/results/masking.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers.models.wav2vec2.modeling_wav2vec2 import (
    Wav2Vec2GumbelVectorQuantizer,
    _compute_mask_indices,
    _sample_negative_indices,
)

from hfspeech.configuration import SpeechEncoderConfig
from hfspeech.modeling.masking import compute_span_mask, sample_negative_indices
from hfspeech.modeling.quantizer import GumbelProductQuantizer

FRAME_RATE = 50


def batch_lengths(batch: int, seconds: float, seed: int) -> tuple[int, torch.Tensor]:
    num_frames = int(seconds * FRAME_RATE) - 1  # 30 s of 16 kHz audio -> 1499 frames
    generator = torch.Generator().manual_seed(seed)
    lengths = (num_frames * (0.5 + 0.5 * torch.rand(batch, generator=generator))).long()
    lengths[0] = num_frames
    return num_frames, lengths


def ours_mask(batch: int, num_frames: int, lengths: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return compute_span_mask(batch, num_frames, 0.65, 10, min_masks=2, frame_lengths=lengths, generator=generator)


def ours_negatives(mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return sample_negative_indices(mask, 100, generator)


def reference_mask(batch: int, num_frames: int, attention_mask: torch.Tensor) -> np.ndarray:
    return _compute_mask_indices((batch, num_frames), 0.65, 10, attention_mask=attention_mask, min_masks=2)


def reference_negatives(mask: np.ndarray) -> torch.Tensor:
    # transformers' example converts the NumPy result to a torch tensor before the model call
    return torch.tensor(_sample_negative_indices(mask.shape, 100, mask_time_indices=mask), dtype=torch.long)


def timed(function, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def time_call(function, *args) -> float:
    return timed(function, *args)[0]


def sampling_rows(repeats: int) -> list[tuple[str, list[float], list[float]]]:
    """Per batch shape: median seconds (mask, negatives, total) for ours and for transformers."""
    rows = []
    for batch, seconds in ((8, 30.0), (32, 15.0)):
        num_frames, lengths = batch_lengths(batch, seconds, seed=batch)
        attention_mask = torch.arange(num_frames)[None, :] < lengths[:, None]
        generator = torch.Generator().manual_seed(0)
        np.random.seed(0)
        ours, theirs = [], []
        for repeat in range(repeats + 1):  # the first round is a warm-up
            mask_time, mask = timed(ours_mask, batch, num_frames, lengths, generator)
            negatives_time, _ = timed(ours_negatives, mask, generator)
            reference_mask_time, reference = timed(reference_mask, batch, num_frames, attention_mask)
            reference_negatives_time, _ = timed(reference_negatives, reference)
            if repeat:
                ours.append((mask_time, negatives_time, mask_time + negatives_time))
                theirs.append((reference_mask_time, reference_negatives_time,
                               reference_mask_time + reference_negatives_time))
        medians = lambda values: [statistics.median(column) for column in zip(*values)]  # noqa: E731
        rows.append((f"{batch} x {seconds:.0f} s ({num_frames} frames)", medians(ours), medians(theirs)))
    return rows


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor (in bytes) that any aten op produces, forward and backward."""

    def __init__(self) -> None:
        super().__init__()
        self.largest_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for value in tree_flatten(result)[0]:
            if isinstance(value, torch.Tensor):
                self.largest_bytes = max(self.largest_bytes, value.numel() * value.element_size())
        return result


def quantizer_rows(repeats: int) -> list[tuple[str, float, float, float, float]]:
    """Per size: (name, our median s, our largest tensor MB, transformers' median s, their largest MB)."""
    config = SpeechEncoderConfig.from_preset("base")
    torch.manual_seed(0)
    ours = GumbelProductQuantizer(config).train()
    reference = Wav2Vec2GumbelVectorQuantizer(config).train()
    reference.load_state_dict(ours.state_dict())
    generator = torch.Generator().manual_seed(0)

    def step(module, features: torch.Tensor, mask: torch.Tensor) -> None:
        if module is ours:
            output = module(features, mask=mask, generator=generator)
            codevectors, perplexity = output.codevectors, output.perplexity
        else:
            codevectors, perplexity = module(features, mask_time_indices=mask)
        (codevectors.square().mean() - perplexity * 1e-3).backward()

    rows = []
    for batch, seconds in ((2, 15.0), (8, 15.0)):
        frames = batch * (int(seconds * FRAME_RATE) - 1)
        features = torch.randn(1, frames, config.conv_dim[-1], requires_grad=True)
        mask = torch.ones(1, frames, dtype=torch.bool)
        largest = {}
        for module in (ours, reference):
            with LargestTensor() as recorder:
                step(module, features, mask)
            largest[module is ours] = recorder.largest_bytes / 2**20
        times = {True: [], False: []}
        for _ in range(repeats):
            for module in (ours, reference):
                times[module is ours].append(time_call(step, module, features, mask))
        rows.append((f"{batch} x {seconds:.0f} s ({frames} frames)", statistics.median(times[True]), largest[True],
                     statistics.median(times[False]), largest[False]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quantizer-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (NumPy is single-threaded here)")
    parser.add_argument("--skip-quantizer", action="store_true", help="only time masking + negatives")
    parser.add_argument("--output", type=Path, default=None, help="write a Markdown report here")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)

    lines = [
        "# Masking, negative sampling and quantizer speed",
        "",
        f"Command: `.venv/bin/python benchmarks/masking.py --repeats {arguments.repeats} "
        f"--quantizer-repeats {arguments.quantizer_repeats} --threads {arguments.threads}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, CPU only, torch {torch.__version__} "
        f"({arguments.threads} thread), NumPy {np.__version__}, transformers {transformers.__version__}. "
        "The 2 CPU cores were shared with other jobs; runs alternate between implementations.",
        "",
        "## Span mask (p=0.65, M=10, min 2) + 100 negatives per masked step, padded batch",
        "",
        "Median ms over the repeats: mask / negatives / total.",
        "",
        "| batch | hfspeech (torch) | transformers (NumPy) | speed-up (total) |",
        "|---|---:|---:|---:|",
    ]
    for name, ours, theirs in sampling_rows(arguments.repeats):
        cells = [" / ".join(f"{value * 1e3:.1f}" for value in values) for values in (ours, theirs)]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {theirs[2] / ours[2]:.2f}x |")
    if arguments.skip_quantizer:
        lines.append("")
        return finish(lines, arguments.output)
    lines += [
        "",
        "## Gumbel quantizer, training forward + backward, base shape (C=512, G=2, V=320, D=256)",
        "",
        "| frames | hfspeech ms | hfspeech largest tensor MB | transformers ms | transformers largest tensor MB "
        "| speed-up | largest-tensor ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, ours, ours_memory, theirs, theirs_memory in quantizer_rows(arguments.quantizer_repeats):
        lines.append(
            f"| {name} | {ours * 1e3:.0f} | {ours_memory:.0f} | {theirs * 1e3:.0f} | {theirs_memory:.0f} | "
            f"{theirs / ours:.2f}x | {theirs_memory / max(ours_memory, 1):.1f}x |"
        )
    lines += [
        "",
        "Largest tensor = the biggest tensor any op creates in forward + backward (recorded with a "
        "TorchDispatchMode, in a separate untimed step): transformers multiplies an (N, G*V, D/G) one-hot by the "
        "codebook, hfspeech does a (G, N, V) x (G, V, D/G) bmm, so its largest tensor is an (N, C) or (N, G*V) one.",
    ]
    finish(lines, arguments.output)


def finish(lines: list[str], output: Path | None) -> None:
    report = "\n".join(lines) + "\n"
    print(report)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(report)


if __name__ == "__main__":
    main()

"""Pretraining crops (fairseq ``RawAudioDataset``): random crops and the short-clip filter.

fairseq crops every waveform longer than ``max_sample_size`` (250k samples = 15.6 s) to a
random window, and with ``pad=False`` crops a whole batch to its shortest member so no
padding is needed; clips shorter than ``min_sample_size`` (32k samples = 2 s) are removed
from the dataset beforehand. Here the removal is explicit, counted and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .audio import TARGET_SAMPLE_RATE
from .records import plain_column

logger = logging.getLogger(__name__)

FAIRSEQ_MAX_SAMPLES = 250_000
FAIRSEQ_MIN_SAMPLES = 32_000


def crop_windows(
    lengths: Sequence[int], max_samples: int | None, crop_to_shortest: bool, generator: torch.Generator | None = None
) -> tuple[list[int], list[int]]:
    """Choose random crop windows.

    Args:
        lengths: samples per waveform.
        max_samples: longest allowed crop (None = no limit).
        crop_to_shortest: crop every waveform to ``min(min(lengths), max_samples)``.
        generator: torch generator for the random starts.

    Returns:
        ``(starts, sizes)``: window start and size per waveform.
    """
    limit = max_samples if max_samples is not None else max(lengths)
    target = min(min(lengths), limit) if crop_to_shortest else None
    starts, sizes = [], []
    for length in lengths:
        size = target if target is not None else min(length, limit)
        slack = length - size
        start = int(torch.randint(0, slack + 1, (1,), generator=generator).item()) if slack > 0 else 0
        starts.append(start)
        sizes.append(size)
    return starts, sizes


def drop_short_utterances(dataset: Any, min_samples: int = FAIRSEQ_MIN_SAMPLES) -> tuple[Any, int | None]:
    """Remove utterances shorter than ``min_samples`` at 16 kHz (counted and logged).

    Map-style datasets are filtered on the ``duration`` column without decoding, and the
    number removed is returned; streaming datasets get a lazy ``filter`` and the count is
    ``None`` (each removal is logged at DEBUG level while streaming).
    """
    min_seconds = min_samples / TARGET_SAMPLE_RATE
    if hasattr(dataset, "__len__") and hasattr(dataset, "select"):
        durations = np.asarray(plain_column(dataset, "duration"))
        keep = np.flatnonzero(np.round(durations * TARGET_SAMPLE_RATE) >= min_samples)
        dropped = len(durations) - keep.size
        logger.info("dropping %d of %d utterances shorter than %d samples (%.2f s)",
                    dropped, len(durations), min_samples, min_seconds)
        return dataset.select(keep), dropped

    def long_enough(example: dict) -> bool:
        ok = round(example["duration"] * TARGET_SAMPLE_RATE) >= min_samples
        if not ok:
            logger.debug("dropping %s: shorter than %d samples", example.get("id"), min_samples)
        return ok

    logger.info("streaming: utterances shorter than %d samples (%.2f s) are dropped", min_samples, min_seconds)
    return dataset.filter(long_enough), None

"""Speed perturbation: Kaldi's and ESPnet's data augmentation for small corpora, on the fly.

Kaldi's ``perturb_data_dir_speed.sh`` (sox ``speed``) makes copies of the training data at
0.9x and 1.1x speed by resampling: the audio plays ``factor`` times as fast, so it lasts
``1 / factor`` as long and its pitch moves with it. Here each utterance draws one factor per
epoch from a seeded ``torch.Generator`` instead (the same three-fold data in expectation,
without copies on disk); the resampling is SciPy's polyphase filter
(``scipy.signal.resample_poly``). HuBERT frame labels follow the audio (`stretch_labels`).
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import torch

KALDI_SPEED_FACTORS = (0.9, 1.0, 1.1)


def resampling_ratio(factor: float) -> tuple[int, int]:
    """``(up, down)`` with ``up / down = 1 / factor`` (output samples per input sample)."""
    if not 0.5 <= factor <= 2.0:
        raise ValueError(f"speed factor {factor} is outside [0.5, 2]; use factors near 1 (Kaldi: 0.9, 1.0, 1.1)")
    ratio = Fraction(1 / factor).limit_denominator(100)
    return ratio.numerator, ratio.denominator


def speed_perturb(waveform: np.ndarray, factor: float) -> np.ndarray:
    """(S,) float waveform -> (about S / factor,) float32 waveform that plays ``factor`` times as fast."""
    if factor == 1.0:
        return np.asarray(waveform, dtype=np.float32)
    from scipy.signal import resample_poly

    up, down = resampling_ratio(factor)
    return resample_poly(np.asarray(waveform, dtype=np.float32), up, down).astype(np.float32)


def stretch_labels(labels: np.ndarray, factor: float) -> np.ndarray:
    """Frame labels (N,) of an utterance -> labels of its ``factor``-speed version (round(N / factor),).

    Output frame j covers the time of input frame ``floor(j * factor)`` (nearest neighbour).
    """
    labels = np.asarray(labels)
    if factor == 1.0 or labels.size == 0:
        return labels
    count = max(1, int(round(labels.size / factor)))
    source = np.minimum((np.arange(count) * factor).astype(np.int64), labels.size - 1)
    return labels[source]


class SpeedPerturbation:
    """Draw one speed factor per utterance (uniformly from ``factors``) with a seeded generator.

    Args:
        factors: the choices, e.g. `KALDI_SPEED_FACTORS`; ``(1.0,)`` or empty = no perturbation.
        generator: torch.Generator the draws come from (re-seed it per epoch for resumable runs).
    """

    def __init__(self, factors: Sequence[float], generator: torch.Generator | None = None) -> None:
        self.factors = tuple(float(factor) for factor in factors) or (1.0,)
        for factor in self.factors:
            resampling_ratio(factor)  # validates the range
        self.generator = generator

    @property
    def active(self) -> bool:
        return any(factor != 1.0 for factor in self.factors)

    @property
    def slowest(self) -> float:
        """The smallest factor (the longest output)."""
        return min(self.factors)

    @property
    def fastest(self) -> float:
        """The largest factor (the shortest output: fewest frames for CTC)."""
        return max(self.factors)

    def draw(self, count: int, generator: torch.Generator | None = None) -> list[float]:
        """``count`` factors, one per utterance of a batch, from ``generator`` (default: this object's)."""
        if not self.active:
            return [1.0] * count
        choices = torch.randint(len(self.factors), (count,), generator=generator or self.generator)
        return [self.factors[int(choice)] for choice in choices]

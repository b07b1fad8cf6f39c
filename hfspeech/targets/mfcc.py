"""Kaldi-compatible MFCC + deltas in torch: the features of HuBERT's first iteration.

This reproduces fairseq's ``examples/hubert/simple_kmeans/dump_mfcc_feature.py``, which calls
``torchaudio.compliance.kaldi.mfcc(waveform, sample_frequency=16000, use_energy=False)`` and
then ``torchaudio.functional.compute_deltas`` twice (win_length 5). torchaudio is not a
dependency, so the Kaldi steps are implemented here with the same defaults:

* framing: 25 ms windows (400 samples), 10 ms hop (160 samples), ``snip_edges=True`` so an
  utterance of S samples gives ``1 + (S - 400) // 160`` frames (100 Hz), no dither;
* per frame: remove the DC offset, pre-emphasis 0.97 (first sample replicated), Povey window
  (``hann(400, periodic=False) ** 0.85``), zero-pad to 512, power spectrum;
* 23 triangular mel filters between 20 Hz and the Nyquist frequency on Kaldi's mel scale
  ``1127 ln(1 + f / 700)``, natural log floored at float32 epsilon;
* orthonormal DCT-II keeping 13 coefficients, cepstral lifter 22;
* deltas: ``sum_{k=-2..2} k x[t+k] / 10`` with edge frames replicated, then deltas of deltas.

Everything is batched: `compute_mfcc_batch` lays a list of waveforms out in one signal,
frames them with one gather and runs the FFT/matmuls in chunks of 16,384 frames, on ``device``
(the GPU when asked). On a CPU this costs about the same CPU time as a per-utterance loop; it
avoids per-utterance kernel launches on a GPU and per-utterance thread synchronisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class MFCCConfig:
    """Kaldi MFCC options (the defaults of torchaudio.compliance.kaldi.mfcc, use_energy=False)."""

    sample_rate: int = SAMPLE_RATE
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    preemphasis: float = 0.97
    num_mel_bins: int = 23
    low_freq: float = 20.0
    num_ceps: int = 13
    cepstral_lifter: float = 22.0
    delta_window: int = 5

    @property
    def window_size(self) -> int:
        return int(self.sample_rate * self.frame_length_ms * 0.001)

    @property
    def window_shift(self) -> int:
        return int(self.sample_rate * self.frame_shift_ms * 0.001)

    @property
    def fft_size(self) -> int:
        return 1 << (self.window_size - 1).bit_length()

    @property
    def frame_rate(self) -> float:
        """Frames per second (100 for the default 10 ms hop)."""
        return self.sample_rate / self.window_shift

    @property
    def dim(self) -> int:
        """Feature dimension: coefficients + deltas + delta-deltas (39)."""
        return 3 * self.num_ceps


def num_mfcc_frames(num_samples: int, config: MFCCConfig = MFCCConfig()) -> int:
    """Number of frames Kaldi produces with snip_edges=True (0 if shorter than one window)."""
    if num_samples < config.window_size:
        return 0
    return 1 + (num_samples - config.window_size) // config.window_shift


def kaldi_mel_scale(frequency: np.ndarray | float) -> np.ndarray | float:
    """Kaldi's mel scale: 1127 ln(1 + f / 700)."""
    return 1127.0 * np.log(1.0 + np.asarray(frequency) / 700.0)


@lru_cache(maxsize=8)
def _constants(config: MFCCConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Povey window (W,), mel filterbank (F/2+1, M), DCT (M, C) and lifter (C,), float64 on CPU."""
    window = torch.hann_window(config.window_size, periodic=False, dtype=torch.float64).pow(0.85)
    num_fft_bins = config.fft_size // 2
    nyquist = 0.5 * config.sample_rate
    fft_bin_width = config.sample_rate / config.fft_size
    mel_low, mel_high = kaldi_mel_scale(config.low_freq), kaldi_mel_scale(nyquist)
    mel_delta = (mel_high - mel_low) / (config.num_mel_bins + 1)
    edges = mel_low + mel_delta * np.arange(config.num_mel_bins + 2)
    left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bin_mel = kaldi_mel_scale(fft_bin_width * np.arange(num_fft_bins))[None, :]
    up = (bin_mel - left) / (center - left)
    down = (right - bin_mel) / (right - center)
    banks = np.maximum(0.0, np.minimum(up, down))  # (M, F/2); the Nyquist bin gets weight 0
    banks = np.concatenate([banks, np.zeros((config.num_mel_bins, 1))], axis=1)
    n = config.num_mel_bins
    k = np.arange(n)[None, :]
    m = np.arange(n)[:, None]
    dct = np.sqrt(2.0 / n) * np.cos(math.pi / n * (m + 0.5) * k)  # (M, M) orthonormal DCT-II
    dct[:, 0] = math.sqrt(1.0 / n)
    lifter = 1.0 + 0.5 * config.cepstral_lifter * np.sin(math.pi * np.arange(config.num_ceps) / config.cepstral_lifter)
    return (
        window,
        torch.from_numpy(banks.T.copy()),
        torch.from_numpy(dct[:, : config.num_ceps].copy()),
        torch.from_numpy(lifter),
    )


def _frames_to_cepstra(frames: torch.Tensor, config: MFCCConfig) -> torch.Tensor:
    """(N, fft_size) frames (raw samples in the first 400 columns, zeros after) -> (N, 13) cepstra.

    Kaldi's per-frame steps, done in place on the padded buffer: DC removal and pre-emphasis
    are folded into ``y[i] = x[i] - 0.97 x[i-1] - 0.03 mean`` (``y[0] = 0.03 (x[0] - mean)``),
    then the Povey window, power spectrum, mel filterbank, log, DCT and lifter.
    """
    window, banks, dct, lifter = (c.to(device=frames.device, dtype=frames.dtype) for c in _constants(config))
    size, alpha = config.window_size, config.preemphasis
    samples = frames[:, :size]
    mean = samples.mean(dim=1, keepdim=True)
    shifted = samples[:, :-1] * alpha
    samples[:, 1:] -= shifted
    samples[:, :1] *= 1.0 - alpha
    samples -= (1.0 - alpha) * mean
    samples *= window
    spectrum = torch.view_as_real(torch.fft.rfft(frames)).flatten(1)  # (N, 2 (F/2+1)): re, im interleaved
    # |X|^2 @ banks == (re^2, im^2 interleaved) @ (each filterbank row repeated twice)
    mel = (spectrum.square_() @ banks.repeat_interleave(2, dim=0)).clamp_min(torch.finfo(torch.float32).eps).log()
    return (mel @ dct) * lifter


def _deltas_within_utterances(features: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor, window: int) -> torch.Tensor:
    """Deltas of (N, D) concatenated utterances; frame t of an utterance [s, e) replicates its own edges."""
    n = (window - 1) // 2
    denominator = n * (n + 1) * (2 * n + 1) / 3
    index = torch.arange(features.shape[0], device=features.device)
    delta = torch.zeros_like(features)
    for offset in range(1, n + 1):
        ahead = torch.minimum(index + offset, ends - 1)
        behind = torch.maximum(index - offset, starts)
        delta += offset * (features[ahead] - features[behind])
    return delta / denominator


def compute_deltas(features: torch.Tensor, window: int = 5) -> torch.Tensor:
    """Regression deltas along time, edges replicated (torchaudio.functional.compute_deltas).

    Args:
        features: (T, D) frames of one utterance.
        window: odd regression window (5 -> offsets -2..2, denominator 10).
    Returns:
        (T, D) deltas ``sum_k k (x[t+k] - x[t-k]) / (2 sum_k k^2)``.
    """
    if window < 3 or window % 2 == 0:
        raise ValueError(f"delta window must be an odd integer >= 3, got {window}")
    length = features.shape[0]
    starts = torch.zeros(length, dtype=torch.long, device=features.device)
    return _deltas_within_utterances(features, starts, starts + length, window)


def compute_mfcc_batch(
    waveforms: list[torch.Tensor | np.ndarray],
    config: MFCCConfig = MFCCConfig(),
    device: torch.device | str | None = None,
    utterance_ids: list[str] | None = None,
    chunk_frames: int = 16384,
) -> list[torch.Tensor]:
    """39-dim MFCC + delta + delta-delta features of several utterances in one pass.

    Args:
        waveforms: list of (S_i,) float waveforms at ``config.sample_rate`` in [-1, 1]
            (soundfile's float scale, as fairseq reads them).
        config: Kaldi options; the defaults are fairseq's HuBERT iteration-1 recipe.
        device: where to compute (default: the first waveform's device, CPU for NumPy).
        utterance_ids: names used in error messages.
        chunk_frames: frames transformed at once (bounds the working memory to
            ``chunk_frames x 512`` floats whatever the batch length).
    Returns:
        list of (T_i, 39) float32 tensors on ``device``, T_i = 1 + (S_i - 400) // 160.
    Raises:
        ValueError: a waveform that is not 1-D, not finite, or shorter than one 25 ms window.
    """
    arrays: list[np.ndarray] = []
    for index, waveform in enumerate(waveforms):
        name = utterance_ids[index] if utterance_ids is not None else f"#{index}"
        array = waveform.detach().cpu().numpy() if isinstance(waveform, torch.Tensor) else np.asarray(waveform)
        if array.ndim != 1:
            raise ValueError(f"utterance {name}: expected a mono (S,) waveform, got shape {tuple(array.shape)}; "
                             "mix channels down before computing MFCC")
        if array.shape[0] < config.window_size:
            raise ValueError(f"utterance {name}: {array.shape[0]} samples is shorter than one "
                             f"{config.frame_length_ms} ms window ({config.window_size} samples); drop it from the data")
        arrays.append(array)
    if not arrays:
        return []
    if device is not None:
        target = torch.device(device)
    else:
        target = waveforms[0].device if isinstance(waveforms[0], torch.Tensor) else torch.device("cpu")
    size, shift = config.window_size, config.window_shift
    # Assemble one signal on the CPU with NumPy (no per-utterance torch ops, which cost
    # thread synchronisation each), every utterance starting on a multiple of the hop so one
    # unfold frames them all; frames never read the zero padding between utterances.
    counts = np.array([num_mfcc_frames(len(a), config) for a in arrays])
    lengths = np.array([len(a) for a in arrays])
    offsets = np.concatenate([[0], np.cumsum(-(-lengths // shift) * shift)])
    signal = np.zeros(offsets[-1] + size, dtype=np.float32)
    for array, offset in zip(arrays, offsets):
        signal[offset : offset + len(array)] = array
    if not np.isfinite(signal).all():
        bad = next(i for i, a in enumerate(arrays) if not np.isfinite(a).all())
        name = utterance_ids[bad] if utterance_ids is not None else f"#{bad}"
        raise ValueError(f"utterance {name}: waveform contains NaN or inf samples")
    total = int(counts.sum())
    first_frame = np.concatenate([[0], np.cumsum(counts)[:-1]])  # of each utterance in the output
    frame_index = np.arange(total) + np.repeat(offsets[:-1] // shift - first_frame, counts)
    starts = torch.from_numpy(np.repeat(first_frame, counts)).to(target)
    ends = starts + torch.from_numpy(np.repeat(counts, counts)).to(target)
    framed = torch.from_numpy(signal).to(target).unfold(0, size, shift)  # (all hops, 400) view
    frame_index = torch.from_numpy(frame_index).to(target)
    cepstra = torch.empty(total, config.num_ceps, device=target)
    buffer = torch.zeros(min(total, chunk_frames), config.fft_size, device=target)
    for position in range(0, total, buffer.shape[0]):
        index = frame_index[position : position + buffer.shape[0]]
        # the padding columns stay zero: _frames_to_cepstra only rewrites the first 400
        buffer[: len(index), :size] = framed[index]
        cepstra[position : position + len(index)] = _frames_to_cepstra(buffer[: len(index)], config)
    delta = _deltas_within_utterances(cepstra, starts, ends, config.delta_window)
    delta2 = _deltas_within_utterances(delta, starts, ends, config.delta_window)
    return list(torch.split(torch.cat([cepstra, delta, delta2], dim=1), counts.tolist()))


def compute_mfcc(waveform: torch.Tensor | np.ndarray, config: MFCCConfig = MFCCConfig()) -> torch.Tensor:
    """(S,) waveform -> (T, 39) MFCC + deltas (see `compute_mfcc_batch`)."""
    return compute_mfcc_batch([waveform], config)[0]


class MFCCFeatureExtractor:
    """The iteration-1 feature extractor: `compute_mfcc_batch` behind the interface that
    `LayerFeatureReader` also offers (``name``, ``dim``, ``frame_rate``, ``num_frames``, ``batch``)."""

    def __init__(self, config: MFCCConfig = MFCCConfig(), device: torch.device | str | None = None) -> None:
        self.config = config
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.name = "mfcc"
        self.dim = config.dim
        self.frame_rate = config.frame_rate
        self.min_samples = config.window_size

    def num_frames(self, num_samples: int) -> int:
        """Frames for a waveform of ``num_samples`` samples."""
        return num_mfcc_frames(num_samples, self.config)

    def batch(self, waveforms: list[np.ndarray | torch.Tensor], utterance_ids: list[str]) -> list[torch.Tensor]:
        """List of (S_i,) waveforms -> list of (T_i, 39) features on ``self.device``."""
        return compute_mfcc_batch(waveforms, self.config, self.device, utterance_ids)

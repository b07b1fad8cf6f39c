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

Everything is batched: `compute_mfcc_batch` lays a list of waveforms out in one signal, every
utterance starting on a multiple of the hop, frames it with one ``unfold`` (no gather), folds
DC removal and pre-emphasis into signal-level operations plus a per-frame offset (see
`_cepstra_of_all_hops`), and runs FFT + mel/DCT matmuls over chunks of 1,024 frames that stay
in the CPU cache; the mel filterbank is applied block-sparse to the interleaved (re², im²)
squares (`_mel_blocks`); deltas are shifted slices of contiguous arrays with only the utterance
edges recomputed; scratch buffers are reused per thread. On one core of the benchmark machine
that is about 0.75 us per frame, of which rfft takes 0.29 us and the mel blocks 0.14 us;
torchaudio.compliance.kaldi.mfcc called per utterance (fairseq's recipe) takes about 4.5 us
(benchmarks/RESULTS.md). Runs on ``device`` (GPU when asked).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from ..modeling.filterbank import kaldi_mel_banks
from .deltas import deltas_within_utterances
from .scratch import scratch

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


@lru_cache(maxsize=8)
def _constants(config: MFCCConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Povey window (W,), mel filterbank (F/2+1, M), DCT (M, C) and lifter (C,), float64 on CPU."""
    window = torch.hann_window(config.window_size, periodic=False, dtype=torch.float64).pow(0.85)
    banks = kaldi_mel_banks(config.num_mel_bins, config.fft_size, config.sample_rate, config.low_freq)  # (M, F/2 + 1)
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


def _frame_means(signal: torch.Tensor, num_hops: int, config: MFCCConfig) -> torch.Tensor:
    """Mean of the frame starting at each of the first ``num_hops`` hops of ``signal``: (H,).

    Sums of blocks of ``gcd(window, hop)`` samples (80 for 400/160) are taken in one pass over
    the signal and accumulated in float64 across blocks, so a frame mean costs a difference of two prefix
    sums instead of a 400-sample reduction. ``len(signal)`` must be a multiple of the block
    (hop-aligned layout plus one window). Non-finite samples make some mean non-finite.
    """
    size, shift = config.window_size, config.window_shift
    block = math.gcd(size, shift)
    block_sums = signal.view(-1, block).sum(1).double()  # float32 within a block (much faster)
    prefix = torch.cat([block_sums.new_zeros(1), block_sums.cumsum(0)])
    first = torch.arange(num_hops, device=signal.device) * (shift // block)
    return ((prefix[first + size // block] - prefix[first]) / size).float()


@lru_cache(maxsize=8)
def _mel_blocks(config: MFCCConfig, block_cost: int = 150) -> tuple[tuple[int, int, int, int, torch.Tensor], ...]:
    """The mel filterbank cut into blocks of consecutive filters and the FFT bins they cover.

    Each filter is non-zero over a few bins only (480 of the 23 x 257 weights here), so one
    dense ``banks @ power.T`` spends 92 % of its work on zeros. The filters are partitioned
    (dynamic programming) to minimise the covered area plus ``block_cost`` per block (the
    cost of one more small matmul); for the default options that gives 5 blocks covering
    1,245 instead of 5,911 weights. Each block's weights are repeated per column pair so it
    multiplies the interleaved (re², im²) squares of the spectrum directly, which saves
    forming the power spectrum (a stride-2 add that cost as much as the dense matmul).
    Returns ``(first_filter, stop_filter, first_bin, stop_bin, weights (filters, 2 x bins) float32)``.
    """
    banks = _constants(config)[1].T.numpy()  # (M, F/2+1)
    num_filters = banks.shape[0]
    spans = []
    for weights in banks:
        nonzero = np.flatnonzero(weights)
        spans.append((int(nonzero[0]), int(nonzero[-1]) + 1) if len(nonzero) else None)

    def cover(first: int, stop: int) -> tuple[int, int]:
        inside = [span for span in spans[first:stop] if span is not None]
        return (min(s[0] for s in inside), max(s[1] for s in inside)) if inside else (0, 1)

    best = [0.0] + [math.inf] * num_filters  # best[i]: cost of filters [0, i)
    cut = [0] * (num_filters + 1)
    for stop in range(1, num_filters + 1):
        for first in range(stop):
            low, high = cover(first, stop)
            cost = best[first] + (stop - first) * (high - low) + block_cost
            if cost < best[stop]:
                best[stop], cut[stop] = cost, first
    blocks = []
    stop = num_filters
    while stop > 0:
        first = cut[stop]
        low, high = cover(first, stop)
        weights = torch.from_numpy(np.repeat(banks[first:stop, low:high], 2, axis=1)).float()
        blocks.append((first, stop, low, high, weights))
        stop = first
    return tuple(reversed(blocks))


def _cepstra_of_all_hops(signal: torch.Tensor, frame_means: torch.Tensor, config: MFCCConfig,
                         chunk_frames: int) -> torch.Tensor:
    """Cepstra of the frames that start at every hop of ``signal``: (H, 13), H = ``len(frame_means)``.

    Kaldi's per-frame steps are rewritten so that no frame is gathered or edited sample by
    sample: with ``m`` the frame mean, DC removal followed by pre-emphasis is
    ``y[i] = e[t+i] - (1 - a) m`` for i >= 1, where ``e = s[j] - a s[j-1]`` is the
    pre-emphasised *signal* (computed once per sample of the chunk's stretch of signal, not
    once per overlapping frame), and ``y[0] = (1 - a) (s[t] - m)``. Frames are strided views
    of ``e``; each chunk is copied once into a zero-padded FFT buffer, windowed, transformed
    (rfft), and reduced with two matmuls: mel filterbank @ (re², im²) (block-sparse on the CPU,
    see `_mel_blocks`), then log-mel @ (DCT x lifter). Chunks of ``chunk_frames`` keep the
    buffers in the CPU cache (a 1,024 x 512 float buffer is 2 MB; much longer chunks make the
    FFT cost several times more per frame).
    """
    device = signal.device
    window, banks, dct, lifter = (c.to(device=device, dtype=torch.float32) for c in _constants(config))
    dct_lifted = dct * lifter
    if device.type == "cpu":
        blocks = [(first, stop, 2 * low, 2 * high, weights) for first, stop, low, high, weights in _mel_blocks(config)]
    else:  # one dense matmul suits a GPU better than several small ones
        blocks = [(0, config.num_mel_bins, 0, 2 * banks.shape[0], banks.T.repeat_interleave(2, dim=1).contiguous())]
    blocks = [(first, stop, low, high, weights.to(device)) for first, stop, low, high, weights in blocks]
    size, shift, alpha = config.window_size, config.window_shift, config.preemphasis
    num_hops = frame_means.shape[0]
    offsets = (frame_means * (1.0 - alpha))[:, None]
    fix_first_sample = bool(window[0] != 0)  # the Povey window is 0 there, so y[0] never counts
    first_samples = signal[: num_hops * shift : shift]  # s[t] of every frame
    cepstra = scratch("cepstra", (num_hops, config.num_ceps), device)  # the caller gathers what it needs
    chunk = min(num_hops, chunk_frames)
    # columns size.. of the FFT buffer are the zero padding: written nowhere, zeroed once
    buffer = scratch(f"fft{size}", (chunk_frames, config.fft_size), device, zero=True)[:chunk]
    # the pre-emphasised signal e[j] = s[j] - a s[j-1] of one chunk's stretch (e[0] is never used)
    emphasized = scratch("emphasized", ((chunk - 1) * shift + size,), device)
    emphasized[0] = 0.0
    current, previous = signal[1:], signal[:-1]
    mel = torch.empty(config.num_mel_bins, chunk, device=device)
    floor = torch.finfo(torch.float32).eps
    full_views = (emphasized[1:], emphasized.unfold(0, size, shift), buffer[:, :size], mel.T,
                  [mel[first:last] for first, last, _, _, _ in blocks])
    for start in range(0, num_hops, chunk):
        stop = min(start + chunk, num_hops)
        if stop - start == chunk:  # views of the scratch buffers made once
            emphasized_out, frames, samples, log_mel_t, mel_rows = full_views
            log_mel = mel
        else:
            emphasized_out = emphasized[1 : (stop - start - 1) * shift + size]
            frames = emphasized[: (stop - start - 1) * shift + size].unfold(0, size, shift)
            samples = buffer[: stop - start, :size]  # the padding columns stay zero
            log_mel = mel[:, : stop - start]
            log_mel_t, mel_rows = log_mel.T, [log_mel[first:last] for first, last, _, _, _ in blocks]
        stretch = slice(start * shift, (stop - 1) * shift + size - 1)
        torch.sub(current[stretch], previous[stretch], alpha=alpha, out=emphasized_out)
        torch.sub(frames, offsets[start:stop], out=samples)
        if fix_first_sample:
            samples[:, 0] = (first_samples[start:stop] - frame_means[start:stop]) * (1.0 - alpha)
        samples *= window
        spectrum = torch.fft.rfft(buffer[: stop - start])
        squares = torch.view_as_real(spectrum).square_().view(stop - start, -1).T  # (2 (F/2+1), chunk): re², im²
        for rows, (_, _, low, high, weights) in zip(mel_rows, blocks):
            torch.mm(weights, squares[low:high], out=rows)
        log_mel.clamp_min_(floor).log_()  # (M, chunk)
        torch.mm(log_mel_t, dct_lifted, out=cepstra[start:stop])
        del spectrum, squares  # free the spectrum before the next one is allocated, so its memory is reused
    return cepstra


def mfcc_from_cepstra(cepstra: torch.Tensor, counts: list[int] | np.ndarray, config: MFCCConfig = MFCCConfig()) -> torch.Tensor:
    """(N, 13) cepstra of consecutive utterances of ``counts`` frames -> (N, 39) with deltas and delta-deltas."""
    counts = np.asarray(counts, dtype=np.int64)
    shape, device = tuple(cepstra.shape), cepstra.device
    delta = deltas_within_utterances(cepstra, counts, config.delta_window, out=scratch("delta", shape, device))
    delta2 = deltas_within_utterances(delta, counts, config.delta_window, out=scratch("delta2", shape, device))
    return torch.cat([cepstra, delta, delta2], dim=1)


def compute_mfcc_batch(
    waveforms: list[torch.Tensor | np.ndarray],
    config: MFCCConfig = MFCCConfig(),
    device: torch.device | str | None = None,
    utterance_ids: list[str] | None = None,
    chunk_frames: int = 1024,
) -> list[torch.Tensor]:
    """39-dim MFCC + delta + delta-delta features of several utterances in one pass.

    Args:
        waveforms: list of (S_i,) float waveforms at ``config.sample_rate`` in [-1, 1]
            (soundfile's float scale, as fairseq reads them).
        config: Kaldi options; the defaults are fairseq's HuBERT iteration-1 recipe.
        device: where to compute (default: the first waveform's device, CPU for NumPy).
        utterance_ids: names used in error messages.
        chunk_frames: frames transformed at once (bounds the FFT working memory to
            ``chunk_frames x 512`` floats whatever the batch length; small enough to stay in cache).
    Returns:
        list of (T_i, 39) float32 tensors on ``device`` (views of one (sum T_i, 39) tensor),
        T_i = 1 + (S_i - 400) // 160.
    Raises:
        ValueError: a waveform that is not 1-D, not finite, or shorter than one 25 ms window.
    """
    size, shift = config.window_size, config.window_shift
    arrays: list[np.ndarray] = []
    for index, waveform in enumerate(waveforms):
        array = waveform.detach().cpu().numpy() if isinstance(waveform, torch.Tensor) else np.asarray(waveform)
        if array.ndim != 1 or array.shape[0] < size:
            name = utterance_ids[index] if utterance_ids is not None else f"#{index}"
            if array.ndim != 1:
                raise ValueError(f"utterance {name}: expected a mono (S,) waveform, got shape {tuple(array.shape)}; "
                                 "mix channels down before computing MFCC")
            raise ValueError(f"utterance {name}: {array.shape[0]} samples is shorter than one "
                             f"{config.frame_length_ms} ms window ({size} samples); drop it from the data")
        arrays.append(array)
    if not arrays:
        return []
    if device is not None:
        target = torch.device(device)
    else:
        target = waveforms[0].device if isinstance(waveforms[0], torch.Tensor) else torch.device("cpu")
    # One signal, every utterance starting on a multiple of the hop, so one unfold frames them
    # all. Frames that straddle two utterances (about 2 per utterance) are computed and dropped.
    lengths = np.array([len(a) for a in arrays])
    counts = 1 + (lengths - size) // shift  # num_mfcc_frames (every utterance holds a window)
    offsets = np.concatenate([[0], np.cumsum(-(-lengths // shift) * shift)])
    signal = scratch("signal", (offsets[-1] + size,), torch.device("cpu")).numpy()
    for array, offset, stop in zip(arrays, offsets, offsets[1:]):
        signal[offset : offset + len(array)] = array
        signal[offset + len(array) : stop] = 0.0  # up to the next hop boundary
    signal[offsets[-1] :] = 0.0
    signal = torch.from_numpy(signal).to(target)
    frame_means = _frame_means(signal, offsets[-1] // shift, config)
    if not torch.isfinite(frame_means).all():  # every sample lies in some block sum of _frame_means
        bad = next(i for i, a in enumerate(arrays) if not np.isfinite(a).all())
        name = utterance_ids[bad] if utterance_ids is not None else f"#{bad}"
        raise ValueError(f"utterance {name}: waveform contains NaN or inf samples")
    cepstra = _cepstra_of_all_hops(signal, frame_means, config, chunk_frames)
    valid = np.repeat(offsets[:-1] // shift - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    valid += np.arange(int(counts.sum()))
    features = mfcc_from_cepstra(cepstra[torch.from_numpy(valid).to(target)], counts, config)
    return list(torch.split(features, counts.tolist()))


def compute_mfcc(waveform: torch.Tensor | np.ndarray, config: MFCCConfig = MFCCConfig()) -> torch.Tensor:
    """(S,) waveform -> (T, 39) MFCC + deltas (see `compute_mfcc_batch`)."""
    return compute_mfcc_batch([waveform], config)[0]


class MFCCFrameFeatures:
    """The iteration-1 feature frame_features: `compute_mfcc_batch` behind the interface that
    `LayerFeatureReader` also offers (``name``, ``dim``, ``frame_rate``, ``num_frames``, ``batch``)."""

    def __init__(self, config: MFCCConfig = MFCCConfig(), device: torch.device | str | None = None) -> None:
        self.config = config
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.name = "mfcc"
        self.dim = config.dim
        self.frame_rate = config.frame_rate
        self.min_samples = config.window_size
        # groups on worker threads (scratch buffers are per thread); on a GPU one stream does it
        self.thread_safe = self.device.type == "cpu"

    def num_frames(self, num_samples: int) -> int:
        """Frames for a waveform of ``num_samples`` samples."""
        return num_mfcc_frames(num_samples, self.config)

    def batch(self, waveforms: list[np.ndarray | torch.Tensor], utterance_ids: list[str]) -> list[torch.Tensor]:
        """List of (S_i,) waveforms -> list of (T_i, 39) features on ``self.device``."""
        return compute_mfcc_batch(waveforms, self.config, self.device, utterance_ids)

    def pack(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 39) frames -> the (N, 13) cepstra, a third of the memory, for caching (see `unpack`)."""
        return frames[:, : self.config.num_ceps].contiguous()

    def unpack(self, cepstra: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """(N, 13) cepstra of utterances of ``counts`` frames -> the same (N, 39) frames `batch` gave."""
        return mfcc_from_cepstra(cepstra, counts, self.config)

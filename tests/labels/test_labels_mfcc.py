"""MFCC vs an independent float64 reference of Kaldi's steps (NumPy loops, SciPy DCT, librosa deltas),
and, when a torchaudio wheel is given (HFSPEECH_TORCHAUDIO_WHEEL), vs fairseq's own torchaudio code.

Tolerance: the implementation runs in float32 (like torchaudio's kaldi compliance); the
reference runs in float64, frame by frame. Cepstra agree to |diff| <= 2e-3 + 1e-3 |ref|
(typical max error 1e-4 on real speech whose log-mel values span about -15..5).
"""

from __future__ import annotations

import math
import os
import sys

import librosa
import numpy as np
import pytest
import scipy.fft
import scipy.signal
import soundfile
import torch

from hfspeech.labels.deltas import compute_deltas
from hfspeech.labels.mfcc import (
    MFCCConfig,
    _constants,
    _mel_blocks,
    compute_mfcc,
    compute_mfcc_batch,
    num_mfcc_frames,
)
from helpers import FIXTURES, ROOT

AUDIO = FIXTURES / "labels" / "audio"


pytestmark = pytest.mark.usefixtures("single_thread")


def _reference_kaldi_mfcc(waveform: np.ndarray) -> np.ndarray:
    """Kaldi compute-mfcc-feats (use-energy=false, dither=0) written from Kaldi's docs, float64."""
    x = waveform.astype(np.float64)
    window_size, shift, fft_size, num_bins, num_ceps = 400, 160, 512, 23, 13
    num_frames = 1 + (len(x) - window_size) // shift
    povey = scipy.signal.get_window("hann", window_size, fftbins=False) ** 0.85

    def mel(f):
        return 1127.0 * math.log(1.0 + f / 700.0)

    mel_low, mel_high = mel(20.0), mel(8000.0)
    delta = (mel_high - mel_low) / (num_bins + 1)
    banks = np.zeros((num_bins, fft_size // 2 + 1))
    for b in range(num_bins):
        left, center, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
        for i in range(fft_size // 2):  # Kaldi loops over num_fft_bins = N/2 (Nyquist excluded)
            m = mel(i * 16000.0 / fft_size)
            if left < m < right:
                banks[b, i] = (m - left) / (center - left) if m <= center else (right - m) / (right - center)
    out = np.zeros((num_frames, num_ceps))
    for t in range(num_frames):
        frame = x[t * shift : t * shift + window_size].copy()
        frame -= frame.mean()
        emphasized = frame.copy()
        for i in range(window_size - 1, 0, -1):
            emphasized[i] -= 0.97 * frame[i - 1]
        emphasized[0] -= 0.97 * frame[0]
        padded = np.zeros(fft_size)
        padded[:window_size] = emphasized * povey
        power = np.abs(np.fft.rfft(padded)) ** 2
        log_mel = np.log(np.maximum(banks @ power, np.finfo(np.float32).eps))
        cepstra = scipy.fft.dct(log_mel, type=2, norm="ortho")[:num_ceps]
        lifter = 1 + 11.0 * np.sin(math.pi * np.arange(num_ceps) / 22.0)
        out[t] = cepstra * lifter
    d1 = librosa.feature.delta(out.T, width=5, order=1, mode="nearest")
    d2 = librosa.feature.delta(d1, width=5, order=1, mode="nearest")
    return np.concatenate([out.T, d1, d2]).T


@pytest.mark.parametrize("name", ["an251-fash-b.flac", "an253-fash-b.flac"])
def test_mfcc_matches_float64_kaldi_reference_on_real_speech(name: str) -> None:
    waveform, rate = soundfile.read(AUDIO / name, dtype="float32")
    assert rate == 16000
    ours = compute_mfcc(waveform).numpy()
    reference = _reference_kaldi_mfcc(waveform)
    assert ours.shape == reference.shape == (num_mfcc_frames(len(waveform)), 39)
    np.testing.assert_allclose(ours, reference, atol=2e-3, rtol=1e-3)


def test_batch_of_short_utterances_matches_reference_utterance_by_utterance() -> None:
    """1..6-frame utterances side by side in one batch: delta edges must never cross utterances."""
    generator = np.random.default_rng(1)
    lengths = [400, 560, 720, 880, 1040, 1200, 1359, 3000]
    waveforms = [(0.1 * generator.standard_normal(n)).astype(np.float32) for n in lengths]
    for waveform, ours in zip(waveforms, compute_mfcc_batch(waveforms)):
        np.testing.assert_allclose(ours.numpy(), _reference_kaldi_mfcc(waveform), atol=2e-3, rtol=1e-3)


@pytest.mark.skipif(not os.environ.get("HFSPEECH_TORCHAUDIO_WHEEL"),
                    reason="set HFSPEECH_TORCHAUDIO_WHEEL to a torchaudio wheel (no torchaudio release matches torch 2.13)")
def test_mfcc_matches_torchaudio_kaldi_mfcc(tmp_path) -> None:
    """fairseq's own feature code (dump_mfcc_feature.py: torchaudio kaldi.mfcc + 2 compute_deltas).

    Both run in float32; |diff| <= 1e-3 + 1e-3 |ref| (measured max 2e-4 on these files).
    """
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from torchaudio_reference import fairseq_mfcc, import_torchaudio_from_wheel

    reference = fairseq_mfcc(import_torchaudio_from_wheel(os.environ["HFSPEECH_TORCHAUDIO_WHEEL"], tmp_path))
    for path in sorted(AUDIO.glob("*.flac")):
        waveform, _ = soundfile.read(path, dtype="float32")
        np.testing.assert_allclose(compute_mfcc(waveform).numpy(), reference(waveform).numpy(), atol=1e-3, rtol=1e-3)


def test_frame_count_follows_snip_edges() -> None:
    assert num_mfcc_frames(399) == 0
    assert num_mfcc_frames(400) == 1
    assert num_mfcc_frames(559) == 1
    assert num_mfcc_frames(560) == 2
    assert num_mfcc_frames(16000) == 98
    assert MFCCConfig().frame_rate == 100.0 and MFCCConfig().dim == 39


def test_deltas_are_the_hand_computed_regression() -> None:
    x = torch.tensor([[0.0], [1.0], [4.0], [9.0], [16.0]])
    # t=0: padded sequence 0,0,0,1,4 -> (-2*0 -1*0 +1*1 +2*4)/10 = 0.9
    # t=2: 0,1,4,9,16 -> (-2*0 - 1 + 9 + 32)/10 = 4.0
    # t=4: 4,9,16,16,16 -> (-8 - 9 + 16 + 32)/10 = 3.1
    expected = torch.tensor([[0.9], [2.2], [4.0], [4.2], [3.1]])
    torch.testing.assert_close(compute_deltas(x), expected)


@pytest.mark.parametrize("num_mel_bins", [23, 40, 80])
def test_mel_blocks_cover_every_filter_weight(num_mel_bins: int) -> None:
    config = MFCCConfig(num_mel_bins=num_mel_bins)
    dense = _constants(config)[1].T.float()  # (M, F/2+1)
    rebuilt = torch.zeros_like(dense)
    for first, stop, low, high, weights in _mel_blocks(config):
        rebuilt[first:stop, low:high] = weights[:, ::2]
        assert torch.equal(weights[:, ::2], weights[:, 1::2])  # one weight per (re², im²) pair
    assert torch.equal(rebuilt, dense)
    assert [b[:2] for b in _mel_blocks(config)] == list(zip([b[0] for b in _mel_blocks(config)],
                                                           [b[0] for b in _mel_blocks(config)][1:] + [num_mel_bins]))


def test_batch_equals_one_by_one() -> None:
    generator = torch.Generator().manual_seed(0)
    waveforms = [0.1 * torch.randn(n, generator=generator) for n in (400, 1234, 5000)]
    batched = compute_mfcc_batch(waveforms)
    for waveform, features in zip(waveforms, batched):
        torch.testing.assert_close(features, compute_mfcc(waveform))


def test_bad_waveforms_raise_naming_the_utterance() -> None:
    with pytest.raises(ValueError, match="utterance short.*shorter than one"):
        compute_mfcc_batch([np.zeros(100, dtype=np.float32)], utterance_ids=["short"])
    with pytest.raises(ValueError, match="utterance stereo.*mono"):
        compute_mfcc_batch([np.zeros((2, 1000), dtype=np.float32)], utterance_ids=["stereo"])
    with pytest.raises(ValueError, match="NaN"):
        compute_mfcc_batch([np.full(1000, np.nan, dtype=np.float32)], utterance_ids=["nan"])

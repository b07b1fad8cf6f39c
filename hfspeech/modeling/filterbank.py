"""Log-mel filterbank front-end: a parameter-free alternative to the conv feature encoder.

``config.feature_frontend = "filterbank"`` replaces the 7-layer conv stack by Kaldi-style
log-mel filterbank energies computed on the same frames: frame ``t`` covers samples
``[hop * t, hop * t + window)`` with ``window = config.receptive_field`` (400 = 25 ms) and
``hop = config.inputs_to_logits_ratio`` (320 = 20 ms), so a filterbank model has exactly the
frame count, label alignment and padding behaviour of a waveform model with the same
``conv_kernel``/``conv_stride`` (see `filterbank_frames`). With ``config.filterbank_stack = k > 1``
a frame is instead ``k`` consecutive 25 ms windows every ``hop / k`` samples, their log-mels
concatenated: 40 ms frames (``conv_stride`` ending in 4) of four 10 ms log-mel frames learned
faster than 20 ms frames from scratch on AN4 at half the CPU per update (benchmarks/RESULTS.md,
"Leaving the CTC blank plateau"). Per window, as
``torchaudio.compliance.kaldi.fbank`` without dither: remove the DC offset, pre-emphasis
0.97, Povey window, power spectrum of a 512-point FFT, ``num_mel_bins`` triangular filters on
Kaldi's mel scale ``1127 ln(1 + f / 700)`` from 20 Hz to Nyquist, natural log floored at
float32 epsilon.

Why it exists: from random initialisation on tens of minutes of real speech, the conv stack
costs most of a CPU training step and makes the model leave the CTC blank plateau later
(benchmarks/RESULTS.md, "Learning from small real corpora"). The papers' waveform front-end
stays the default, and the one the published checkpoints use.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..configuration import SAMPLE_RATE, SpeechEncoderConfig, conv_output_lengths

PREEMPHASIS = 0.97
LOW_FREQUENCY_HZ = 20.0
STACKED_WINDOW = 400  # samples (25 ms) of each window when several are stacked per frame


def kaldi_mel_scale(frequency: np.ndarray | float) -> np.ndarray | float:
    """Kaldi's mel scale: 1127 ln(1 + f / 700)."""
    return 1127.0 * np.log(1.0 + np.asarray(frequency) / 700.0)


def kaldi_mel_banks(num_mel_bins: int, fft_size: int, sample_rate: int = SAMPLE_RATE,
                    low_freq: float = LOW_FREQUENCY_HZ, high_freq: float | None = None) -> np.ndarray:
    """Kaldi's triangular mel filters, (num_mel_bins, fft_size // 2 + 1) float64.

    Filter m rises linearly *in mel* from edge m to edge m+1 and falls to edge m+2, the
    ``num_mel_bins + 2`` edges being equally spaced in mel between ``low_freq`` and
    ``high_freq`` (default: Nyquist). The Nyquist bin gets weight 0, as in Kaldi.
    """
    nyquist = 0.5 * sample_rate
    high_freq = nyquist if high_freq is None else high_freq
    if not 0 <= low_freq < high_freq <= nyquist:
        raise ValueError(f"need 0 <= low_freq < high_freq <= {nyquist} Hz, got {low_freq} and {high_freq}.")
    mel_low, mel_high = kaldi_mel_scale(low_freq), kaldi_mel_scale(high_freq)
    edges = mel_low + (mel_high - mel_low) / (num_mel_bins + 1) * np.arange(num_mel_bins + 2)
    left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bin_mel = kaldi_mel_scale(sample_rate / fft_size * np.arange(fft_size // 2))[None, :]
    banks = np.maximum(0.0, np.minimum((bin_mel - left) / (center - left), (right - bin_mel) / (right - center)))
    return np.concatenate([banks, np.zeros((num_mel_bins, 1))], axis=1)


def filterbank_frames(sample_lengths: torch.Tensor | int, window: int, hop: int) -> torch.Tensor | int:
    """(B,) samples -> (B,) frames of ``window`` samples every ``hop`` (0 when shorter than a window); int -> int."""
    if isinstance(sample_lengths, int):
        return (sample_lengths - window) // hop + 1 if sample_lengths >= window else 0
    lengths = sample_lengths.long()
    return torch.where(lengths >= window, torch.div(lengths - window, hop, rounding_mode="floor") + 1,
                       torch.zeros_like(lengths))


def filterbank_windows(config: SpeechEncoderConfig) -> tuple[int, int]:
    """(window, hop) in samples of the log-mel windows: one per frame, or ``filterbank_stack`` per frame."""
    if config.filterbank_stack == 1:
        return config.receptive_field, config.inputs_to_logits_ratio
    return STACKED_WINDOW, config.inputs_to_logits_ratio // config.filterbank_stack


class FilterbankEncoder(nn.Module):
    """Raw 16 kHz samples (B, S) -> log-mel energies (B, T, num_mel_bins * filterbank_stack); no parameters.

    ``T = (1 + (S - window) // hop) // stack``; a valid frame only reads valid samples, so
    padding does not change it.
    """

    def __init__(self, config: SpeechEncoderConfig) -> None:
        super().__init__()
        self.window, self.hop = filterbank_windows(config)
        self.stack = config.filterbank_stack
        self.fft_size = 1 << (self.window - 1).bit_length()
        self.num_mel_bins = config.num_mel_bins
        self.register_buffer("povey_window", torch.empty(self.window), persistent=False)
        self.register_buffer("mel_banks", torch.empty(self.fft_size // 2 + 1, self.num_mel_bins), persistent=False)
        self.reset_buffers()

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """Fill the window and filterbank constants (also after ``from_pretrained``, which builds the
        model without running this on real storage and loads no value for non-persistent buffers)."""
        povey = torch.hann_window(self.window, periodic=False, dtype=torch.float64).pow(0.85)
        banks = torch.from_numpy(kaldi_mel_banks(self.num_mel_bins, self.fft_size).T.copy())
        self.povey_window.copy_(povey)
        self.mel_banks.copy_(banks)

    def forward(self, input_values: torch.Tensor, sample_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """input_values: (B, S) float; sample_lengths: unused (frames are local). Returns (B, T, M * stack)."""
        if input_values.dim() != 2:
            raise ValueError(f"input_values must be (batch, samples), got shape {tuple(input_values.shape)}; "
                             "down-mix stereo to mono and stack utterances with the feature extractor.")
        windows = input_values.float().unfold(1, self.window, self.hop)  # (B, T * stack (+ rest), W) view
        windows = windows - windows.mean(dim=-1, keepdim=True)
        previous = torch.cat([windows[..., :1], windows[..., :-1]], dim=-1)
        windows = (windows - PREEMPHASIS * previous) * self.povey_window
        power = torch.fft.rfft(windows, n=self.fft_size).abs().pow(2)  # (B, T * stack, F/2 + 1)
        energies = power @ self.mel_banks
        frames = energies.shape[1] // self.stack  # consecutive windows of one frame side by side
        energies = energies[:, :frames * self.stack].reshape(energies.shape[0], frames, -1)
        return energies.clamp(min=torch.finfo(torch.float32).eps).log().to(input_values.dtype)


def frontend_receptive_field(config: SpeechEncoderConfig) -> int:
    """Samples one frame reads: the conv stack's receptive field, or the span of its stacked windows."""
    if config.feature_frontend == "filterbank":
        window, hop = filterbank_windows(config)
        return window + (config.filterbank_stack - 1) * hop
    return config.receptive_field


def feature_frame_lengths(sample_lengths: torch.Tensor | int, config: SpeechEncoderConfig) -> torch.Tensor | int:
    """(B,) samples -> (B,) frames of the model's front-end (conv stack or filterbank); an int gives an int."""
    if config.feature_frontend == "filterbank":
        windows = filterbank_frames(sample_lengths, *filterbank_windows(config))
        return windows // config.filterbank_stack
    return conv_output_lengths(sample_lengths, config.conv_kernel, config.conv_stride)


__all__ = ["FilterbankEncoder", "feature_frame_lengths", "filterbank_frames", "filterbank_windows",
           "frontend_receptive_field", "kaldi_mel_banks", "kaldi_mel_scale"]

"""Waveform -> frame features: the 7-layer conv feature encoder and the feature projection.

Padding never changes the output of a valid frame: each conv is a "valid" convolution,
so frame t only reads samples of its own utterance, and the group-norm variant
normalises every channel over the *valid* frames of each utterance only (fairseq and
transformers normalise over the padded length, so padded base models drift; transformers
issue 21534).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..configuration import SpeechEncoderConfig


def conv_output_lengths(lengths: torch.Tensor, kernels: list[int], strides: list[int]) -> torch.Tensor:
    """Number of output frames of a stack of unpadded 1-D convs.

    Args:
        lengths: (B,) input lengths in samples (any integer dtype).
    Returns:
        (B,) long tensor of frame counts (0 where the input is shorter than the receptive field).
    """
    lengths = lengths.long()
    for kernel, stride in zip(kernels, strides):
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths.clamp(min=0)


class _ScaleGradient(torch.autograd.Function):
    """Identity forward, gradient multiplied by ``scale`` backward (fairseq's GradMultiply)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad * ctx.scale, None


def scale_gradient(tensor: torch.Tensor, scale: float) -> torch.Tensor:
    """Return ``tensor`` unchanged whose gradient is scaled by ``scale`` (the paper's gamma)."""
    if scale == 1.0:
        return tensor
    return _ScaleGradient.apply(tensor, scale)


def strided_conv1d(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int) -> torch.Tensor:
    """Unpadded 1-D convolution of a time-major tensor, computed as one GEMM.

    Args:
        hidden: (B, T_in, C_in); weight: (C_out, C_in, k) (nn.Conv1d layout); bias: (C_out,).
    Returns:
        (B, T_out, C_out) with T_out = (T_in - k) // stride + 1, equal to ``nn.Conv1d``.

    Gathering the k strided slices into (B, T_out, k*C_in) and multiplying once was faster
    forward+backward than oneDNN's conv for every wav2vec 2.0 layer shape measured on CPU
    (2.2x at 512 channels, see benchmarks/RESULTS.md); a zero-copy reshape when k == stride.
    """
    batch, frames_in, channels = hidden.shape
    out_channels, _, kernel = weight.shape
    frames_out = (frames_in - kernel) // stride + 1
    if kernel == stride:
        windows = hidden[:, : frames_out * kernel].reshape(batch, frames_out, kernel * channels)
    else:
        span = stride * (frames_out - 1) + 1
        windows = torch.cat([hidden[:, offset: offset + span: stride] for offset in range(kernel)], dim=-1)
    return F.linear(windows, weight.permute(0, 2, 1).reshape(out_channels, kernel * channels), bias)


class MaskedChannelNorm(nn.Module):
    """GroupNorm with one group per channel, normalising over the valid frames only.

    Equivalent to ``nn.GroupNorm(C, C)`` on an unpadded utterance; with ``lengths`` the
    statistics of utterance b use frames ``[0, lengths[b])`` only. Time-major input.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """hidden: (B, T, C); lengths: (B,) valid frames or None (all valid)."""
        channels_first = hidden.transpose(1, 2)  # statistics run along the contiguous time axis
        num_frames = hidden.shape[1]
        if lengths is None or bool((lengths >= num_frames).all()):
            return F.group_norm(channels_first, hidden.shape[2], self.weight, self.bias, self.eps).transpose(1, 2)
        channels_first = channels_first.contiguous()
        valid = (torch.arange(num_frames, device=hidden.device) < lengths[:, None]).unsqueeze(1)  # (B, 1, T)
        count = lengths.clamp(min=1).to(hidden.dtype)[:, None, None]
        mean = (channels_first * valid).sum(-1, keepdim=True) / count
        variance = ((channels_first - mean) * valid).pow(2).sum(-1, keepdim=True) / count
        normalised = (channels_first - mean) * torch.rsqrt(variance + self.eps)
        return (normalised * self.weight[:, None] + self.bias[:, None]).transpose(1, 2)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of each frame (the large models' conv blocks)."""

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(hidden)


class ConvLayerBlock(nn.Module):
    """Conv -> optional norm -> GELU on time-major tensors: (B, T_in, C_in) -> (B, T_out, C_out).

    ``self.conv`` is an ``nn.Conv1d`` so weights keep the usual layout and names; the
    convolution itself runs as a GEMM (`strided_conv1d`).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, bias: bool,
                 norm: str | None, eps: float) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride=stride, bias=bias)
        self.norm: nn.Module | None
        if norm == "group":
            self.norm = MaskedChannelNorm(out_channels, eps)
        elif norm == "layer":
            self.norm = ChannelLayerNorm(out_channels, eps=eps)
        else:
            self.norm = None

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden = strided_conv1d(hidden, self.conv.weight, self.conv.bias, self.stride)
        if lengths is not None:
            lengths = conv_output_lengths(lengths, [self.kernel], [self.stride])
        if self.norm is not None:
            hidden = self.norm(hidden, lengths)
        return F.gelu(hidden), lengths


class FeatureEncoder(nn.Module):
    """The conv stack: raw 16 kHz samples (B, S) -> features (B, T, C) at 50 Hz (time-major)."""

    def __init__(self, config: SpeechEncoderConfig) -> None:
        super().__init__()
        layers = []
        in_channels = 1
        for index, (dim, kernel, stride) in enumerate(zip(config.conv_dim, config.conv_kernel, config.conv_stride)):
            if config.feat_extract_norm == "group":
                norm = "group" if index == 0 else None
            else:
                norm = "layer"
            layers.append(ConvLayerBlock(in_channels, dim, kernel, stride, config.conv_bias, norm,
                                         config.layer_norm_eps))
            in_channels = dim
        self.conv_layers = nn.ModuleList(layers)

    def forward(self, input_values: torch.Tensor, sample_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """input_values: (B, S) float; sample_lengths: (B,) valid samples or None. Returns (B, T, C)."""
        if input_values.dim() != 2:
            raise ValueError(
                f"input_values must be (batch, samples), got shape {tuple(input_values.shape)}; "
                "down-mix stereo to mono and stack utterances with the feature extractor."
            )
        hidden = input_values[:, :, None]
        lengths = sample_lengths
        for layer in self.conv_layers:
            hidden, lengths = layer(hidden, lengths)
        return hidden


class FeatureProjection(nn.Module):
    """LayerNorm -> Linear(C, H) -> dropout. Input (B, T, C); returns (projected (B,T,H), normed (B,T,C))."""

    def __init__(self, config: SpeechEncoderConfig) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.conv_dim[-1], eps=config.layer_norm_eps)
        self.projection = nn.Linear(config.conv_dim[-1], config.hidden_size)
        self.dropout = nn.Dropout(config.feat_proj_dropout)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        normed = self.layer_norm(features)
        return self.dropout(self.projection(normed)), normed

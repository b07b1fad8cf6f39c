"""Waveform -> frame features: the conv feature encoder and the feature projection.

Padding never changes the output of a valid frame: each conv is a "valid" convolution,
so frame t only reads samples of its own utterance, and the group-norm variant
normalises every channel over the *valid* frames of each utterance only (fairseq and
transformers normalise over the padded length: padded base models drift, transformers #21534).

The modules below are the definition. On CPU, `FeatureEncoder` runs the same computation
on the fast CPU backend (`fast_cpu.conv`: oneDNN convs, GELU fused into the next conv)
unless ``HFSPEECH_FAST_CPU=0``; `FeatureProjection` uses `linear.Linear` and
`dropout.Dropout`, which do likewise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..configuration import SpeechEncoderConfig, conv_output_lengths
from .dropout import Dropout
from .fast_cpu import conv as fast_conv
from .host_reads import host_reads_allowed
from .linear import Linear

__all__ = ["ChannelLayerNorm", "ConvLayerBlock", "FeatureEncoder", "FeatureProjection", "MaskedChannelNorm",
           "conv_output_lengths", "scale_gradient"]


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


class MaskedChannelNorm(nn.Module):
    """GroupNorm with one group per channel, normalising over the valid frames only.

    Equivalent to ``nn.GroupNorm(C, C)`` on an unpadded utterance; with ``lengths`` the
    statistics of utterance b use frames ``[0, lengths[b])`` only. Channels-first input.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """hidden: (B, C, T); lengths: (B,) valid frames or None (all valid). Returns (B, C, T)."""
        num_frames = hidden.shape[2]
        if lengths is None or host_reads_allowed(lengths) and bool((lengths >= num_frames).all()):
            return F.group_norm(hidden, hidden.shape[1], self.weight, self.bias, self.eps)
        valid = (torch.arange(num_frames, device=hidden.device) < lengths[:, None]).unsqueeze(1)  # (B, 1, T)
        count = lengths.clamp(min=1).to(hidden.dtype)[:, None, None]
        mean = (hidden * valid).sum(-1, keepdim=True) / count
        variance = ((hidden - mean) * valid).pow(2).sum(-1, keepdim=True) / count
        normalised = (hidden - mean) * torch.rsqrt(variance + self.eps)
        return normalised * self.weight[:, None] + self.bias[:, None]


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of each frame (the large models' conv blocks). (B, C, T) -> (B, C, T)."""

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(hidden.transpose(1, 2)).transpose(1, 2)


class ConvLayerBlock(nn.Module):
    """Conv1d -> optional norm -> GELU, channels-first: (B, C_in, T_in) -> (B, C_out, T_out).

    Args:
        norm: ``"group"`` (`MaskedChannelNorm`), ``"layer"`` (`ChannelLayerNorm`) or None.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, bias: bool,
                 norm: str | None, eps: float) -> None:
        super().__init__()
        if norm not in ("group", "layer", None):
            raise ValueError(f"conv block norm {norm!r}; use 'group', 'layer' or None.")
        self.kernel, self.stride, self.norm_kind = kernel, stride, norm
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride=stride, bias=bias)
        self.norm: nn.Module | None
        if norm == "group":
            self.norm = MaskedChannelNorm(out_channels, eps)
        elif norm == "layer":
            self.norm = ChannelLayerNorm(out_channels, eps=eps)
        else:
            self.norm = None

    def output_lengths(self, lengths: torch.Tensor | None) -> torch.Tensor | None:
        """(B,) valid input frames -> (B,) valid output frames (None stays None)."""
        return None if lengths is None else conv_output_lengths(lengths, [self.kernel], [self.stride])

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden: (B, C_in, T_in); lengths: (B,) valid input frames or None. Returns (hidden, lengths) out."""
        hidden = self.conv(hidden)
        lengths = self.output_lengths(lengths)
        if self.norm is not None:
            hidden = self.norm(hidden, lengths)
        return F.gelu(hidden), lengths


class FeatureEncoder(nn.Module):
    """The conv stack: raw 16 kHz samples (B, S) -> features (B, T, C) at 50 Hz (a time-major view).

    ``feat_extract_norm="group"``: GroupNorm after the first conv only (base models);
    ``"layer"``: LayerNorm after every conv (large models).
    """

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
        if fast_conv.applies(input_values):
            return fast_conv.feature_encoder(self, input_values, sample_lengths)
        hidden, lengths = input_values[:, None, :], sample_lengths
        for layer in self.conv_layers:
            hidden, lengths = layer(hidden, lengths)
        return hidden.transpose(1, 2)


class FeatureProjection(nn.Module):
    """LayerNorm -> Linear(C, H) -> dropout. Input (B, T, C); returns (projected (B,T,H), normed (B,T,C))."""

    def __init__(self, config: SpeechEncoderConfig) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.feature_dim, eps=config.layer_norm_eps)
        self.projection = Linear(config.feature_dim, config.hidden_size)
        self.dropout = Dropout(config.feat_proj_dropout)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        normed = self.layer_norm(features)
        return self.dropout(self.projection(normed)), normed

"""Waveform -> frame features: the 7-layer conv feature encoder and the feature projection.

Padding never changes the output of a valid frame: each conv is a "valid" convolution,
so frame t only reads samples of its own utterance, and the group-norm variant
normalises every channel over the *valid* frames of each utterance only (fairseq and
transformers normalise over the padded length: padded base models drift, transformers #21534).

The conv stack runs oneDNN's conv on (B, C, 1, T) tensors, channels-first, or time-major
(``channels_last``) for narrow stacks (`CHANNELS_LAST_MAX_CHANNELS`); the encoder returns a
time-major (B, T, C) view. Autograd saves one tensor per block: each block's GELU is fused
with the next block's convolution (`gelu_conv`), which keeps only the pre-activation and
recomputes the GELU in backward, and the first block's GroupNorm joins that fusion when no
frame is padded (`group_norm_gelu_conv`). transformers keeps the conv input, the GELU input
and (first block) the GroupNorm input: three tensors where we keep one, the largest of them
(B, 512, S/5) at ``base``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ..configuration import SpeechEncoderConfig
from .dropout import Dropout
from .linear import Linear


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


CHANNELS_LAST_MAX_CHANNELS = 128
"""Stacks whose widest conv has at most this many channels run time-major (``channels_last``).

oneDNN's conv forward+backward on this project's CPU (k=3, stride 2, 1 thread): 2.6x faster
time-major than channels-first at 32 channels, on par at 64-128, 2x slower at 256-512.
"""


def _conv_weight(weight: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """(C_out, C_in, k) conv1d weight -> (C_out, C_in, 1, k) conv2d weight in the stack's memory format."""
    weight = weight.unsqueeze(2)
    return weight.contiguous(memory_format=torch.channels_last) if channels_last else weight


def _conv(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
          channels_last: bool) -> torch.Tensor:
    """(B, C_in, 1, T_in) -> (B, C_out, 1, T_out): the conv1d as a height-1 conv2d (oneDNN)."""
    return F.conv2d(hidden, _conv_weight(weight, channels_last), bias, (1, stride))


def _conv_backward(grad: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, has_bias: bool, stride: int,
                   channels_last: bool, needs: tuple[bool, bool, bool]):
    """Gradients of `_conv` w.r.t. (hidden, weight (C_out, C_in, k), bias)."""
    grad_hidden, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
        grad, hidden, _conv_weight(weight, channels_last), [weight.shape[0]] if has_bias else None,
        [1, stride], [0, 0], [1, 1], False, [0, 0], 1, [needs[0], needs[1], needs[2] and has_bias],
    )
    if grad_weight is not None:
        grad_weight = grad_weight.squeeze(2).contiguous()
    return grad_hidden, grad_weight, grad_bias


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    """A 1-D view of a dense (B, C, 1, T) tensor, contiguous or channels-last, in memory order.

    Elementwise kernels run fastest on it: on the 4-D channels-last layout (time-major with a
    size-1 height) torch's GELU and its gradient take ~1.4x as long for the same elements.
    """
    return tensor.view(-1) if tensor.is_contiguous() else tensor.permute(0, 2, 3, 1).reshape(-1)


def _dense(tensor: torch.Tensor) -> bool:
    return tensor.is_contiguous() or tensor.is_contiguous(memory_format=torch.channels_last)


def _gelu(pre: torch.Tensor) -> torch.Tensor:
    """``F.gelu(pre)`` for a (B, C, 1, T) tensor, computed on its flat view; same layout as ``pre``."""
    if not _dense(pre):
        return F.gelu(pre)
    out = torch.empty_like(pre)
    torch.ops.aten.gelu.out(_flat(pre), out=_flat(out))
    return out


class _GeluConv(torch.autograd.Function):
    """``conv(gelu(pre))`` that saves only ``pre``: the GELU is recomputed in backward."""

    @staticmethod
    def forward(ctx, pre, weight, bias, stride, channels_last):  # type: ignore[override]
        ctx.stride, ctx.has_bias, ctx.channels_last = stride, bias is not None, channels_last
        ctx.save_for_backward(pre, weight)
        return _conv(_gelu(pre), weight, bias, stride, channels_last)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        pre, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        hidden = _gelu(pre)
        grad_hidden, grad_weight, grad_bias = _conv_backward(
            grad, hidden, weight, ctx.has_bias, ctx.stride, ctx.channels_last, needs[:3])
        grad_pre = None
        if needs[0]:  # written over the recomputed activation, which is no longer needed
            grad_pre = _gelu_backward_into(grad_hidden, pre, hidden)
        return grad_pre, grad_weight, grad_bias, None, None


def _gelu_backward_into(grad: torch.Tensor, pre: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``gelu_backward(grad, pre)`` written into ``out`` (same shape and layout as ``pre``; may be ``pre``)."""
    grad = grad.contiguous(memory_format=_format(pre))
    if not (_dense(pre) and out.stride() == pre.stride()):
        return torch.ops.aten.gelu_backward.grad_input(grad, pre, approximate="none", grad_input=out)
    torch.ops.aten.gelu_backward.grad_input(_flat(grad), _flat(pre), approximate="none", grad_input=_flat(out))
    return out


def _frames_view(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(B, C, 1, T) -> a 3-D view with time on its contiguous-ish axis, and that axis.

    Channels-first: (B, C, T) reduced over dim 2; channels-last (time-major memory):
    (B, T, C) reduced over dim 1. Both are views, no copy.
    """
    if tensor.is_contiguous(memory_format=torch.channels_last) and not tensor.is_contiguous():
        return tensor.squeeze(2).transpose(1, 2), 1
    return tensor.squeeze(2), 2


def _unframe(view: torch.Tensor, time_dim: int) -> torch.Tensor:
    """Inverse of `_frames_view`: the 3-D view back to (B, C, 1, T)."""
    return (view.transpose(1, 2) if time_dim == 1 else view).unsqueeze(2)


class _GroupNormGeluConv(torch.autograd.Function):
    """``conv(gelu(group_norm(pre)))``, one group per channel, saving ``pre`` and its statistics only.

    Backward recomputes the normalised input in one pass from the saved statistics. The
    GroupNorm gradient comes from torch's fused kernel for channels-first tensors; for
    channels-last ones, where that kernel is 3x slower on CPU, from reductions over the
    time axis: ``dpre = rstd * w * (g - mean_t(g) - xhat * mean_t(g * xhat))``.
    """

    @staticmethod
    def forward(ctx, pre, norm_weight, norm_bias, eps, weight, bias, stride, channels_last):  # type: ignore[override]
        batch, channels, _, frames = pre.shape
        normed, mean, rstd = torch.native_group_norm(pre, norm_weight, norm_bias, batch, channels, frames, channels, eps)
        ctx.stride, ctx.has_bias, ctx.channels_last = stride, bias is not None, channels_last
        ctx.save_for_backward(pre, norm_weight, norm_bias, mean, rstd, weight)
        return _conv(_gelu(normed), weight, bias, stride, channels_last)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        pre, norm_weight, norm_bias, mean, rstd, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        view, time_dim = _frames_view(pre)
        per_channel = (lambda stat: stat.unsqueeze(time_dim))  # (B, C) -> broadcastable over view
        scale = rstd * norm_weight  # (B, C): normed = pre * scale + shift
        channels_first = time_dim == 2
        if channels_first:  # one pass; torch's fused kernel does the GroupNorm backward
            normalised = None
            normed = torch.addcmul(per_channel(norm_bias - mean * scale), view, per_channel(scale))
        else:  # xhat once, for the activation and the gradient
            normalised = torch.addcmul(per_channel(-mean * rstd), view, per_channel(rstd))
            normed = torch.addcmul(norm_bias[None, None, :], normalised, norm_weight[None, None, :])
        hidden = F.gelu(normed)
        grad_hidden, grad_weight, grad_bias = _conv_backward(
            grad, _unframe(hidden, time_dim), weight, ctx.has_bias, ctx.stride, ctx.channels_last,
            (any(needs[:3]),) + needs[4:6])
        grad_pre = grad_norm_weight = grad_norm_bias = None
        if any(needs[:3]):  # buffers reused in place: no new (B, C, T) tensor below
            grad_hidden = _frames_view(grad_hidden.contiguous(memory_format=_format(pre)))[0]
            grad_normed = torch.ops.aten.gelu_backward.grad_input(grad_hidden, normed, approximate="none",
                                                                  grad_input=normed)
            del grad_hidden
            if channels_first:
                batch, channels, _, frames = pre.shape
                grad_pre, grad_norm_weight, grad_norm_bias = torch.ops.aten.native_group_norm_backward(
                    _unframe(grad_normed, time_dim), pre, mean, rstd, norm_weight, batch, channels, frames, channels,
                    list(needs[:3]))
            else:
                sum_grad = grad_normed.sum(time_dim)  # (B, C)
                sum_product = torch.mul(grad_normed, normalised, out=hidden).sum(time_dim)
                grad_norm_weight, grad_norm_bias = sum_product.sum(0), sum_grad.sum(0)
                frames = view.shape[time_dim]
                grad_pre = grad_normed.mul_(per_channel(scale))
                grad_pre = grad_pre.addcmul_(normalised, per_channel(-scale * sum_product / frames))
                grad_pre = _unframe(grad_pre.add_(per_channel(-scale * sum_grad / frames)), time_dim)
        return grad_pre, grad_norm_weight, grad_norm_bias, None, grad_weight, grad_bias, None, None


def _format(tensor: torch.Tensor) -> torch.memory_format:
    """The memory format of a (B, C, 1, T) tensor (channels-last = time-major)."""
    channels_last = tensor.is_contiguous(memory_format=torch.channels_last) and not tensor.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


def gelu_conv(pre: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
              channels_last: bool = False) -> torch.Tensor:
    """``conv1d(gelu(pre), weight, bias, stride)`` on height-1 4-D tensors, keeping only ``pre`` for backward.

    Args:
        pre: (B, C_in, 1, T_in) pre-activation; weight: (C_out, C_in, k); bias: (C_out,) or None.
        channels_last: run oneDNN on the time-major layout (see `CHANNELS_LAST_MAX_CHANNELS`).
    Returns:
        (B, C_out, 1, (T_in - k) // stride + 1).
    """
    return _GeluConv.apply(pre, weight, bias, stride, channels_last)


def group_norm_gelu_conv(pre: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor, eps: float,
                         weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
                         channels_last: bool = False) -> torch.Tensor:
    """``conv1d(gelu(group_norm(pre, C, norm_weight, norm_bias, eps)), weight, bias, stride)``.

    Keeps ``pre`` (B, C_in, 1, T_in) and its (B, C_in) mean / inverse std for backward; the
    normalised and activated tensors are recomputed there. Shapes as in `gelu_conv`.
    """
    return _GroupNormGeluConv.apply(pre, norm_weight, norm_bias, eps, weight, bias, stride, channels_last)


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
        if lengths is None or bool((lengths >= num_frames).all()):
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
    """Conv -> optional norm -> GELU, channels-first: (B, C_in, T_in) -> (B, C_out, T_out).

    ``forward`` is the plain definition; `FeatureEncoder` computes the same values with the
    GELU fused into the next block's convolution (`pre_activation` + `gelu_conv1d`).
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

    def output_lengths(self, lengths: torch.Tensor | None) -> torch.Tensor | None:
        """(B,) valid input frames -> (B,) valid output frames (None stays None)."""
        return None if lengths is None else conv_output_lengths(lengths, [self.kernel], [self.stride])

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden = F.conv1d(hidden, self.conv.weight, self.conv.bias, self.stride)
        lengths = self.output_lengths(lengths)
        if self.norm is not None:
            hidden = self.norm(hidden, lengths)
        return F.gelu(hidden), lengths

    def pre_activation(self, previous: torch.Tensor, previous_norm: nn.Module | None,
                       previous_lengths: torch.Tensor | None, channels_last: bool) -> torch.Tensor:
        """This block's conv output (B, C_out, 1, T_out) from the previous block's conv output.

        ``previous`` is (B, C_in, 1, T_in); the previous block's norm (``previous_norm``, over
        ``previous_lengths`` valid frames) and GELU are applied first, fused with this conv.
        """
        weight, bias = self.conv.weight, self.conv.bias
        if torch.is_autocast_enabled(previous.device.type):
            # mixed precision: plain ops, so autocast casts each of them (the fused functions'
            # hand-written backward would mix fp16/bf16 gradients with fp32 weights)
            if previous_norm is not None:
                previous = previous_norm(previous.squeeze(2), previous_lengths).unsqueeze(2)
            return _conv(F.gelu(previous), weight, bias, self.stride, channels_last)
        if isinstance(previous_norm, MaskedChannelNorm) and (
            previous_lengths is None or bool((previous_lengths >= previous.shape[3]).all())
        ):
            return group_norm_gelu_conv(previous, previous_norm.weight, previous_norm.bias, previous_norm.eps,
                                        weight, bias, self.stride, channels_last)
        if previous_norm is not None:
            previous = previous_norm(previous.squeeze(2), previous_lengths).unsqueeze(2)
        return gelu_conv(previous, weight, bias, self.stride, channels_last)


class FeatureEncoder(nn.Module):
    """The conv stack: raw 16 kHz samples (B, S) -> features (B, T, C) at 50 Hz (a time-major view).

    Internally (B, C, 1, T) height-1 images for oneDNN, channels-first, or time-major
    (``channels_last``) when every conv has at most `CHANNELS_LAST_MAX_CHANNELS` channels.
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
        self.channels_last = max(config.conv_dim) <= CHANNELS_LAST_MAX_CHANNELS

    def forward(self, input_values: torch.Tensor, sample_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """input_values: (B, S) float; sample_lengths: (B,) valid samples or None. Returns (B, T, C)."""
        if input_values.dim() != 2:
            raise ValueError(
                f"input_values must be (batch, samples), got shape {tuple(input_values.shape)}; "
                "down-mix stereo to mono and stack utterances with the feature extractor."
            )
        batch, samples = input_values.shape
        waveform = input_values.contiguous()
        first, channels_last = self.conv_layers[0], self.channels_last
        if channels_last:  # (B, 1, 1, S) with channels-last strides: oneDNN writes a channels-last output
            waveform = waveform.as_strided((batch, 1, 1, samples), (samples, 1, samples, 1))
        else:
            waveform = waveform[:, None, None, :]
        hidden = _conv(waveform, first.conv.weight, first.conv.bias, first.stride, channels_last)
        norm, lengths = first.norm, first.output_lengths(sample_lengths)
        for layer in self.conv_layers[1:]:
            hidden = layer.pre_activation(hidden, norm, lengths, self.channels_last)
            norm, lengths = layer.norm, layer.output_lengths(lengths)
        hidden = hidden.squeeze(2)
        if norm is not None:
            hidden = norm(hidden, lengths)
        return F.gelu(hidden).transpose(1, 2)


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

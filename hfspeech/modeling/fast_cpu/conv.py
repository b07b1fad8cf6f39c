"""The conv feature encoder on oneDNN, with GELU (and GroupNorm) fused into the next conv.

Computes what `feature_encoder.FeatureEncoder` computes block by block (conv1d -> norm ->
GELU), with three changes that make it cheaper on CPU:

* each conv1d runs as oneDNN's conv2d on a (B, C, 1, T) tensor (oneDNN's conv is faster than
  aten's conv1d on CPU; see ``benchmarks/RESULTS.md``), channels-first, or time-major
  (``channels_last``) for stacks no wider than `CHANNELS_LAST_MAX_CHANNELS`, where oneDNN's
  time-major kernels are the faster ones;
* each block's GELU is fused with the next block's conv (`gelu_conv`): autograd keeps only
  the pre-activation and backward recomputes the GELU;
* the first block's GroupNorm joins that fusion when no frame is padded
  (`group_norm_gelu_conv`), keeping only its input and (B, C) statistics.

Autograd thus saves one tensor per block where the plain chain saves the conv input, the
GELU input and (first block) the GroupNorm input. With padded frames the masked GroupNorm
(`feature_encoder.MaskedChannelNorm`) runs as written, so padding still never changes a
valid frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from . import applies_to

CHANNELS_LAST_MAX_CHANNELS = 128
"""Stacks whose widest conv has at most this many channels run time-major (``channels_last``)."""


def applies(input_values: torch.Tensor) -> bool:
    """Whether `feature_encoder` runs for this input: backend on, fp32 CPU tensor, autocast off."""
    return input_values.dtype == torch.float32 and applies_to(input_values)


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


def _is_time_major(tensor: torch.Tensor) -> bool:
    return tensor.is_contiguous(memory_format=torch.channels_last) and not tensor.is_contiguous()


def _format(tensor: torch.Tensor) -> torch.memory_format:
    """The memory format of a (B, C, 1, T) tensor (channels-last = time-major)."""
    return torch.channels_last if _is_time_major(tensor) else torch.contiguous_format


def _dense(tensor: torch.Tensor) -> bool:
    return tensor.is_contiguous() or tensor.is_contiguous(memory_format=torch.channels_last)


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    """A 1-D view of a dense (B, C, 1, T) tensor in memory order (elementwise kernels run fastest on it:
    on the 4-D channels-last layout with its size-1 height they are slower)."""
    return tensor.view(-1) if tensor.is_contiguous() else tensor.permute(0, 2, 3, 1).reshape(-1)


def _gelu(pre: torch.Tensor) -> torch.Tensor:
    """``F.gelu(pre)`` for a (B, C, 1, T) tensor, computed on its flat view; same layout as ``pre``."""
    if not _dense(pre):
        return F.gelu(pre)
    out = torch.empty_like(pre)
    torch.ops.aten.gelu.out(_flat(pre), out=_flat(out))
    return out


def _gelu_backward_into(grad: torch.Tensor, pre: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``gelu_backward(grad, pre)`` written into ``out`` (same shape and layout as ``pre``; may be ``pre``)."""
    grad = grad.contiguous(memory_format=_format(pre))
    if not (_dense(pre) and out.stride() == pre.stride()):
        return torch.ops.aten.gelu_backward.grad_input(grad, pre, approximate="none", grad_input=out)
    torch.ops.aten.gelu_backward.grad_input(_flat(grad), _flat(pre), approximate="none", grad_input=_flat(out))
    return out


def _frames_view(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(B, C, 1, T) -> a 3-D view with time on its contiguous-ish axis, and that axis.

    Channels-first: (B, C, T) reduced over dim 2; time-major memory: (B, T, C) reduced over
    dim 1. Both are views, no copy.
    """
    if _is_time_major(tensor):
        return tensor.squeeze(2).transpose(1, 2), 1
    return tensor.squeeze(2), 2


def _unframe(view: torch.Tensor, time_dim: int) -> torch.Tensor:
    """Inverse of `_frames_view`: the 3-D view back to (B, C, 1, T)."""
    return (view.transpose(1, 2) if time_dim == 1 else view).unsqueeze(2)


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


class _GroupNormGeluConv(torch.autograd.Function):
    """``conv(gelu(group_norm(pre)))``, one group per channel, saving ``pre`` and its statistics only.

    Backward recomputes the normalised input in one pass from the saved statistics. The
    GroupNorm gradient comes from torch's fused kernel for channels-first tensors; for
    time-major ones, where that kernel is slower, from reductions over the time axis:
    ``dpre = rstd * w * (g - mean_t(g) - xhat * mean_t(g * xhat))``.
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


def _next_pre_activation(previous: torch.Tensor, previous_block: nn.Module, previous_lengths: torch.Tensor | None,
                         block: nn.Module, channels_last: bool) -> torch.Tensor:
    """``block``'s conv output (B, C_out, 1, T_out) from ``previous_block``'s conv output ``previous``
    (B, C_in, 1, T_in): the previous block's norm (over ``previous_lengths`` valid frames) and GELU
    are applied first, fused with this conv."""
    norm, weight, bias = previous_block.norm, block.conv.weight, block.conv.bias
    if previous_block.norm_kind == "group" and (
        previous_lengths is None or bool((previous_lengths >= previous.shape[3]).all())
    ):
        return group_norm_gelu_conv(previous, norm.weight, norm.bias, norm.eps, weight, bias, block.stride,
                                    channels_last)
    if norm is not None:
        previous = norm(previous.squeeze(2), previous_lengths).unsqueeze(2)
    return gelu_conv(previous, weight, bias, block.stride, channels_last)


def feature_encoder(encoder: nn.Module, input_values: torch.Tensor, sample_lengths: torch.Tensor | None,
                    channels_last: bool | None = None) -> torch.Tensor:
    """`feature_encoder.FeatureEncoder.forward` on this backend: (B, S) samples -> (B, T, C) (a time-major view).

    Args:
        encoder: the `FeatureEncoder` whose blocks (``encoder.conv_layers``) and parameters are used.
        input_values: (B, S) float32 samples; sample_lengths: (B,) valid samples or None.
        channels_last: the layout of the stack; None = time-major when no conv is wider than
            `CHANNELS_LAST_MAX_CHANNELS`.
    """
    blocks = encoder.conv_layers
    if channels_last is None:
        channels_last = max(block.conv.out_channels for block in blocks) <= CHANNELS_LAST_MAX_CHANNELS
    batch, samples = input_values.shape
    waveform = input_values.contiguous()
    if channels_last:  # (B, 1, 1, S) with channels-last strides: oneDNN writes a channels-last output
        waveform = waveform.as_strided((batch, 1, 1, samples), (samples, 1, samples, 1))
    else:
        waveform = waveform[:, None, None, :]
    first = blocks[0]
    hidden = _conv(waveform, first.conv.weight, first.conv.bias, first.stride, channels_last)
    previous, lengths = first, first.output_lengths(sample_lengths)
    for block in blocks[1:]:
        hidden = _next_pre_activation(hidden, previous, lengths, block, channels_last)
        previous, lengths = block, block.output_lengths(lengths)
    hidden = hidden.squeeze(2)
    if previous.norm is not None:
        hidden = previous.norm(hidden, lengths)
    return F.gelu(hidden).transpose(1, 2)


__all__ = ["CHANNELS_LAST_MAX_CHANNELS", "applies", "feature_encoder", "gelu_conv", "group_norm_gelu_conv"]

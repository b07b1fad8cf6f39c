"""fp32 CPU products of wide linear layers on oneDNN's inner product instead of the BLAS sgemm.

PyTorch's CPU ``F.linear`` calls the BLAS (MKL) sgemm, which picks its kernels by CPU vendor
and can stay on narrower vector code than the CPU supports; oneDNN (shipped with PyTorch for
its convolutions) dispatches on the instruction set. `linear` sends the three products of a
training step (output, input gradient, weight gradient) through oneDNN's inner product
(``torch.ops.mkldnn._linear_pointwise``, which takes dense and transposed views without
copies). `benchmarks/linear.py` compares the two on the machine at hand.

It `applies` when the backend is on (``HFSPEECH_FAST_CPU``), oneDNN is there, input and weight
are fp32 CPU tensors, autocast is off, and the layer is at least `MIN_FEATURES` wide on both
sides (narrow layers lose to the call overhead). Results equal ``F.linear`` to float32
rounding (the products are summed in another order).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from . import FAST_CPU_ENV, applies_to, enabled

__all__ = ["MIN_FEATURES", "ONEDNN_LINEAR_ENV", "applies", "linear", "onednn_linear_enabled"]

MIN_FEATURES = 256
ONEDNN_LINEAR_ENV = FAST_CPU_ENV
"""The environment variable that switches this path off: the backend's own."""


def _inner_product(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(M, K) x (N, K) -> (M, N): ``input @ weight.T + bias`` by oneDNN (views with any strides)."""
    return torch.ops.mkldnn._linear_pointwise(input, weight, bias, "none", [], "")


_ONEDNN_AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_linear_enabled() -> bool:
    """Whether oneDNN's inner product is there and the backend is on."""
    return _ONEDNN_AVAILABLE and enabled()


class _OneDNNLinear(torch.autograd.Function):
    """``F.linear`` with the forward and both backward products on oneDNN; saves what F.linear saves."""

    @staticmethod
    def forward(ctx, input, weight, bias):  # type: ignore[override]
        ctx.save_for_backward(input, weight)
        ctx.has_bias = bias is not None
        rows = input.reshape(-1, input.shape[-1])
        return _inner_product(rows, weight, bias).view(*input.shape[:-1], weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        input, weight = ctx.saved_tensors
        grad_rows = grad.reshape(-1, grad.shape[-1])
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:  # grad @ weight
            grad_input = _inner_product(grad_rows, weight.t(), None).view(input.shape)
        if ctx.needs_input_grad[1]:  # grad.T @ input
            grad_weight = _inner_product(grad_rows.t(), input.reshape(-1, input.shape[-1]).t(), None)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_rows.sum(0)
        return grad_input, grad_weight, grad_bias


def applies(layer: nn.Linear, input: torch.Tensor) -> bool:
    """Whether `linear` runs for ``layer(input)`` (see the module docstring)."""
    return (
        _ONEDNN_AVAILABLE
        and min(layer.in_features, layer.out_features) >= MIN_FEATURES
        and input.dtype == torch.float32
        and layer.weight.dtype == torch.float32
        and input.numel() > 0
        and applies_to(input)
    )


def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(input, weight, bias)`` on oneDNN: (..., K) x (N, K) -> (..., N)."""
    return _OneDNNLinear.apply(input, weight, bias)

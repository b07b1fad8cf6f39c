"""``nn.Linear`` whose large fp32 CPU products run on oneDNN instead of the BLAS (MKL) sgemm.

PyTorch's CPU ``F.linear`` calls MKL's sgemm. MKL picks its kernels by CPU vendor: on AMD
processors it runs its AVX2 code even where the CPU has AVX-512, so on this project's EPYC
machine sgemm stays at ~110 GFLOP/s per core while oneDNN (which PyTorch ships for its
convolutions and dispatches on the instruction set) reaches ~225-245 GFLOP/s on the same
products (`benchmarks/linear.py`, `benchmarks/RESULTS.md`). `Linear` sends the three products of a training step (output, input
gradient, weight gradient) through oneDNN's inner product (``torch.ops.mkldnn._linear_pointwise``,
which takes dense and transposed views without copies) when that can pay:

* the input and weight are fp32 CPU tensors and autocast is off (`torch.compile` traces the
  autograd function; tested with Dynamo's eager backend, as the rest of the model);
* the layer is at least `MIN_FEATURES` wide on both sides (narrow layers lose to the call
  overhead: 0.7x at 32 x 32);
* oneDNN is available and ``HFSPEECH_ONEDNN_LINEAR`` is not ``0``.

Otherwise it is ``F.linear``. Same parameters and state dict as ``nn.Linear``; results equal
``F.linear`` to float32 rounding (the products are summed in another order).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["Linear", "onednn_linear_enabled", "MIN_FEATURES", "ONEDNN_LINEAR_ENV"]

MIN_FEATURES = 256
ONEDNN_LINEAR_ENV = "HFSPEECH_ONEDNN_LINEAR"


def _inner_product(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(M, K) x (N, K) -> (M, N): ``input @ weight.T + bias`` by oneDNN (views with any strides)."""
    return torch.ops.mkldnn._linear_pointwise(input, weight, bias, "none", [], "")


def onednn_linear_enabled() -> bool:
    """Whether oneDNN's inner product is there and not switched off (``HFSPEECH_ONEDNN_LINEAR=0``)."""
    if os.environ.get(ONEDNN_LINEAR_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


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


_ENABLED = onednn_linear_enabled()


class Linear(nn.Linear):
    """Drop-in ``nn.Linear`` (same arguments, parameters and state dict); see the module doc."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self._use_onednn(input):
            return _OneDNNLinear.apply(input, self.weight, self.bias)
        return F.linear(input, self.weight, self.bias)

    def _use_onednn(self, input: torch.Tensor) -> bool:
        return (
            _ENABLED
            and min(self.in_features, self.out_features) >= MIN_FEATURES
            and input.device.type == "cpu"
            and input.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and input.numel() > 0
            and not torch.is_autocast_enabled("cpu")
        )

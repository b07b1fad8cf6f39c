"""Dropout with a boolean mask drawn by ``torch.rand``, and attention dropout that uses it.

Same distribution as ``F.dropout`` (each element kept with probability 1 - p and scaled by
1 / (1 - p)); the masks differ draw for draw (``torch.rand(shape) >= p`` here, a
``bernoulli_`` draw in torch), so equality with the plain path is statistical. Cheaper on
CPU because:

* the mask comes from one vectorised ``torch.rand`` draw and a comparison, where torch's CPU
  dropout draws it with a scalar ``bernoulli_`` loop;
* backward keeps the mask as bool (1 byte per element) where torch keeps a float (4 bytes);
* the mask is applied as ``input * keep`` (bool promoted to 0/1) then scaled: bitwise the
  same as ``masked_fill`` + scale, but vectorised where ``masked_fill`` with a bool mask runs
  a scalar loop on CPU.

`attention` applies the same dropout to the attention probabilities, which
``F.scaled_dot_product_attention`` on CPU can only do on its math path (``bernoulli_`` mask,
a float copy of the dropped probabilities saved for backward); here the dropped
probabilities are recomputed in backward. Randomness comes from torch's global generator,
like ``nn.Dropout``.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import applies_to

__all__ = ["applies", "attention", "dropout"]


def applies(input: torch.Tensor) -> bool:
    """Whether this backend's dropout runs for ``input``: backend on, CPU tensor, autocast off."""
    return applies_to(input)


def _keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """Bool tensor of ``shape``, False (dropped) with probability p: ``torch.rand(shape) >= p``."""
    return torch.rand(shape, device=device) >= p


def _apply(tensor: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
    """Zero the dropped elements and scale the others (a new tensor)."""
    return torch.mul(tensor, keep).mul_(scale)


class _MaskedScale(torch.autograd.Function):
    """``input`` where ``keep``, else 0, times ``scale = 1 / (1 - p)``; saves only the bool mask."""

    @staticmethod
    def forward(ctx, input, keep, scale):  # type: ignore[override]
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return _apply(input, keep, scale)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        (keep,) = ctx.saved_tensors
        return _apply(grad, keep, ctx.scale), None, None


def dropout(input: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout, 0 < p < 1, with a ``torch.rand`` mask. Any shape in, same shape out."""
    return _MaskedScale.apply(input, _keep_mask(input.shape, p, input.device), 1.0 / (1.0 - p))


class _DroppedProbsMatmul(torch.autograd.Function):
    """``dropout(probs) @ value``: saves probs (shared with the softmax), the bool mask and value.

    The dropped probabilities are recomputed in backward instead of being kept.
    """

    @staticmethod
    def forward(ctx, probs, keep, scale, value):  # type: ignore[override]
        ctx.save_for_backward(probs, keep, value)
        ctx.scale = scale
        return torch.matmul(_apply(probs, keep, scale), value)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        probs, keep, value = ctx.saved_tensors
        grad_probs = grad_value = None
        if ctx.needs_input_grad[0]:
            grad_probs = torch.matmul(grad, value.transpose(-1, -2)).mul_(keep).mul_(ctx.scale)
        if ctx.needs_input_grad[3]:
            grad_value = torch.matmul(_apply(probs, keep, ctx.scale).transpose(-1, -2), grad)
        return grad_probs, None, None, grad_value


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_mask: torch.Tensor | None,
              dropout_p: float) -> torch.Tensor:
    """Scaled dot-product attention with dropout (0 < dropout_p < 1) on the probabilities.

    Args:
        query, key, value: (B, heads, T, D).
        key_mask: (B, 1, 1, T) bool, True where a key may be attended to, or None.
    Returns:
        (B, heads, T, D): ``dropout(softmax(q k^T / sqrt(D) masked), dropout_p) @ v``.
    """
    scores = torch.matmul(query, key.transpose(-1, -2)).mul_(query.shape[-1] ** -0.5)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    keep = _keep_mask(probs.shape, dropout_p, probs.device)
    return _DroppedProbsMatmul.apply(probs, keep, 1.0 / (1.0 - dropout_p), value)

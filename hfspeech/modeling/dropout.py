"""Dropout and attention with dropout: ``F.dropout`` and ``F.scaled_dot_product_attention``.

On CPU (unless ``HFSPEECH_FAST_CPU=0``) both run on `fast_cpu.dropout`: the same
distribution with a bool ``torch.rand`` mask, cheaper to draw and to keep for backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fast_cpu import dropout as fast_dropout

__all__ = ["Dropout", "attention", "dropout"]


def dropout(input: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(input, p, training)``: each element zeroed with probability p, the rest scaled by 1 / (1 - p).

    Any shape in, same shape out; ``input`` itself when not training or p = 0.
    """
    if not training or p == 0.0:
        return input
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}.")
    if fast_dropout.applies(input):
        return fast_dropout.dropout(input, p)
    return F.dropout(input, p, training=True)


class Dropout(nn.Dropout):
    """Drop-in ``nn.Dropout`` (same arguments, no parameters) computed by `dropout`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return dropout(input, self.p, self.training)


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_mask: torch.Tensor | None,
              dropout_p: float) -> torch.Tensor:
    """``F.scaled_dot_product_attention(query, key, value, attn_mask=key_mask, dropout_p=dropout_p)``.

    Args:
        query, key, value: (B, heads, T, D).
        key_mask: (B, 1, 1, T) bool, True where a key may be attended to, or None.
        dropout_p: dropout probability on the attention probabilities (0 in eval).
    Returns:
        (B, heads, T, D).
    """
    if dropout_p > 0.0 and fast_dropout.applies(query):
        return fast_dropout.attention(query, key, value, key_mask, dropout_p)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=key_mask, dropout_p=dropout_p)

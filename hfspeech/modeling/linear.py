"""``Linear``: ``nn.Linear`` whose wide fp32 CPU layers run on the fast CPU backend.

Same arguments, parameters and state dict as ``nn.Linear``; ``forward`` is ``F.linear``,
or `fast_cpu.linear.linear` (oneDNN's inner product) where `fast_cpu.linear.applies`
(``HFSPEECH_FAST_CPU=0`` turns it off).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fast_cpu import linear as fast_linear

__all__ = ["Linear"]


class Linear(nn.Linear):
    """Drop-in ``nn.Linear``. (..., in_features) -> (..., out_features)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self._use_onednn(input):
            return fast_linear.linear(input, self.weight, self.bias)
        return F.linear(input, self.weight, self.bias)

    def _use_onednn(self, input: torch.Tensor) -> bool:
        return fast_linear.applies(self, input)

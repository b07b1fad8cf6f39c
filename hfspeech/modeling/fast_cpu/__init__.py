"""The fast CPU backend: faster implementations of plain modules, switched by ``HFSPEECH_FAST_CPU``.

The modeling code is written plainly (``nn.Conv1d``, ``F.gelu``, ``F.linear``, ``F.dropout``,
``F.scaled_dot_product_attention``); where this backend applies, the same module sends its
work here instead. Each path computes the plain module's values and gradients (to float32
rounding; dropout masks are drawn differently, with the same distribution), keeps its
parameters and state-dict keys, and is tested against the plain module
(``tests/modeling/test_fast_cpu.py``):

=========================  =====================================================  =================================
path                       what it does                                          used by
=========================  =====================================================  =================================
`fast_cpu.conv`            conv stack on oneDNN's conv2d over (B, C, 1, T),       `feature_encoder.FeatureEncoder`
                           time-major for narrow stacks; GELU (and the first
                           GroupNorm) fused with the next conv and recomputed
                           in backward: one saved tensor per block
`fast_cpu.linear`          fp32 products of wide layers on oneDNN's inner         `linear.Linear`
                           product instead of the BLAS sgemm
`fast_cpu.dropout`         dropout with a bool ``torch.rand`` mask; attention     `dropout.Dropout`, `dropout.attention`
                           dropout without SDPA's math path
`fast_cpu.allocator`       glibc keeps freed large blocks (``mallopt``): steps    `training.acceleration.reuse_freed_memory`
                           reuse pages instead of faulting in fresh ones
=========================  =====================================================  =================================

Why they are faster, and by how much, is measured in ``benchmarks/results/fast_cpu_backend.md``
and ``benchmarks/RESULTS.md``; none of it is needed for correctness.

The backend is on by default for CPU tensors where it applies (fp32, autocast off; see each
path's ``applies``). ``HFSPEECH_FAST_CPU=0`` (also ``false``, ``no``, ``off``) turns every path
off: the plain modules run as written. The variable is read at each call, so tests can toggle
it (``monkeypatch.setenv``); the allocator setting is process-wide and applies when the
training loop calls it.
"""

from __future__ import annotations

import os

import torch

FAST_CPU_ENV = "HFSPEECH_FAST_CPU"
_OFF_VALUES = ("0", "false", "no", "off")


def enabled() -> bool:
    """Whether the backend is switched on (``HFSPEECH_FAST_CPU`` unset or not one of 0/false/no/off)."""
    return os.environ.get(FAST_CPU_ENV, "1").strip().lower() not in _OFF_VALUES


def applies_to(tensor: torch.Tensor) -> bool:
    """The common condition of the compute paths: backend on, a CPU tensor, autocast off."""
    return tensor.device.type == "cpu" and not torch.is_autocast_enabled("cpu") and enabled()


__all__ = ["FAST_CPU_ENV", "applies_to", "enabled"]

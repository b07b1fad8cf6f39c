"""Learning-rate schedules of the papers, as `torch.optim.lr_scheduler.LambdaLR` factors."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def polynomial_decay_factor(step: int, warmup_steps: int, total_steps: int, end_factor: float = 0.0,
                            power: float = 1.0) -> float:
    """fairseq ``polynomial_decay``: linear warm-up to 1, then (1 - progress)^power down to end_factor."""
    if step < warmup_steps:
        return (step + 1) / max(1, warmup_steps)
    if step >= total_steps:
        return end_factor
    remaining = 1 - (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return end_factor + (1 - end_factor) * remaining**power


def tri_stage_factor(step: int, total_steps: int, phase_ratios: tuple[float, float, float] = (0.1, 0.4, 0.5),
                     initial_scale: float = 0.01, final_scale: float = 0.05) -> float:
    """fairseq ``tri_stage`` (fine-tuning): linear warm-up from ``initial_scale``, hold at 1,
    then exponential decay to ``final_scale``; phases as fractions of ``total_steps``."""
    warmup = int(total_steps * phase_ratios[0])
    hold = int(total_steps * phase_ratios[1])
    decay = max(1, total_steps - warmup - hold)
    if step < warmup:
        return initial_scale + (1 - initial_scale) * step / max(1, warmup)
    if step < warmup + hold:
        return 1.0
    progress = min(1.0, (step - warmup - hold) / decay)
    return math.exp(math.log(final_scale) * progress)


def build_scheduler(optimizer: torch.optim.Optimizer, kind: str, total_steps: int, warmup_ratio: float = 0.08,
                    phase_ratios: tuple[float, float, float] = (0.1, 0.4, 0.5), final_scale: float = 0.05) -> LambdaLR:
    """``kind``: "polynomial" (pretraining: warm-up ``warmup_ratio`` then linear decay) or "tri_stage"
    (fine-tuning: ``phase_ratios`` of warm-up, hold and decay down to ``final_scale``)."""
    if kind == "polynomial":
        warmup = int(round(total_steps * warmup_ratio))
        return LambdaLR(optimizer, lambda step: polynomial_decay_factor(step, warmup, total_steps))
    if kind == "tri_stage":
        if len(phase_ratios) != 3 or min(phase_ratios) < 0 or abs(sum(phase_ratios) - 1) > 1e-6:
            raise ValueError(f"tri-stage phase ratios must be three non-negative fractions summing to 1, got "
                             f"{list(phase_ratios)} (fairseq: [0.1, 0.4, 0.5])")
        if not 0 < final_scale <= 1:
            raise ValueError(f"final_lr_scale must be in (0, 1], got {final_scale}")
        ratios = tuple(phase_ratios)
        return LambdaLR(optimizer, lambda step: tri_stage_factor(step, total_steps, ratios, final_scale=final_scale))
    raise ValueError(f"Unknown lr schedule {kind!r}; use 'polynomial' or 'tri_stage'.")

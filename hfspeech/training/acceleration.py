"""What the training loops share about running fast: mixed precision and ``torch.compile``.

* fp16 on CPU: accelerate 1.15 accepts ``mixed_precision="fp16"`` on a CPU and then does
  nothing with it: no autocast, no gradient scaler, the run trains in fp32 without a word.
  torch 2.13 has both for CPU (fp16 autocast, ``torch.amp.GradScaler("cpu")``), so
  `enable_fp16_on_cpu` switches them on through accelerate's own hooks (``native_amp`` and
  ``scaler``, which `Accelerator.prepare`, ``autocast``, ``backward``, ``clip_grad_norm_``
  and the prepared optimizer's ``step`` read). The fp16 path the loops take on a GPU (loss
  scaling, overflow skipped, scale backed off) is then the one the CPU tests run. fp16 is
  slower than fp32 on CPUs; bf16 is the CPU choice.
* ``torch.compile``: the loops compile the model after its weights are loaded and before
  `Accelerator.prepare`, and save and log through the uncompiled module (`uncompiled`),
  so state-dict keys never carry ``_orig_mod.`` and ``final/`` loads with ``from_pretrained``.
* the allocator: `reuse_freed_memory` stops glibc from handing freed large blocks back to
  the kernel, so a training step reuses the pages of the previous one instead of faulting
  in fresh zeroed pages; it is part of the fast CPU backend (`hfspeech.modeling.fast_cpu`,
  off with ``HFSPEECH_FAST_CPU=0``).
"""

from __future__ import annotations

import logging
import os

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs

from ..modeling.fast_cpu.allocator import keep_freed_memory

logger = logging.getLogger(__name__)

MIXED_PRECISION_CHOICES = ("no", "bf16", "fp16")


def make_accelerator(mixed_precision: str, find_unused_parameters: bool) -> Accelerator:
    """The loops' `Accelerator`. Launched by torchrun on a machine without an accelerator, it is
    told ``cpu=True``: accelerate 1.15 otherwise gives every process a world of its own there
    (each trains alone and all write to the same output directory)."""
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(mixed_precision=mixed_precision, cpu=launched and not torch.accelerator.is_available(),
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)])


def check_mixed_precision(mixed_precision: str) -> None:
    """Refuse values accelerate would misread, naming the valid ones."""
    if mixed_precision not in MIXED_PRECISION_CHOICES:
        raise ValueError(f"mixed_precision={mixed_precision!r}; use one of {list(MIXED_PRECISION_CHOICES)} "
                         "(bf16 on CPUs and Ampere+ GPUs, fp16 on older GPUs).")


def enable_fp16_on_cpu(accelerator: Accelerator) -> None:
    """Give a CPU accelerator with ``mixed_precision="fp16"`` real fp16 autocast and a GradScaler.

    Call before `Accelerator.prepare` (the prepared model and optimizer read these
    settings). Does nothing on other devices or precisions.
    """
    if accelerator.mixed_precision != "fp16" or accelerator.device.type != "cpu" or accelerator.scaler is not None:
        return
    logger.warning("fp16 on CPU: torch's CPU fp16 autocast with a GradScaler, slower than fp32 on most CPUs; "
                   "use mixed_precision=bf16 on CPUs.")
    accelerator.native_amp = True
    accelerator.scaler = torch.amp.GradScaler("cpu")


def compile_model(model: torch.nn.Module, enabled: bool, backend: str) -> torch.nn.Module:
    """``torch.compile(model, backend=backend)`` when ``enabled``; the model itself otherwise."""
    if not enabled:
        return model
    if backend not in torch.compiler.list_backends(exclude_tags=()):
        raise ValueError(f"torch_compile_backend={backend!r} is not a torch.compile backend; "
                         f"available: {torch.compiler.list_backends(exclude_tags=())}.")
    return torch.compile(model, backend=backend)


def uncompiled(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The plain module behind DDP and ``torch.compile`` wrappers (what checkpoints save)."""
    return accelerator.unwrap_model(model, keep_torch_compile=False)


def skip_scaled_update(accelerator: Accelerator, unscaled: bool, overflow: bool) -> None:
    """After a skipped update under fp16: clear the scaler's step state, backing the scale off on overflow.

    ``unscaled``: the gradients went through ``unscale_``, which recorded the inf/nan the
    scaler backs off for (torch's own rule, which also restarts its growth count);
    otherwise the scale is backed off by hand when ``overflow`` (a non-finite loss) and
    kept when the update was skipped for another reason (no masked frame).
    """
    scaler = accelerator.scaler
    if scaler is None:
        return
    if unscaled:
        scaler.update()
    else:
        scaler.update(scaler.get_scale() * (scaler.get_backoff_factor() if overflow else 1.0))


def reuse_freed_memory(threshold_bytes: int = 1 << 30) -> bool:
    """Keep freed blocks below ``threshold_bytes`` inside the process; True when applied.

    The fast CPU backend's allocator setting (`hfspeech.modeling.fast_cpu.allocator`: glibc
    ``mallopt``, so a training step reuses the previous step's pages instead of faulting in
    fresh zeroed ones). Called by the pretraining and fine-tuning loops. Process-wide and not
    undone; a no-op (returns False) off glibc, or with ``HFSPEECH_FAST_CPU=0``.
    """
    return keep_freed_memory(threshold_bytes)

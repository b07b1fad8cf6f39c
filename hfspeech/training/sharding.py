"""FSDP2 for the LARGE and X-LARGE presets: parameters, gradients and optimizer state sharded over processes.

``fsdp: true`` in a run config shards the model with ``torch.distributed.fsdp.fully_shard``
(FSDP2): each Transformer `EncoderLayer` is one unit (its parameters are all-gathered just
before the layer runs, forward and backward, and freed after), then the root holds the rest
(feature encoder, positional conv, quantizer, heads). Each process keeps ``1 / world_size`` of
every tensor, so the fp32 weights + AdamW moments + gradients (16 bytes a parameter: 5 GB for
317M, 15 GB for 964M) shrink by the world size; activations do not.

Why a run-config switch and not accelerate's FSDP plugin (``distributed_type: FSDP``):

* accelerate 1.15 drops ``distributed_type: FSDP`` on a CPU and runs plain DDP without a
  word, and its FSDP1 wrapper cannot run on a CPU at all; FSDP2 runs on gloo, so this path is
  the same code on a CPU (tested with 2 processes) and on GPUs (NCCL).
* The loop owns checkpoints, gradient normalisation and clipping; accelerate's wrapper would
  hand `save_checkpoint` sharded tensors. Here accelerate only starts the processes (its plain
  multi-process mode); a launch with ``distributed_type: FSDP`` is refused, naming the fix.

What the loop does differently when sharded:

* **Order**: weights and optimizer state are loaded (resume) into the whole model first, then
  `shard_model` shards both and points the optimizer at the sharded parameters; ``torch.compile``
  comes after sharding (it traces the sharded modules, whose hooks gather the parameters).
* **Mixed precision**: ``bf16`` gathers parameters in bf16 and reduce-scatters gradients in fp32
  (``MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32)``); master weights and
  optimizer state stay fp32 shards. The loop's autocast stays on, so the ops it keeps in fp32
  (norms, softmax, losses) still run in fp32.
* **Accumulation**: non-final micro-steps skip the reduce-scatter (`gradient_sync`).
* **Gradient norm**: each process holds a shard of every gradient; `clip_gradients` takes the
  norm over all shards (one all-reduce), the same number `torch.nn.utils.clip_grad_norm_`
  gives for the whole model, and every process scales by the same factor.
* **Checkpoints**: `full_states` gathers the full model state dict and the optimizer state
  (on every process, kept on rank 0 in CPU memory), which rank 0 writes in the unsharded
  layout: ``final/`` loads with ``from_pretrained`` and a checkpoint resumes with or without
  sharding, on any number of processes.

Refused (`check_sharding`, each with its fix): one process (nothing to shard over);
``layerdrop > 0`` (each process draws its own layer skips, so the processes would gather
different layers and the collectives would pair the wrong tensors — a skip decision shared by
every process is needed, which the model does not draw); ``fp16`` (the GradScaler sees only its
own shard's overflows, so processes could disagree on skipping; use bf16); accelerate's own FSDP.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.utils import DistributedType

from ..modeling.encoder import EncoderLayer

def check_sharding(fsdp: bool, accelerator: Accelerator, model: torch.nn.Module) -> None:
    """Refuse what the FSDP2 path cannot do, naming the fix (see the module docstring)."""
    if accelerator.distributed_type == DistributedType.FSDP:
        raise ValueError(
            "The accelerate config sets distributed_type: FSDP; hfspeech shards the model itself (FSDP2, "
            "hfspeech.training.sharding). Launch with a multi-process config (distributed_type: MULTI_GPU, e.g. "
            "recipes/librispeech/accelerate/fsdp_8gpu.yaml) and set fsdp: true in the run config.")
    if not fsdp:
        return
    if accelerator.num_processes < 2:
        raise ValueError(
            "fsdp: true needs at least 2 processes to shard over, but this run has 1. Launch several "
            "(accelerate launch --config_file recipes/librispeech/accelerate/fsdp_8gpu.yaml ..., or torchrun "
            "--nproc_per_node N on CPUs), or set fsdp: false: one process holds the whole model anyway.")
    if accelerator.mixed_precision == "fp16":
        raise ValueError(
            "fsdp: true with mixed_precision: fp16 is not supported: the GradScaler would see only its own "
            "shard's overflows. Use mixed_precision: bf16 (or no).")
    if getattr(model.config, "layerdrop", 0.0) > 0:
        raise ValueError(
            f"fsdp: true with layerdrop={model.config.layerdrop}: each process draws its own layer skips, so the "
            "processes would gather different layers. Set layerdrop to 0 (pretraining: model_overrides: "
            "{layerdrop: 0.0}, as fairseq's LARGE/X-LARGE configs; fine-tuning: layerdrop: 0.0), or run without fsdp.")


def transformer_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's Transformer `EncoderLayer` modules, in order (the units sharded one by one)."""
    return [module for module in model.modules() if isinstance(module, EncoderLayer)]


def shard_model(model: torch.nn.Module, optimizer: torch.optim.Optimizer, accelerator: Accelerator,
                reshard_after_forward: bool = True) -> torch.nn.Module:
    """``fully_shard`` every Transformer layer, then the root; re-point ``optimizer`` at the shards.

    ``optimizer`` was built (and, on resume, loaded) over the whole model; its state, if any,
    is sharded the same way. The mixed precision is the accelerator's. Returns ``model`` itself (FSDP2
    changes it in place).
    """
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                         set_optimizer_state_dict)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    layers = transformer_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no EncoderLayer to shard; fsdp: true shards hfspeech models.")
    model.to(accelerator.device)
    names = parameter_names(model)
    order = [names[id(parameter)] for group in optimizer.param_groups for parameter in group["params"]]
    full_optimizer_state = None
    if optimizer.state:  # resumed: the loaded (whole) moments, keyed by parameter name
        full_optimizer_state = get_optimizer_state_dict(model, optimizer,
                                                        options=StateDictOptions(full_state_dict=True))
    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if accelerator.mixed_precision == "bf16" else MixedPrecisionPolicy())
    options = dict(mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward,
                   shard_placement_fn=lambda parameter: shard_dimension(parameter, accelerator.num_processes))
    for layer in layers:
        fully_shard(layer, **options)
    fully_shard(model, **options)
    sharded = dict(model.named_parameters())
    names_in_order = iter(order)
    for group in optimizer.param_groups:
        group["params"] = [sharded[next(names_in_order)] for _ in group["params"]]
    optimizer.state.clear()
    if full_optimizer_state is not None:
        set_optimizer_state_dict(model, optimizer, full_optimizer_state, options=StateDictOptions(full_state_dict=True))
    return model


def shard_dimension(parameter: torch.Tensor, world_size: int):
    """Split along dim 0, or along the longest dim where dim 0 is shorter than the world size (the
    quantizer's (1, G*V, D) codebook, the positional conv's (1, 1, K) weight-norm gain), so such a
    tensor is divided too instead of sitting whole on rank 0."""
    from torch.distributed.tensor import Shard

    if parameter.dim() == 0 or parameter.shape[0] >= world_size:
        return Shard(0)
    return Shard(max(range(parameter.dim()), key=lambda dim: parameter.shape[dim]))


def parameter_names(model: torch.nn.Module) -> dict[int, str]:
    """``id(parameter) -> name`` over ``model.named_parameters()``."""
    return {id(parameter): name for name, parameter in model.named_parameters()}


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def gradient_sync(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Reduce-scatter gradients in this backward (``enabled``) or keep accumulating them unsharded."""
    model.set_requires_gradient_sync(enabled)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def clip_gradients(parameters: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Scale sharded gradients so their global L2 norm is at most ``max_norm``; returns the norm before.

    The norm of the sharded (DTensor) gradients is reduced over all processes first, so
    every process scales by the same factor: the number ``clip_grad_norm_`` gives unsharded.
    ``max_norm=inf`` only measures (the factor is clamped to exactly 1).
    """
    from torch.distributed.tensor import DTensor

    parameters = [parameter for parameter in parameters if parameter.grad is not None]
    norm = torch.nn.utils.get_total_norm([parameter.grad for parameter in parameters])
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    if math.isfinite(float(norm)):
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm)
    return norm


def full_states(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
                ) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The whole model's state dict and the optimizer state in torch's unsharded layout (CPU, rank 0).

    Collective: every process must call it; the other ranks get empty dicts. The optimizer
    state uses ``optimizer.state_dict()``'s layout (parameters numbered in param-group
    order), so `save_checkpoint` writes the same files as an unsharded run.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    if isinstance(optimizer, AcceleratedOptimizer):
        optimizer = optimizer.optimizer
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    if optimizer is None:
        return model_state, None
    named = get_optimizer_state_dict(model, optimizer, options=options)
    if not named:
        return model_state, {}
    return model_state, numbered_optimizer_state(named, model, optimizer)


def numbered_optimizer_state(named: dict[str, Any], model: torch.nn.Module,
                             optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """torch.distributed.checkpoint's name-keyed optimizer state -> ``optimizer.state_dict()``'s numbered one."""
    names = parameter_names(model)
    number = {names[id(parameter)]: index for index, parameter in
              enumerate(parameter for group in optimizer.param_groups for parameter in group["params"])}
    groups = [{**group, "params": [number[name] for name in group["params"]]} for group in named["param_groups"]]
    return {"state": {number[name]: value for name, value in named["state"].items()}, "param_groups": groups}

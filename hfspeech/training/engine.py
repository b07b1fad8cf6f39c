"""The update core shared by pretraining and fine-tuning, under `accelerate`.

`pretrain_loop` and `finetune_loop` each read top to bottom as one flat loop::

    loop = TrainingLoop(model, optimizer, scheduler, args, accelerator, run_config, "pretrain")
    model = loop.prepare(batches_for_epoch)          # resume, compile, accelerate, data position
    for update in range(loop.start, args.max_steps):
        loop.update(update, forward)                 # one optimizer update (or a counted skip)
        if loop.due(update, args.eval_steps): loop.log_dev(update, evaluate(...))
        if loop.due(update, args.save_steps): loop.save(update)
    loop.finish(write_final)                         # final/ (atomically), push_to_hub

What the loop does, once for both:

* **Loss normalisation** (fairseq): every micro-batch's output carries a loss *sum* and the
  ``sample_size`` it sums over (scored frames; 1 for a CTC loss that is already a batch mean).
  Gradients accumulate unsynchronised over the micro-batches of an update, are all-reduced once,
  and are divided by the sample size summed over micro-batches *and* processes, so 1 process x 4
  accumulation steps and 4 processes x 1 give the same update.
* **Skipped updates**: an update whose loss or gradient norm is not finite (under fp16: a
  loss-scale overflow, after which the scale backs off), or with nothing to score, is skipped and
  counted; it advances neither the learning-rate schedule nor the model's update count (fairseq).
* **Metrics**: each output's ``metrics()`` maps a name to ``(sum, weight)``; the loop sums both
  over micro-batches and processes and reports ``sum / weight`` (the sum itself where the weight
  is None). The loop names no objective's metric.
* **Checkpoints**: ``output_dir/step-NNNNNNNN`` every ``save_steps`` (the newest
  ``keep_checkpoints`` kept) and ``output_dir/latest`` naming the newest; with ``resume`` a run
  continues from it exactly (data position, RNG, optimizer, scheduler and fp16 scaler states).
* **Logging**: a tqdm bar with the loss; TensorBoard ``train/*`` every ``logging_steps`` (with
  ``audio_seconds_per_second``), ``dev/*`` whenever the caller evaluates.
* **Sharding**: with ``args.fsdp`` the model is sharded with FSDP2 instead of replicated with DDP
  (`sharding`: after resuming, before compiling); saves gather the full states (`full_states`), so
  checkpoints and ``final/`` are the same files either way.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from .acceleration import compile_model, skip_scaled_update, uncompiled
from .checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint, write_directory_atomically
from .sharding import check_sharding, clip_gradients, full_states, gradient_sync, shard_model

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000

# batches_for_epoch(epoch) -> iterator of this process's micro-batches (dicts of tensors)
BatchFactory = Callable[[int], Iterator[dict[str, Any]]]
# forward(model, batch, update, micro_step) -> model output with .loss, .sample_size and .metrics()
Forward = Callable[[torch.nn.Module, dict[str, Any], int, int], Any]
# write_final(directory, state_dict): save the model there; state_dict is the gathered full one (None: the model's own)
FinalWriter = Callable[[Path, dict[str, torch.Tensor] | None], None]


class EpochStream:
    """Endless stream of micro-batches over epochs, with a resumable position."""

    def __init__(self, factory: BatchFactory, epoch: int = 0, position: int = 0) -> None:
        self.factory, self.epoch, self.position = factory, epoch, position
        self._iterator = self._open(skip=position)

    def _open(self, skip: int) -> Iterator[dict[str, Any]]:
        iterator = self.factory(self.epoch)
        for _ in range(skip):
            if next(iterator, None) is None:
                raise ValueError(f"Cannot resume: epoch {self.epoch} has fewer than {skip} batches now.")
        return iterator

    def next(self) -> dict[str, Any]:
        batch = next(self._iterator, None)
        if batch is None:
            self.epoch, self.position = self.epoch + 1, 0
            self._iterator = self._open(skip=0)
            batch = next(self._iterator, None)
            if batch is None:
                raise ValueError("The training data yields no batch: no usable utterances.")
        self.position += 1
        return batch


def build_optimizer(model: torch.nn.Module, learning_rate: float, weight_decay: float,
                    betas: tuple[float, float], eps: float) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; no weight decay on biases and norm weights (fairseq)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if parameter.dim() < 2 or "norm" in name else decay).append(parameter)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=learning_rate, betas=betas, eps=eps)


class MetricSums:
    """Sums of the outputs' ``(sum, weight)`` metrics over micro-batches, reduced over processes."""

    def __init__(self) -> None:
        self.totals: dict[str, list[torch.Tensor | None]] = {}

    def add(self, output) -> None:
        for name, (total, weight) in {"loss": (output.loss, output.sample_size), **output.metrics()}.items():
            total = torch.as_tensor(total).detach().float()
            weight = None if weight is None else torch.as_tensor(weight, device=total.device).detach().float()
            if name in self.totals:
                previous = self.totals[name]
                self.totals[name] = [previous[0] + total, None if weight is None else previous[1] + weight]
            else:
                self.totals[name] = [total, weight]

    def reduce(self, accelerator: Accelerator) -> dict[str, tuple[float, float | None]]:
        """``name -> (sum, weight)`` over every micro-batch of every process (one all-reduce)."""
        if not self.totals:
            return {}
        names = sorted(self.totals)
        flat = torch.stack([value for name in names for value in self.totals[name] if value is not None])
        flat = accelerator.reduce(flat, "sum").tolist()
        reduced, index = {}, 0
        for name in names:
            has_weight = self.totals[name][1] is not None
            reduced[name] = (flat[index], flat[index + 1] if has_weight else None)
            index += 2 if has_weight else 1
        return reduced


def averages(sums: dict[str, tuple[float, float | None]]) -> dict[str, float]:
    """``sum / weight`` per metric (0 where nothing was weighed; the sum where there is no weight)."""
    return {name: total if weight is None else (total / weight if weight else 0.0)
            for name, (total, weight) in sums.items()}


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}


class TrainingLoop:
    """Updates, checkpoints and logs of one run; see the module docstring.

    ``args`` needs ``output_dir``, ``max_steps``, ``gradient_accumulation_steps``, ``max_grad_norm``
    (0: no clipping, the norm is still measured), ``logging_steps``, ``keep_checkpoints``, ``resume``,
    ``torch_compile(_backend)``, ``fsdp(_reshard_after_forward)``, ``push_to_hub`` and
    ``hub_model_id``. ``state`` holds the caller's own
    counters to checkpoint (JSON values), restored on resume.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, args,
                 accelerator: Accelerator, run_config: dict[str, Any], description: str,
                 state: dict[str, Any] | None = None) -> None:
        self.model, self.optimizer, self.scheduler, self.args = model, optimizer, scheduler, args
        self.accelerator, self.run_config, self.description = accelerator, run_config, description
        self.output_dir = Path(args.output_dir)
        self.state: dict[str, Any] = {"epoch": 0, "position": 0, "skipped_updates": 0, **(state or {})}
        self.start = 0
        self.metrics: dict[str, float] = {}  # of the last applied update
        self.losses: list[float] = []  # per update of this process's run (nan where skipped)
        self.sharded = args.fsdp
        check_sharding(args.fsdp, accelerator, model)

    def prepare(self, batches_for_epoch: BatchFactory) -> torch.nn.Module:
        """Resume from ``output_dir/latest`` (with ``args.resume``), compile, hand the model and optimizer
        to accelerate, open the data at its position; returns the model to call."""
        checkpoint = latest_checkpoint(self.output_dir) if self.args.resume else None
        if checkpoint is not None:
            self.state.update(load_checkpoint(checkpoint, self.model, self.optimizer, self.scheduler, self.run_config,
                                              scaler=self.accelerator.scaler))
            self.start = self.state.pop("step")
            logger.info("Resuming from %s (update %d).", checkpoint, self.start)
        self.state.setdefault("model_updates", self.start)  # updates applied: skipped ones do not count
        if self.sharded:  # FSDP2 in place of DDP: accelerate prepares the optimizer only
            self.unwrapped = shard_model(self.model, self.optimizer, self.accelerator,
                                         self.args.fsdp_reshard_after_forward)
            self.model = compile_model(self.unwrapped, self.args.torch_compile, self.args.torch_compile_backend)
            self.optimizer = self.accelerator.prepare(self.optimizer)
        else:
            model = compile_model(self.model, self.args.torch_compile, self.args.torch_compile_backend)
            self.model, self.optimizer = self.accelerator.prepare(model, self.optimizer)
            self.unwrapped = uncompiled(self.accelerator, self.model)
        self.unwrapped.set_num_updates(self.state["model_updates"])
        self.stream = EpochStream(batches_for_epoch, self.state["epoch"], self.state["position"])
        self.writer = None
        if self.accelerator.is_main_process:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.output_dir / "tensorboard"))
        self.progress = tqdm(total=self.args.max_steps, initial=self.start, desc=self.description,
                             disable=not self.accelerator.is_main_process)
        return self.model

    def update(self, update: int, forward: Forward) -> bool:
        """Run update ``update`` (0-based) over ``gradient_accumulation_steps`` micro-batches; False if skipped."""
        args, accelerator, model = self.args, self.accelerator, self.model
        model.train()
        began = time.perf_counter()
        sums, audio_seconds = MetricSums(), 0.0
        for micro_step in range(args.gradient_accumulation_steps):
            batch = to_device(self.stream.next(), accelerator.device)
            last = micro_step == args.gradient_accumulation_steps - 1
            if self.sharded:
                synchronising = gradient_sync(self.unwrapped, enabled=last)
            else:
                synchronising = contextlib.nullcontext() if last else accelerator.no_sync(model)
            with synchronising, accelerator.autocast():
                output = forward(model, batch, update, micro_step)
                accelerator.backward(output.loss)
            sums.add(output)
            mask = batch.get("attention_mask")
            audio_seconds += float(mask.sum() if mask is not None else batch["input_values"].numel()) / SAMPLE_RATE
        reduced = sums.reduce(accelerator)
        loss_sum, sample_size = reduced["loss"]
        finite, unscaled, grad_norm = math.isfinite(loss_sum), False, math.nan
        if sample_size > 0 and finite:
            scale = accelerator.num_processes / sample_size  # DDP/FSDP averaged over processes; undo, then / size
            parameters = [p for p in model.parameters() if p.grad is not None]
            for parameter in parameters:
                parameter.grad.mul_(scale)
            # unscales fp16 gradients first; max_norm=inf only measures (the factor is clamped to exactly 1)
            max_norm = args.max_grad_norm if args.max_grad_norm > 0 else math.inf
            clip = clip_gradients if self.sharded else accelerator.clip_grad_norm_
            grad_norm = float(clip(parameters, max_norm))
            unscaled, finite = True, math.isfinite(grad_norm)
        applied = finite and sample_size > 0
        if applied:
            self.optimizer.step()
            self.scheduler.step()
            self.state["model_updates"] = update + 1
            self.unwrapped.set_num_updates(update + 1)
            self.metrics = {**averages(reduced), "grad_norm": grad_norm, "lr": self.scheduler.get_last_lr()[0],
                            "audio_seconds_per_second": audio_seconds * accelerator.num_processes /
                            (time.perf_counter() - began)}
            self.progress.set_postfix(loss=f"{self.metrics['loss']:.3f}")
            if self.writer is not None and (update + 1) % args.logging_steps == 0:
                for key, value in self.metrics.items():
                    self.writer.add_scalar(f"train/{key}", value, update + 1)
        else:
            self.state["skipped_updates"] += 1
            skip_scaled_update(accelerator, unscaled, overflow=not finite)
            logger.warning("Update %d skipped (loss or gradient not finite, or nothing to score)%s.", update + 1,
                           f"; fp16 loss scale now {accelerator.scaler.get_scale():g}" if accelerator.scaler else "")
        self.losses.append(loss_sum / sample_size if applied else math.nan)
        self.optimizer.zero_grad(set_to_none=True)
        self.progress.update(1)
        self.state.update(epoch=self.stream.epoch, position=self.stream.position)
        return applied

    def due(self, update: int, every: int) -> bool:
        """Whether something done every ``every`` updates is due after update ``update`` (and after the last)."""
        return (update + 1) % every == 0 or update + 1 == self.args.max_steps

    def log_dev(self, update: int, metrics: dict[str, float]) -> None:
        """Log held-out metrics after update ``update`` (TensorBoard ``dev/*`` and one log line)."""
        logger.info("update %d: dev %s", update + 1, ", ".join(f"{key} {value:.4f}" for key, value in metrics.items()))
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(f"dev/{key}", value, update + 1)

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The model's whole state dict gathered from its shards (on the main process; collective: every
        process calls it), or None when the model is not sharded (its own ``state_dict()`` is whole)."""
        return full_states(self.unwrapped)[0] if self.sharded else None

    def save(self, update: int) -> None:
        """Checkpoint after update ``update`` (main process; every process waits for it)."""
        self.accelerator.wait_for_everyone()
        model_state, optimizer_state = full_states(self.unwrapped, self.optimizer) if self.sharded else (None, None)
        if self.accelerator.is_main_process:
            save_checkpoint(self.output_dir, update + 1, self.unwrapped, self.optimizer, self.scheduler, self.state,
                            self.run_config, keep=self.args.keep_checkpoints, scaler=self.accelerator.scaler,
                            model_state=model_state, optimizer_state=optimizer_state)

    def finish(self, write_final: FinalWriter) -> None:
        """Close the logs; the main process writes ``output_dir/final`` with ``write_final(directory, state_dict)``
        (atomically; `full_state_dict`) and pushes it when ``args.push_to_hub``."""
        self.progress.close()
        if self.writer is not None:
            self.writer.close()
        self.accelerator.wait_for_everyone()
        state_dict = self.full_state_dict()
        if self.accelerator.is_main_process:
            write_directory_atomically(self.output_dir / "final", lambda directory: write_final(directory, state_dict))
            if self.args.push_to_hub:  # the complete final/ + model card (token: HF_TOKEN or `hf auth login`)
                from ..sharing import push_model_directory

                push_model_directory(self.output_dir / "final", self.args.hub_model_id or self.output_dir.name)

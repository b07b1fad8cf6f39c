"""The pretraining update loop, for both objectives, under `accelerate`.

Loss normalisation follows fairseq: every micro-batch's objective returns a *sum* over
its scored frames and the number of those frames (``sample_size``); gradients are
accumulated unsynchronised over the micro-batches of an update, all-reduced once, and
divided by the sample size summed over micro-batches *and* processes. So 1 process x 4
accumulation steps and 4 processes x 1 give the same update.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from .acceleration import (check_mixed_precision, compile_model, enable_fp16_on_cpu, reuse_freed_memory,
                           skip_scaled_update, uncompiled)
from .arguments import PretrainingArguments
from .checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint, write_directory_atomically
from .schedules import build_scheduler

logger = logging.getLogger(__name__)

# batches_for_epoch(epoch) -> iterator of this process's micro-batches (dicts of tensors)
BatchFactory = Callable[[int], Iterator[dict[str, Any]]]


def micro_batch_seed(seed: int, update: int, micro_step: int, rank: int, num_processes: int, accumulation: int) -> int:
    """Seed of one micro-batch's masks/negatives, identical for the same global batch index.

    Batch b of an update is micro-step ``b // num_processes`` of rank ``b % num_processes``
    (the data is dealt to ranks round-robin), so the index is the same however the
    update is split between processes and accumulation steps.
    """
    global_index = update * num_processes * accumulation + micro_step * num_processes + rank
    return (seed * 1_000_003 + global_index * 7919) % (2**63 - 1)


class _EpochStream:
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


def build_optimizer(model: torch.nn.Module, args: PretrainingArguments) -> torch.optim.Optimizer:
    """Adam(W) with fairseq's betas/eps; no weight decay on biases and norm weights."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.dim() < 2 or "norm" in name else decay).append(parameter)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
    )


def run_pretraining(model, batches_for_epoch: BatchFactory, args: PretrainingArguments,
                    accelerator: Accelerator | None = None, dev_batches: BatchFactory | None = None) -> dict[str, Any]:
    """Train ``model`` (a `SpeechEncoderForPreTraining`) for ``args.max_steps`` updates.

    With ``dev_batches`` (`build_dev_batches`), the objective is also scored on held-out audio
    every ``args.eval_steps`` updates and at the end (``dev/...`` in TensorBoard, ``dev_metrics``
    in the result: HuBERT masked-frame accuracy, wav2vec 2.0 contrastive accuracy).

    Returns the loop's final state (step, skipped updates, last metrics). Checkpoints go to
    ``args.output_dir`` every ``args.save_steps``; with ``args.resume`` the loop continues
    from ``output_dir/latest`` exactly (same data position, RNG, optimizer and fp16 scaler
    state). An update whose loss or gradient norm is not finite (under fp16: a loss-scale
    overflow, after which the scale is backed off) is skipped and counted.
    """
    from accelerate import DistributedDataParallelKwargs

    check_mixed_precision(args.mixed_precision)
    reuse_freed_memory()  # steps reuse the previous step's pages (no fresh-page faults)
    if accelerator is None:
        accelerator = Accelerator(
            mixed_precision=args.mixed_precision,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=model.config.layerdrop > 0)],
        )
    enable_fp16_on_cpu(accelerator)
    output_dir = Path(args.output_dir)
    torch.manual_seed(args.seed)
    optimizer = build_optimizer(model, args)
    scheduler = build_scheduler(optimizer, "polynomial", args.max_steps, warmup_ratio=args.warmup_ratio)
    run_config = dataclasses.asdict(args)
    state: dict[str, Any] = {"epoch": 0, "position": 0, "skipped_updates": 0}
    start = 0
    checkpoint = latest_checkpoint(output_dir) if args.resume else None
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model, optimizer, scheduler, run_config, scaler=accelerator.scaler)
        start = state.pop("step")
        logger.info("Resuming from %s (update %d).", checkpoint, start)
    model_updates = state.pop("model_updates", start)  # updates applied: skipped ones do not anneal
    earlier_updates = model.config.num_pretraining_updates or 0  # a model directory that was pretrained before
    model = compile_model(model, args.torch_compile, args.torch_compile_backend)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = uncompiled(accelerator, model)
    unwrapped.set_num_updates(model_updates)
    stream = _EpochStream(batches_for_epoch, state["epoch"], state["position"])
    writer = _summary_writer(output_dir, accelerator)
    parameters = [p for p in model.parameters() if p.requires_grad]
    progress = tqdm(total=args.max_steps, initial=start, disable=not accelerator.is_main_process, desc="pretrain")
    metrics: dict[str, float] = {}
    for update in range(start, args.max_steps):
        model.train()
        began = time.perf_counter()
        totals: dict[str, torch.Tensor] = {}
        audio_seconds = 0.0
        for micro_step in range(args.gradient_accumulation_steps):
            batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in stream.next().items()}
            generator = torch.Generator(device=accelerator.device).manual_seed(micro_batch_seed(
                args.seed, update, micro_step, accelerator.process_index, accelerator.num_processes,
                args.gradient_accumulation_steps))
            last = micro_step == args.gradient_accumulation_steps - 1
            sync = contextlib.nullcontext() if last else accelerator.no_sync(model)
            with sync, accelerator.autocast():
                output = model(**batch, generator=generator)
                accelerator.backward(output.loss)
            _accumulate(totals, output)
            mask = batch.get("attention_mask")
            audio_seconds += float(mask.sum() if mask is not None else batch["input_values"].numel()) / 16000
        summed = {key: accelerator.reduce(value.detach().float(), "sum") for key, value in totals.items()}
        sample_size = float(summed["sample_size"])
        finite = math.isfinite(float(summed["loss"]))
        unscaled = False
        if sample_size > 0 and finite:
            scale = accelerator.num_processes / sample_size  # DDP averaged over processes; undo, then / frames
            for parameter in parameters:
                if parameter.grad is not None:
                    parameter.grad.mul_(scale)
            # unscales fp16 gradients first; max_norm=inf only measures (the factor is clamped to exactly 1)
            grad_norm = accelerator.clip_grad_norm_(parameters, args.max_grad_norm if args.max_grad_norm > 0 else math.inf)
            unscaled = True
            finite = math.isfinite(float(grad_norm))
        if not finite or sample_size == 0:
            state["skipped_updates"] += 1
            skip_scaled_update(accelerator, unscaled, overflow=not finite)
            logger.warning("Update %d skipped (loss or gradient not finite, or no masked frame)%s.", update + 1,
                           f"; fp16 loss scale now {accelerator.scaler.get_scale():g}" if accelerator.scaler else "")
        else:
            optimizer.step()
            scheduler.step()
            model_updates = update + 1
            unwrapped.set_num_updates(model_updates)
            metrics = _metrics(summed, grad_norm, scheduler, unwrapped, audio_seconds * accelerator.num_processes,
                               time.perf_counter() - began)
            progress.set_postfix(loss=f"{metrics['loss']:.3f}")
            if writer is not None and (update + 1) % args.logging_steps == 0:
                for key, value in metrics.items():
                    writer.add_scalar(f"train/{key}", value, update + 1)
        optimizer.zero_grad(set_to_none=True)
        progress.update(1)
        state.update(epoch=stream.epoch, position=stream.position, model_updates=model_updates)
        if dev_batches is not None and ((update + 1) % args.eval_steps == 0 or update + 1 == args.max_steps):
            dev_metrics = evaluate_pretraining(model, dev_batches, accelerator, args.seed)
            logger.info("update %d: dev %s", update + 1, ", ".join(f"{key} {value:.4f}" for key, value in
                                                                    dev_metrics.items() if key != "masked_frames"))
            if writer is not None:
                for key, value in dev_metrics.items():
                    writer.add_scalar(f"dev/{key}", value, update + 1)
            state["dev_metrics"] = dev_metrics
        if (update + 1) % args.save_steps == 0 or update + 1 == args.max_steps:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                unwrapped.config.num_pretraining_updates = earlier_updates + model_updates
                save_checkpoint(output_dir, update + 1, unwrapped, optimizer, scheduler, state, run_config,
                                keep=args.keep_checkpoints, scaler=accelerator.scaler)
    progress.close()
    if writer is not None:
        writer.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        from ..sharing.training_files import copy_label_kmeans, write_training_config

        unwrapped.config.num_pretraining_updates = earlier_updates + model_updates

        def write_final(directory: Path) -> None:
            unwrapped.save_pretrained(directory)
            write_training_config(directory, run_config)
            if args.labels:  # HuBERT: the k-means behind the labels travel with the model
                copy_label_kmeans(args.labels, directory)

        write_directory_atomically(output_dir / "final", write_final)
        if args.push_to_hub:  # the complete final/ directory + model card (token: HF_TOKEN or `hf auth login`)
            from ..sharing import push_model_directory

            push_model_directory(output_dir / "final", args.hub_model_id or output_dir.name)
    return {"step": args.max_steps, **state, "metrics": metrics}


def _accumulate(totals: dict[str, torch.Tensor], output) -> None:
    sample_size = output.get("sample_size")
    if sample_size is None:
        sample_size = output["num_masked"]
    values = {"loss": output.loss, "sample_size": sample_size}
    for key in ("contrastive_loss", "diversity_loss", "masked_loss", "unmasked_loss", "num_masked"):
        if output.get(key) is not None:
            values[key] = output[key]
    for key in ("accuracy", "codevector_perplexity"):  # per-batch averages: weight by sample size
        if output.get(key) is not None:
            values[key] = output[key] * sample_size
    for key, count in (("masked_accuracy", "num_masked"), ("unmasked_accuracy", "num_unmasked")):
        if output.get(key) is not None:  # HuBERT: one accuracy per label set
            for index, accuracy in enumerate(output[key]):
                values[f"{key}_{index}"] = accuracy * output[count]
    if output.get("num_unmasked") is not None:
        values["num_unmasked"] = output["num_unmasked"]
    for key, value in values.items():
        value = value.detach().float()
        totals[key] = totals[key] + value if key in totals else value


def _metrics(summed: dict[str, torch.Tensor], grad_norm, scheduler, model, audio_seconds: float,
             seconds: float) -> dict[str, float]:
    metrics = {**_objective_metrics(summed), "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0],
               "audio_seconds_per_second": audio_seconds / seconds}
    temperature = getattr(getattr(getattr(model, "objective", None), "quantizer", None), "temperature", None)
    if temperature is not None:
        metrics["gumbel_temperature"] = float(temperature)
    return metrics


def _objective_metrics(summed: dict[str, torch.Tensor]) -> dict[str, float]:
    """Loss per scored frame and the objective's metrics from sums over micro-batches (and processes)."""
    sample_size = float(summed["sample_size"])
    metrics = {"loss": float(summed["loss"]) / sample_size,
               "masked_frames": float(summed.get("num_masked", summed["sample_size"]))}
    for key in ("contrastive_loss", "diversity_loss", "masked_loss", "unmasked_loss", "accuracy", "codevector_perplexity"):
        if key in summed:
            metrics[key] = float(summed[key]) / sample_size
    for key, value in summed.items():
        if key.startswith("masked_accuracy_"):
            metrics[key] = float(value) / max(1.0, float(summed["num_masked"]))
        elif key.startswith("unmasked_accuracy_"):
            metrics[key] = float(value) / max(1.0, float(summed["num_unmasked"]))
    return metrics


@torch.no_grad()
def evaluate_pretraining(model, dev_batches: BatchFactory, accelerator: Accelerator, seed: int) -> dict[str, float]:
    """The objective's loss and accuracies on held-out audio, in eval mode (no dropout).

    Batch i is masked with a generator seeded ``seed + i``, so every evaluation of a run scores
    the same masked frames (and the same wav2vec 2.0 negatives).
    """
    model.eval()
    totals: dict[str, torch.Tensor] = {}
    for index, batch in enumerate(dev_batches(0)):
        batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        generator = torch.Generator(device=accelerator.device).manual_seed(seed + index)
        _accumulate(totals, model(**batch, generator=generator))
    if not totals:
        raise ValueError("The dev data yields no batch: no held-out utterance is long enough.")
    return _objective_metrics({key: accelerator.reduce(value, "sum") for key, value in totals.items()})


def _summary_writer(output_dir: Path, accelerator: Accelerator):
    if not accelerator.is_main_process:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(output_dir / "tensorboard"))

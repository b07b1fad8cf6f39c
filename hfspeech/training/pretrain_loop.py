"""Pretraining, for both objectives: one flat loop over `TrainingLoop` updates (``engine``), the
objective scored on held-out audio every ``eval_steps``, ``final/`` written at the end.

Masks, wav2vec 2.0 negatives and dropout of each micro-batch are drawn after seeding torch
with the micro-batch's global index (`micro_batch_seed`, `seeded_forward`), so 1 process x 4
accumulation steps and 4 processes x 1 draw the same masks, and a resumed run draws what the
uninterrupted one did.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from .acceleration import check_mixed_precision, enable_fp16_on_cpu, make_accelerator, reuse_freed_memory
from .arguments import PretrainingArguments
from .engine import BatchFactory, MetricSums, TrainingLoop, averages, build_optimizer, to_device
from .schedules import build_scheduler


def micro_batch_seed(seed: int, update: int, micro_step: int, rank: int, num_processes: int, accumulation: int) -> int:
    """Seed of one micro-batch's masks/negatives, identical for the same global batch index.

    Batch b of an update is micro-step ``b // num_processes`` of rank ``b % num_processes``
    (the data is dealt to ranks round-robin), so the index is the same however the
    update is split between processes and accumulation steps.
    """
    global_index = update * num_processes * accumulation + micro_step * num_processes + rank
    return (seed * 1_000_003 + global_index * 7919) % (2**63 - 1)


def run_pretraining(model, batches_for_epoch: BatchFactory, args: PretrainingArguments,
                    accelerator: Accelerator | None = None, dev_batches: BatchFactory | None = None) -> dict[str, Any]:
    """Train ``model`` (a `SpeechEncoderForPreTraining`) for ``args.max_steps`` updates (see `TrainingLoop`).

    With ``dev_batches`` (`build_dev_batches`), the objective is also scored on held-out audio
    every ``args.eval_steps`` updates and at the end (``dev/...`` in TensorBoard, ``dev_metrics``
    in the result: HuBERT masked-frame accuracy, wav2vec 2.0 contrastive accuracy).

    Returns the loop's final state (step, skipped updates, last metrics, per-update losses). ``output_dir/final`` is the
    pretrained model (with the k-means behind HuBERT labels), loadable with ``from_pretrained``.
    """
    check_mixed_precision(args.mixed_precision)
    reuse_freed_memory()  # steps reuse the previous step's pages (no fresh-page faults)
    if accelerator is None:
        accelerator = make_accelerator(args.mixed_precision, find_unused_parameters=model.config.layerdrop > 0)
    enable_fp16_on_cpu(accelerator)
    torch.manual_seed(args.seed)
    optimizer = build_optimizer(model, args.learning_rate, args.weight_decay, (args.adam_beta1, args.adam_beta2),
                                args.adam_epsilon)
    scheduler = build_scheduler(optimizer, "polynomial", args.max_steps, warmup_ratio=args.warmup_ratio)
    run_config = dataclasses.asdict(args)
    earlier_updates = model.config.num_pretraining_updates or 0  # a model directory that was pretrained before
    loop = TrainingLoop(model, optimizer, scheduler, args, accelerator, run_config, "pretrain")
    model = loop.prepare(batches_for_epoch)

    def forward(model, batch: dict[str, Any], update: int, micro_step: int):
        return seeded_forward(model, batch, micro_batch_seed(
            args.seed, update, micro_step, accelerator.process_index, accelerator.num_processes,
            args.gradient_accumulation_steps))

    for update in range(loop.start, args.max_steps):
        loop.update(update, forward)
        if dev_batches is not None and loop.due(update, args.eval_steps):
            loop.state["dev_metrics"] = evaluate_pretraining(model, dev_batches, accelerator, args.seed)
            loop.log_dev(update, loop.state["dev_metrics"])
        if loop.due(update, args.save_steps):
            loop.unwrapped.config.num_pretraining_updates = earlier_updates + loop.state["model_updates"]
            loop.save(update)

    def write_final(directory: Path, state_dict: dict[str, torch.Tensor] | None) -> None:
        from ..sharing.training_files import copy_label_kmeans, write_training_config

        loop.unwrapped.config.num_pretraining_updates = earlier_updates + loop.state["model_updates"]
        loop.unwrapped.save_pretrained(directory, state_dict=state_dict)
        write_training_config(directory, run_config)
        if args.labels:  # HuBERT: the k-means behind the labels travel with the model
            copy_label_kmeans(args.labels, directory)

    loop.finish(write_final)
    return {"step": args.max_steps, **loop.state, "metrics": loop.metrics, "train_losses": loop.losses}


def seeded_forward(model, batch: dict[str, Any], seed: int):
    """``model(**batch)`` with its masks, negatives, Gumbel noise and dropout drawn from ``seed``.

    The default generators are seeded with ``seed`` rather than a ``generator`` argument
    passed: dynamo cannot trace a Generator (every draw would break a compiled graph), and
    this way compiled and eager runs draw alike (exactly so on eager kernels; inductor
    generates its own random numbers from the same seed).
    """
    torch.manual_seed(seed)
    return model(**batch)


@torch.no_grad()
def evaluate_pretraining(model, dev_batches: BatchFactory, accelerator: Accelerator, seed: int) -> dict[str, float]:
    """The objective's loss and accuracies on held-out audio, in eval mode (no dropout).

    Batch i is masked after seeding torch with ``seed + i``, so every evaluation of a run scores
    the same masked frames (and the same wav2vec 2.0 negatives).
    """
    model.eval()
    sums = MetricSums()
    for index, batch in enumerate(dev_batches(0)):
        sums.add(seeded_forward(model, to_device(batch, accelerator.device), seed + index))
    if not sums.totals:
        raise ValueError("The dev data yields no batch: no held-out utterance is long enough.")
    return averages(sums.reduce(accelerator))

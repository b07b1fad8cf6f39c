"""CTC fine-tuning under `accelerate`: frozen feature encoder, backbone frozen for the first
updates, SpecAugment, tri-stage LR, periodic dev WER/CER, best checkpoint kept.

The result is a complete model directory (model + feature extractor + tokenizer) that
``transformers.pipeline("automatic-speech-recognition", model=DIR)`` loads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import json
import math
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data import CTCCollator, DurationBucketBatchSampler, TextNormalizer
from ..modeling.models import SpeechEncoderForCTC
from ..processing import CharacterCTCTokenizer, SpeechFeatureExtractor, SpeechProcessor
from .acceleration import (check_mixed_precision, compile_model, enable_fp16_on_cpu, reuse_freed_memory,
                           skip_scaled_update, uncompiled)
from .arguments import FinetuningArguments, load_sources
from .checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint, write_directory_atomically
from .pretrain_loop import _EpochStream, _summary_writer
from .schedules import build_scheduler

logger = logging.getLogger(__name__)


def build_processor(model_dir: str, transcripts: list[str], tokenizer_dir: str = "") -> SpeechProcessor:
    """The tokenizer of ``tokenizer_dir`` if given, else the model directory's if it has one, else
    one built from the transcripts."""
    if tokenizer_dir:
        if not (Path(tokenizer_dir) / "vocab.json").exists():
            raise FileNotFoundError(
                f"tokenizer={tokenizer_dir!r} has no vocab.json; give a directory written by "
                "CharacterCTCTokenizer.save_pretrained (or a fine-tuned model directory), or leave tokenizer empty "
                "to build one from the training transcripts.")
        return SpeechProcessor(SpeechFeatureExtractor(), CharacterCTCTokenizer.from_pretrained(tokenizer_dir))
    if (Path(model_dir) / "vocab.json").exists():
        return SpeechProcessor(SpeechFeatureExtractor(), CharacterCTCTokenizer.from_pretrained(model_dir))
    return SpeechProcessor(SpeechFeatureExtractor(), CharacterCTCTokenizer.from_transcripts(transcripts))


def greedy_transcribe(model: SpeechEncoderForCTC, processor: SpeechProcessor, batch: dict[str, torch.Tensor]) -> list[str]:
    """Greedy CTC transcriptions of a collated batch (B utterances)."""
    with torch.no_grad():
        logits = model(input_values=batch["input_values"], attention_mask=batch["attention_mask"]).logits
    frames = model.frame_lengths(batch["attention_mask"].sum(-1))
    ids = logits.argmax(-1)
    return [processor.tokenizer.decode(ids[row, : frames[row]].tolist(), skip_special_tokens=True) for row in range(len(ids))]


def evaluate_wer(model, processor, loader, accelerator: Accelerator) -> dict[str, float]:
    """Greedy WER/CER over a dev loader (every process scores its shard; counts are summed)."""
    from ..decoding.wer import error_report

    model.eval()
    references, hypotheses = [], []
    for batch in loader:
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        hypotheses += greedy_transcribe(accelerator.unwrap_model(model), processor, batch)
        references += processor.tokenizer.batch_decode(
            [[i for i in row.tolist() if i >= 0] for row in batch["labels"]], group_tokens=False, skip_special_tokens=True)
    report = error_report(references, hypotheses)
    counts = torch.tensor([report.words.errors, report.words.reference_length, report.chars.errors,
                           report.chars.reference_length], dtype=torch.float64, device=accelerator.device)
    counts = accelerator.reduce(counts, "sum")
    return {"wer": float(counts[0] / counts[1]), "cer": float(counts[2] / counts[3])}


def run_finetuning(args: FinetuningArguments, accelerator: Accelerator | None = None) -> dict[str, Any]:
    """Fine-tune ``args.model`` with CTC on ``args.train_data``; returns the final/best dev metrics.

    An update whose loss or gradient norm is not finite (under fp16: a loss-scale overflow,
    after which the scale is backed off) is skipped and counted (``skipped_updates``).
    """
    check_mixed_precision(args.mixed_precision)
    reuse_freed_memory()  # steps reuse the previous step's pages (no fresh-page faults)
    if accelerator is None:
        accelerator = Accelerator(mixed_precision=args.mixed_precision, kwargs_handlers=[
            DistributedDataParallelKwargs(find_unused_parameters=True)])  # frozen phase + layerdrop
    enable_fp16_on_cpu(accelerator)
    output_dir = Path(args.output_dir)
    torch.manual_seed(args.seed)
    normalizer = TextNormalizer()
    train = load_sources(args.train_data, args.train_split)
    if "text" not in train.column_names:
        raise ValueError(f"{args.train_data} has no transcripts: CTC fine-tuning needs labeled audio.")
    transcripts = [normalizer(text, utterance_id) for text, utterance_id in zip(train["text"], train["id"])]
    processor = build_processor(args.model, transcripts, args.tokenizer)
    tokenizer = processor.tokenizer
    model = SpeechEncoderForCTC.from_pretrained(
        args.model, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        mask_time_prob=args.mask_time_prob, mask_time_length=args.mask_time_length,
        mask_feature_prob=args.mask_feature_prob, mask_feature_length=args.mask_feature_length,
        layerdrop=args.layerdrop, final_dropout=args.final_dropout, activation_dropout=args.activation_dropout, apply_spec_augment=True,
        ctc_loss_reduction="mean",
    )
    if args.freeze_feature_encoder:
        model.freeze_feature_encoder()
    collator = CTCCollator(tokenizer=tokenizer, feature_extractor=None, text_normalizer=normalizer)
    sampler = DurationBucketBatchSampler(
        train["duration"], args.max_batch_seconds, seed=args.seed, num_replicas=accelerator.num_processes,
        rank=accelerator.process_index, ids=train["id"])
    dev_loader = None
    if args.dev_data:
        dev = load_sources(args.dev_data, args.dev_split)
        dev_sampler = DurationBucketBatchSampler(
            dev["duration"], args.max_batch_seconds, shuffle=False, num_replicas=accelerator.num_processes,
            rank=accelerator.process_index, uneven="drop" if accelerator.num_processes > 1 else "pad", ids=dev["id"])
        dev_loader = DataLoader(dev, batch_sampler=dev_sampler, collate_fn=collator)

    def batches_for_epoch(epoch: int):
        sampler.set_epoch(epoch)
        return iter(DataLoader(train, batch_sampler=sampler, collate_fn=collator))

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.learning_rate,
                                  betas=(0.9, 0.98), eps=1e-8, weight_decay=0.0)
    scheduler = build_scheduler(optimizer, "tri_stage", args.max_steps)
    run_config = dataclasses.asdict(args)
    state: dict[str, Any] = {"epoch": 0, "position": 0, "best_wer": None, "skipped_updates": 0}
    start = 0
    checkpoint = latest_checkpoint(output_dir / "checkpoints")
    if checkpoint is not None:
        state = {"skipped_updates": 0, **load_checkpoint(checkpoint, model, optimizer, scheduler, run_config,
                                                         scaler=accelerator.scaler)}
        start = state.pop("step")
    model = compile_model(model, args.torch_compile, args.torch_compile_backend)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = uncompiled(accelerator, model)
    stream = _EpochStream(batches_for_epoch, state["epoch"], state["position"])
    writer = _summary_writer(output_dir, accelerator)
    progress = tqdm(total=args.max_steps, initial=start, disable=not accelerator.is_main_process, desc="finetune")
    metrics: dict[str, float] = {}
    losses: list[float] = []
    for update in range(start, args.max_steps):
        model.train()
        unwrapped.backbone_frozen = update < args.freeze_transformer_steps
        total_loss = 0.0
        for micro_step in range(args.gradient_accumulation_steps):
            batch = {k: v.to(accelerator.device) for k, v in stream.next().items()}
            last = micro_step == args.gradient_accumulation_steps - 1
            with contextlib.nullcontext() if last else accelerator.no_sync(model), accelerator.autocast():
                loss = model(**batch).loss / args.gradient_accumulation_steps
                accelerator.backward(loss)
            total_loss += float(loss.detach())
        losses.append(total_loss)
        finite, unscaled, grad_norm = math.isfinite(total_loss), False, math.nan
        if finite:  # unscales fp16 gradients first; max_norm=inf only measures (the factor is clamped to exactly 1)
            grad_norm = float(accelerator.clip_grad_norm_(
                model.parameters(), args.max_grad_norm if args.max_grad_norm > 0 else math.inf))
            unscaled, finite = True, math.isfinite(grad_norm)
        if finite:
            optimizer.step()
        else:
            state["skipped_updates"] += 1
            skip_scaled_update(accelerator, unscaled, overflow=True)
            logger.warning("Update %d skipped (loss or gradient not finite)%s.", update + 1,
                           f"; fp16 loss scale now {accelerator.scaler.get_scale():g}" if accelerator.scaler else "")
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        progress.update(1)
        progress.set_postfix(loss=f"{total_loss:.3f}")
        if writer is not None and (update + 1) % args.logging_steps == 0:
            writer.add_scalar("train/ctc_loss", total_loss, update + 1)
            writer.add_scalar("train/lr", scheduler.get_last_lr()[0], update + 1)
            writer.add_scalar("train/grad_norm", grad_norm, update + 1)
        state.update(epoch=stream.epoch, position=stream.position)
        if dev_loader is not None and ((update + 1) % args.eval_steps == 0 or update + 1 == args.max_steps):
            metrics = evaluate_wer(model, processor, dev_loader, accelerator)
            logger.info("update %d: dev WER %.2f%% CER %.2f%%", update + 1, 100 * metrics["wer"], 100 * metrics["cer"])
            if writer is not None:
                writer.add_scalar("dev/wer", metrics["wer"], update + 1)
                writer.add_scalar("dev/cer", metrics["cer"], update + 1)
            if accelerator.is_main_process and (state["best_wer"] is None or metrics["wer"] < state["best_wer"]):
                state["best_wer"] = metrics["wer"]
                _save_model_directory(unwrapped, processor, output_dir / "best", metrics, run_config)
        if (update + 1) % args.save_steps == 0 or update + 1 == args.max_steps:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                save_checkpoint(output_dir / "checkpoints", update + 1, unwrapped, optimizer, scheduler, state, run_config,
                                scaler=accelerator.scaler)
    progress.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped.backbone_frozen = False
        _save_model_directory(unwrapped, processor, output_dir / "final", metrics, run_config)
        if args.push_to_hub:  # the complete final/ directory + model card (token: HF_TOKEN or `hf auth login`)
            from ..sharing import push_model_directory

            push_model_directory(output_dir / "final", args.hub_model_id or output_dir.name)
    return {"final": metrics, "best_wer": state["best_wer"], "skipped_updates": state["skipped_updates"],
            "train_losses": losses}


def _save_model_directory(model, processor: SpeechProcessor, directory: Path, metrics: dict[str, float],
                          run_config: dict[str, Any]) -> None:
    from ..sharing.training_files import write_training_config

    def write(temporary: Path) -> None:
        model.save_pretrained(temporary)
        processor.save_pretrained(temporary)
        (temporary / "dev_metrics.json").write_text(json.dumps(metrics, indent=2))
        write_training_config(temporary, run_config)

    write_directory_atomically(directory, write)

"""CTC fine-tuning under `accelerate`: frozen feature encoder, backbone frozen for the first
updates, SpecAugment, speed perturbation, tri-stage LR, periodic dev WER/CER, the best model
kept, early stopping and averaging of the best evaluations.

``model`` is a pretrained model directory, or a preset name for training from a random
initialisation; a model without pretraining is never frozen (a frozen random encoder gives
the CTC head nothing to learn from). The dev WER is the greedy decoding of ``hfspeech
evaluate`` (`GreedyCTCDecoder`). The result is a complete model directory (model + feature
extractor + tokenizer) that ``transformers.pipeline("automatic-speech-recognition", model=DIR)``
loads.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator

from ..configuration import PRESET_NAMES, SpeechEncoderConfig
from ..data import (BatchSeeds, CTCCollator, DurationBucketBatchSampler, TextNormalizer, normalize_waveform, pad_waveforms, plain_column,
                    verify_sources)
from ..data.augmentation import SpeedPerturbation
from ..modeling.models import SpeechEncoderForCTC
from ..processing import CharacterCTCTokenizer, SpeechFeatureExtractor, SpeechProcessor
from .acceleration import check_mixed_precision, enable_fp16_on_cpu, make_accelerator, reuse_freed_memory
from .arguments import FinetuningArguments, load_sources
from .averaging import BestCheckpoints
from .checkpoints import write_directory_atomically
from .engine import TrainingLoop, build_optimizer
from .loaders import open_loader
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


def load_ctc_model(args: FinetuningArguments, tokenizer) -> SpeechEncoderForCTC:
    """``args.model`` with a fresh CTC head over the tokenizer: a preset (random init, seeded) or a directory."""
    fields = dict(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, mask_time_prob=args.mask_time_prob,
        mask_time_length=args.mask_time_length, mask_feature_prob=args.mask_feature_prob,
        mask_feature_length=args.mask_feature_length, layerdrop=args.layerdrop, final_dropout=args.final_dropout,
        activation_dropout=args.activation_dropout, apply_spec_augment=True, ctc_loss_reduction="mean",
        ctc_zero_infinity=False,  # an infinite loss skips (and counts) the update instead of vanishing silently
        **args.model_overrides)
    if args.model in PRESET_NAMES:
        torch.manual_seed(args.seed)
        return SpeechEncoderForCTC(SpeechEncoderConfig.from_preset(args.model, **fields))
    if not Path(args.model).is_dir():
        raise FileNotFoundError(f"model={args.model!r} is neither a preset {PRESET_NAMES} nor a model directory.")
    return SpeechEncoderForCTC.from_pretrained(args.model, **fields)


def freezing(args: FinetuningArguments, model: SpeechEncoderForCTC) -> tuple[bool, int]:
    """(freeze the feature encoder?, updates with the backbone frozen) for this model."""
    if model.config.num_pretraining_updates == 0 and (args.freeze_feature_encoder or args.freeze_transformer_steps):
        logger.warning(
            "%s has had no self-supervised pretraining (num_pretraining_updates=0): a frozen feature encoder "
            "(freeze_feature_encoder=%s) or Transformer (freeze_transformer_steps=%d) would keep random weights "
            "fixed, so every parameter is trained from the first update. Set freeze_feature_encoder: false and "
            "freeze_transformer_steps: 0 to say so and silence this.",
            args.model, args.freeze_feature_encoder, args.freeze_transformer_steps)
        return False, 0
    return args.freeze_feature_encoder, args.freeze_transformer_steps


def ctc_required_frames(label_ids: list[int]) -> int:
    """Frames CTC needs for a label sequence: one per label plus a blank between each repeated pair."""
    return len(label_ids) + sum(1 for a, b in zip(label_ids, label_ids[1:]) if a == b)


def drop_unalignable(dataset, transcripts: list[str], tokenizer, model: SpeechEncoderForCTC,
                     fastest_speed: float = 1.0) -> tuple[Any, list[str]]:
    """Drop utterances too short for CTC to align their transcript (at the fastest speed factor).

    Returns the kept dataset and one line per dropped utterance (id, frames, frames needed).
    """
    durations = np.asarray(plain_column(dataset, "duration"), dtype=np.float64)
    samples = torch.from_numpy(np.floor(durations * 16000 / fastest_speed).astype(np.int64))
    frames = model.frame_lengths(samples).tolist()
    ids = plain_column(dataset, "id")
    dropped, keep = [], []
    for row, (text, frame_count) in enumerate(zip(transcripts, frames)):
        needed = ctc_required_frames(tokenizer(text)["input_ids"])
        if frame_count < needed:
            dropped.append(f"{ids[row]} ({frame_count} frames < {needed} needed for {text!r})")
        else:
            keep.append(row)
    if dropped:
        logger.warning("%d of %d training utterances are too short for CTC to align their transcript%s and are "
                       "skipped: %s%s", len(dropped), len(frames),
                       f" at speed {fastest_speed:g}" if fastest_speed != 1 else "", "; ".join(dropped[:5]),
                       " ..." if len(dropped) > 5 else "")
        dataset = dataset.select(keep)
    return dataset, dropped


def check_alphabet(transcripts: list[str], ids: list[str], tokenizer, where: str) -> list[str]:
    """Characters of normalised transcripts that the tokenizer has no id for: one line per utterance."""
    vocabulary = set(tokenizer.get_vocab())
    delimiter = tokenizer.word_delimiter_token
    problems = []
    for text, utterance_id in zip(transcripts, ids):
        missing = sorted({char for char in text if char not in vocabulary and not (char == " " and delimiter)})
        if missing:
            problems.append(f"{utterance_id}: {missing}")
    if problems and where == "train":
        raise ValueError(f"{len(problems)} training transcript(s) use characters the tokenizer has no id for "
                         f"(e.g. {'; '.join(problems[:5])}); give a tokenizer with these characters, or leave "
                         "tokenizer empty to build one from the training transcripts.")
    if problems:
        logger.warning("%d %s transcript(s) use characters the model cannot write (e.g. %s); they count as errors.",
                       len(problems), where, "; ".join(problems[:5]))
    return problems


class DevEvaluator:
    """Greedy WER/CER over a dev set, decoded as ``hfspeech evaluate`` does (`GreedyCTCDecoder`).

    References are the normalised dev transcripts themselves (not decoded labels), so a
    character the tokenizer lacks still counts as an error. The normalised dev audio is
    decoded once and kept in memory.
    """

    def __init__(self, dataset, references: list[str], tokenizer, max_batch_seconds: float,
                 accelerator: Accelerator) -> None:
        from ..decoding import GreedyCTCDecoder

        self.dataset, self.references = dataset, references
        self._waveforms: dict[int, np.ndarray] = {}
        self.decoder = GreedyCTCDecoder.from_tokenizer(tokenizer)
        self.sampler = DurationBucketBatchSampler(
            plain_column(dataset, "duration"), max_batch_seconds, shuffle=False, num_replicas=accelerator.num_processes,
            rank=accelerator.process_index, uneven="drop" if accelerator.num_processes > 1 else "pad",
            ids=plain_column(dataset, "id"))
        self.accelerator = accelerator

    @torch.no_grad()
    def __call__(self, model: SpeechEncoderForCTC) -> dict[str, float]:
        from ..decoding.wer import error_report

        model.eval()
        references, hypotheses = [], []
        for rows in self.sampler:
            for row in rows:
                if int(row) not in self._waveforms:
                    self._waveforms[int(row)] = normalize_waveform(self.dataset[int(row)]["audio"])
            values, mask = pad_waveforms([self._waveforms[int(row)] for row in rows])
            inputs = {"input_values": values.to(self.accelerator.device),
                      "attention_mask": mask.to(self.accelerator.device)}
            log_probs = torch.log_softmax(model(**inputs).logits.float(), dim=-1)
            frames = model.frame_lengths(inputs["attention_mask"].sum(-1)).tolist()
            hypotheses += [t.text for t in self.decoder.decode_batch(log_probs, frames)]
            references += [self.references[int(row)] for row in rows]
        report = error_report(references, hypotheses)
        counts = torch.tensor([report.words.errors, report.words.reference_length, report.chars.errors,
                               report.chars.reference_length], dtype=torch.float64, device=self.accelerator.device)
        counts = self.accelerator.reduce(counts, "sum")
        return {"wer": float(counts[0] / counts[1]), "cer": float(counts[2] / counts[3])}


def run_finetuning(args: FinetuningArguments, accelerator: Accelerator | None = None) -> dict[str, Any]:
    """Fine-tune ``args.model`` with CTC on ``args.train_data`` (updates, checkpoints, resume and skipped
    updates as `TrainingLoop`); returns the final/best dev metrics, updates and skipped updates."""
    check_mixed_precision(args.mixed_precision)
    reuse_freed_memory()  # steps reuse the previous step's pages (no fresh-page faults)
    if accelerator is None:
        accelerator = make_accelerator(args.mixed_precision, find_unused_parameters=True)  # frozen phase + layerdrop
    enable_fp16_on_cpu(accelerator)
    if args.fsdp and args.average_checkpoints > 1:
        raise ValueError(f"fsdp: true with average_checkpoints={args.average_checkpoints}: the averaged checkpoints "
                         "are read and loaded on the main process only, which holds one shard. Set "
                         "average_checkpoints: 0 (final/ = the last update, best/ = the best evaluation) or fsdp: false.")
    ranking = args.metric_for_best_model
    if ranking not in ("wer", "cer"):
        raise ValueError(f"metric_for_best_model: {ranking!r} is not a dev metric of fine-tuning; use wer or cer.")
    output_dir = Path(args.output_dir)
    torch.manual_seed(args.seed)
    if args.verify_data:  # decode every file once before the first update; one error lists every bad one
        verify_sources(args.train_data, args.train_split)
        if args.dev_data:
            verify_sources(args.dev_data, args.dev_split)
    normalizer = TextNormalizer()
    train = load_sources(args.train_data, args.train_split)
    if "text" not in train.column_names:
        raise ValueError(f"{args.train_data} has no transcripts: CTC fine-tuning needs labeled audio.")
    transcripts = [normalizer(text, utterance_id) for text, utterance_id in zip(plain_column(train, "text"),
                                                                               plain_column(train, "id"))]
    processor = build_processor(args.model, transcripts, args.tokenizer)
    tokenizer = processor.tokenizer
    check_alphabet(transcripts, plain_column(train, "id"), tokenizer, "train")
    model = load_ctc_model(args, tokenizer)
    freeze_encoder, freeze_transformer_steps = freezing(args, model)
    if freeze_encoder:
        model.freeze_feature_encoder()
    speed = SpeedPerturbation(args.speed_perturbation)
    train, unalignable = drop_unalignable(train, transcripts, tokenizer, model, speed.fastest)
    if len(train) == 0:
        raise ValueError(f"{args.train_data}: no training utterance is long enough for its transcript.")
    seeds = BatchSeeds(args.seed)  # speed factors, per batch: the same whatever worker collates it
    collator = CTCCollator(tokenizer=tokenizer, feature_extractor=None, text_normalizer=normalizer, speed=speed,
                           generator=seeds)
    # batches are budgeted for the slowest (longest) speed factor
    sampler = DurationBucketBatchSampler(
        np.asarray(plain_column(train, "duration")) / speed.slowest, args.max_batch_seconds, seed=args.seed,
        num_replicas=accelerator.num_processes, rank=accelerator.process_index, ids=plain_column(train, "id"))
    evaluate = None
    if args.dev_data:
        dev = load_sources(args.dev_data, args.dev_split)
        if len(dev) == 0 or "text" not in dev.column_names:
            raise ValueError(f"dev_data={args.dev_data!r} holds no labeled utterance; give a labeled dev set (e.g. "
                             "`hfspeech data split` manifests) or leave dev_data empty.")
        references = [normalizer(text, utterance_id) for text, utterance_id in zip(plain_column(dev, "text"),
                                                                                 plain_column(dev, "id"))]
        check_alphabet(references, plain_column(dev, "id"), tokenizer, "dev")
        evaluate = DevEvaluator(dev, references, tokenizer, args.max_batch_seconds, accelerator)

    def batches_for_epoch(epoch: int):
        sampler.set_epoch(epoch)
        seeds.set_epoch(epoch)
        return iter(open_loader(train, collator, args.seed * 10_009 + epoch, args.dataloader_num_workers,
                                args.dataloader_pin_memory, sampler))

    optimizer = build_optimizer(model, args.learning_rate, args.weight_decay, (0.9, 0.98), 1e-8)
    scheduler = build_scheduler(optimizer, "tri_stage", args.max_steps, phase_ratios=args.lr_phase_ratios,
                                final_scale=args.final_lr_scale)
    run_config = dataclasses.asdict(args)
    loop = TrainingLoop(model, optimizer, scheduler, args, accelerator, run_config, "finetune",
                        state={"best_score": None, "evaluations_without_improvement": 0})
    model = loop.prepare(batches_for_epoch)
    best_checkpoints = None
    if args.average_checkpoints > 1 and evaluate is not None and accelerator.is_main_process:
        best_checkpoints = BestCheckpoints(output_dir / "averaging", args.average_checkpoints, ranking)
        best_checkpoints.forget_after(loop.start)
    state, metrics, stopped_early = loop.state, {}, False
    for update in range(loop.start, args.max_steps):
        loop.unwrapped.backbone_frozen = update < freeze_transformer_steps
        loop.update(update, lambda model, batch, update, micro_step: model(**batch))
        if evaluate is not None and loop.due(update, args.eval_steps):
            metrics = evaluate(loop.unwrapped)
            loop.log_dev(update, metrics)
            if state["best_score"] is None or metrics[ranking] < state["best_score"]:
                state["best_score"], state["evaluations_without_improvement"] = metrics[ranking], 0
                state_dict = loop.full_state_dict()  # gathered on every process when sharded
                if accelerator.is_main_process:
                    write_directory_atomically(output_dir / "best", lambda directory: _write_model_directory(
                        directory, loop.unwrapped, processor, metrics, run_config, state_dict))
            else:
                state["evaluations_without_improvement"] += 1
            if best_checkpoints is not None:
                best_checkpoints.offer(update + 1, metrics[ranking], loop.unwrapped)
            stopped_early = 0 < args.early_stopping_patience <= state["evaluations_without_improvement"]
        if loop.due(update, args.save_steps) or stopped_early:
            loop.save(update)
        if stopped_early:
            logger.info("Early stopping at update %d: no better dev %s in %d evaluations (best %.2f%%).", update + 1,
                        ranking.upper(), state["evaluations_without_improvement"], 100 * state["best_score"])
            break
    loop.unwrapped.backbone_frozen = False
    averaged = None
    if best_checkpoints is not None and best_checkpoints.entries:
        averaged = best_checkpoints.average_into(loop.unwrapped)
        metrics = evaluate(loop.unwrapped)
        logger.info("final/ = mean of the %d best evaluations (updates %s): dev WER %.2f%% CER %.2f%%",
                    len(averaged), [entry["update"] for entry in averaged], 100 * metrics["wer"], 100 * metrics["cer"])
    loop.finish(lambda directory, state_dict: _write_model_directory(directory, loop.unwrapped, processor, metrics,
                                                                     run_config, state_dict))
    return {"final": metrics, f"best_{ranking}": state["best_score"], "skipped_updates": state["skipped_updates"],
            "updates": loop.start + len(loop.losses), "stopped_early": stopped_early, "averaged": averaged,
            "unalignable_utterances": unalignable, "train_losses": loop.losses}


def _write_model_directory(directory: Path, model, processor: SpeechProcessor, metrics: dict[str, float],
                           run_config: dict[str, Any], state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """A complete model directory: model (``state_dict``: its gathered whole state when sharded), feature
    extractor and tokenizer, dev metrics, training config."""
    from ..sharing.training_files import write_training_config

    model.save_pretrained(directory, state_dict=state_dict)
    processor.save_pretrained(directory)
    (directory / "dev_metrics.json").write_text(json.dumps(metrics, indent=2))
    write_training_config(directory, run_config)

"""Pretraining batches: a data source (+ HuBERT labels) -> this process's cropped micro-batches."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..configuration import SpeechEncoderConfig
from ..data.augmentation import SpeedPerturbation
from ..data import (BatchSeeds, DurationBucketBatchSampler, HubertCollator, PretrainingCollator, StreamingBucketBatcher,
                    drop_short_utterances, plain_column, verify_sources)
from .arguments import PretrainingArguments, load_sources
from .engine import BatchFactory
from .loaders import open_loader

logger = logging.getLogger(__name__)


def read_pretraining_labels(labels_dir: str, config: SpeechEncoderConfig, dataset) -> tuple[float, dict]:
    """(label rate, utterance id -> one int64 array per label set) of an `hfspeech labels assign` directory.

    The labels stay in memory as arrays beside the dataset, not in its Arrow table (a column of int
    lists costs a hash of every label when added and a list per example when read): `HubertCollator`
    finds each example's labels by its ``id``. Refuses labels whose rate or cluster counts disagree
    with the model's config and, for an indexed source, utterances that have no labels (named in
    the error); a streamed utterance without labels stops the run when it is collated.
    """
    from ..labels.assign import read_label_directory

    metadata, ids, label_sets = read_label_directory(labels_dir)
    if int(metadata.label_rate) != int(config.label_rate):
        raise ValueError(
            f"{labels_dir}: labels tick at {metadata.label_rate:g} Hz but the model expects label_rate="
            f"{config.label_rate} Hz; set model_overrides.label_rate={metadata.label_rate:g} or use matching labels."
        )
    if list(metadata.num_clusters) != list(config.hubert_num_clusters):
        raise ValueError(
            f"{labels_dir}: label sets with K={metadata.num_clusters} but the model predicts "
            f"K={config.hubert_num_clusters}; set model_overrides.hubert_num_clusters={metadata.num_clusters}."
        )
    labels = {utterance_id: [label_sets[k][index] for k in metadata.num_clusters]
              for index, utterance_id in enumerate(ids)}
    if hasattr(dataset, "__len__"):
        missing = [utterance_id for utterance_id in plain_column(dataset, "id") if utterance_id not in labels]
        if missing:
            raise ValueError(f"{len(missing)} utterance(s) have no labels in {labels_dir} (e.g. {missing[:5]}); "
                             "assign labels for this exact data source.")
    return metadata.label_rate, labels


def build_pretraining_batches(args: PretrainingArguments, config: SpeechEncoderConfig, num_processes: int = 1,
                              process_index: int = 0) -> tuple[BatchFactory, dict[str, Any]]:
    """Return ``batches_for_epoch`` for `run_pretraining` and a summary of the data used.

    With ``args.verify_data`` every audio file is decoded once first; a bad one stops the run here,
    before the first update, with the list of all of them. With ``args.streaming`` the source is
    streamed (`StreamingBucketBatcher`: a shuffle buffer, then duration buckets of
    ``streaming_buffer`` examples; ranks read disjoint shards); otherwise it is indexed and bucketed
    whole (`DurationBucketBatchSampler`).
    """
    if args.verify_data:
        verify_sources(args.train_data, args.train_split)
    dataset = load_sources(args.train_data, args.train_split, streaming=args.streaming)
    dataset, dropped = drop_short_utterances(dataset, min_samples=int(args.min_sample_seconds * 16000))
    if dropped:
        logger.warning("Dropped %d utterance(s) shorter than %.2f s (min_sample_seconds).", dropped, args.min_sample_seconds)
    if not args.streaming and len(dataset) == 0:
        raise ValueError(f"{args.train_data}: no utterance is at least {args.min_sample_seconds} s long; "
                         "lower min_sample_seconds or add data.")
    max_samples = int(args.max_sample_seconds * 16000)
    seeds = BatchSeeds(args.seed)  # crops and speed factors, per batch: the same whatever worker collates it
    speed = SpeedPerturbation(args.speed_perturbation)
    if config.objective == "hubert":
        if not args.labels:
            raise ValueError("HuBERT pretraining needs `labels`: a directory written by `hfspeech labels assign`.")
        label_rate, labels = read_pretraining_labels(args.labels, config, dataset)
        collator = HubertCollator(label_rates=label_rate, max_samples=max_samples, crop_to_shortest=True,
                                  normalize=True, generator=seeds, speed=speed, labels=labels,
                                  labels_source=args.labels)
    else:
        collator = PretrainingCollator(max_samples=max_samples, crop_to_shortest=True, normalize=True, generator=seeds,
                                       speed=speed)

    def loader(data, epoch: int, batch_sampler=None):
        seeds.set_epoch(epoch)
        return iter(open_loader(data, collator, args.seed * 10_009 + epoch, args.dataloader_num_workers,
                                args.dataloader_pin_memory, batch_sampler))

    def padded_seconds(duration):  # batches are budgeted for the slowest (longest) speed factor, crops included
        return np.minimum(np.asarray(duration, dtype=np.float64) / speed.slowest, args.max_sample_seconds)

    if args.streaming:
        stream = dataset.map(lambda example: {"budget_seconds": float(padded_seconds(example["duration"]))})
        batcher = StreamingBucketBatcher(stream, args.max_batch_seconds, buffer_size=args.streaming_buffer,
                                         shuffle_buffer=args.streaming_buffer, seed=args.seed,
                                         num_replicas=num_processes, rank=process_index, duration_key="budget_seconds")

        def batches_for_epoch(epoch: int):
            batcher.set_epoch(epoch)
            return loader(batcher, epoch)

        return batches_for_epoch, {"streaming": True, "buffer": args.streaming_buffer}
    table = dataset.with_format(None)  # plain columns: reading them through the decoding transform decodes audio
    sampler = DurationBucketBatchSampler(padded_seconds(table["duration"]), args.max_batch_seconds, seed=args.seed,
                                         num_replicas=num_processes, rank=process_index, ids=table["id"])

    def batches_for_epoch(epoch: int):
        sampler.set_epoch(epoch)
        return loader(dataset, epoch, sampler)

    summary = {"utterances": len(dataset), "hours": float(np.sum(table["duration"])) / 3600,
               "dropped_short": int(dropped or 0), "batches_per_epoch": len(sampler)}
    return batches_for_epoch, summary


def build_dev_batches(args: PretrainingArguments, config: SpeechEncoderConfig, num_processes: int = 1,
                      process_index: int = 0) -> tuple[BatchFactory | None, dict[str, Any]]:
    """Held-out batches for `run_pretraining`'s evaluation (None without ``args.dev_data``) and their summary.

    The dev audio is cropped and batched like the training audio (fixed seed, no speed
    perturbation). For HuBERT the summary carries ``majority_cluster_rate`` per label set: the
    accuracy of always predicting the most frequent cluster of the dev labels, the floor the
    masked-frame accuracy must clear.
    """
    import dataclasses

    if not args.dev_data:
        return None, {}
    if config.objective == "hubert" and not args.dev_labels:
        raise ValueError("dev_data for HuBERT needs dev_labels: assign labels to the dev audio with the same k-means "
                         "(`hfspeech labels assign KMEANS DEV_DATA DEV_LABELS`).")
    dev_args = dataclasses.replace(args, train_data=args.dev_data, train_split="", labels=args.dev_labels,
                                   speed_perturbation=[], verify_data=False, seed=0, streaming=False)
    batches, summary = build_pretraining_batches(dev_args, config, num_processes, process_index)
    if config.objective == "hubert":
        from ..labels.assign import read_label_directory

        metadata, _, label_sets = read_label_directory(args.dev_labels)
        summary["majority_cluster_rate"] = {}
        for k in metadata.num_clusters:
            counts = np.bincount(np.concatenate([np.asarray(labels) for labels in label_sets[k]]), minlength=k)
            summary["majority_cluster_rate"][str(k)] = float(counts.max() / counts.sum())
    return batches, summary

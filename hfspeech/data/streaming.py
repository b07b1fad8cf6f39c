"""Duration-bounded length-bucketed batches over a stream (``datasets.IterableDataset``).

A bounded buffer of ``buffer_size`` examples is filled from the stream, sorted by
duration, packed into batches of at most ``max_seconds`` padded seconds, and the batches
of that buffer are yielded in a shuffled order; then the buffer refills. Memory is bounded
by the buffer; padding falls as the buffer grows.

Several processes: the stream is split with ``datasets.distributed.split_dataset_by_node``
(whole shards per rank when the shard count divides evenly, else every ``world_size``-th
example), so ranks see disjoint data. The number of batches per rank may then differ by a
few; a DDP loop must handle that (e.g. stop at the shortest rank with an all-reduce).

Epochs: ``set_epoch(e)`` reshuffles the stream (``IterableDataset.shuffle`` with a
``shuffle_buffer``) and the batch order (seed + e). Resume: ``state_dict(consumed)`` and
``load_state_dict`` replay the epoch deterministically and skip the consumed batches
(their audio is decoded again, but not yielded). Exact with ``num_workers=0``.

Bad items: with a ``skip_bad=True`` source, every item skipped so far is logged in one
summary when an epoch's iteration ends (``batcher.skipped`` holds the report).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .batching import pack_by_duration
from .skipped import SkippedItems, skipped_items

logger = logging.getLogger(__name__)


class StreamingBucketBatcher(torch.utils.data.IterableDataset):
    """Yield lists of examples (dicts with ``duration``) within a padded-seconds budget.

    Use with ``DataLoader(batcher, batch_size=None, collate_fn=collator)``.

    Args:
        dataset: a ``datasets.IterableDataset`` (or any re-iterable of examples with
            a ``duration`` in seconds).
        max_seconds: padded-seconds budget per batch.
        buffer_size: examples held for bucketing.
        shuffle_buffer: examples in the stream shuffle buffer (0 = no stream shuffle).
        seed: base seed (epoch ``e`` uses ``seed + e``).
        num_replicas, rank: process count and index; the stream is split across them.
        max_batch_size: optional cap on examples per batch.
        drop_too_long: drop (count and log) examples longer than ``max_seconds`` instead
            of raising.
        duration_key: the example field the budget counts (default ``duration``; pretraining
            passes the cropped, speed-perturbed length it will pad to).
        skipped: the report of items a ``skip_bad=True`` source skips; default: the one
            ``dataset`` fills (:func:`hfspeech.data.skipped_items`). It is logged in one summary
            at the end of every epoch (of this process / DataLoader worker) and stays
            queryable as ``batcher.skipped``.
    """

    def __init__(
        self,
        dataset: Any,
        max_seconds: float,
        buffer_size: int = 1000,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        max_batch_size: int | None = None,
        drop_too_long: bool = False,
        skipped: SkippedItems | None = None,
        duration_key: str = "duration",
    ) -> None:
        if max_seconds <= 0 or buffer_size < 1:
            raise ValueError(f"need max_seconds > 0 and buffer_size ≥ 1, got {max_seconds}, {buffer_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, num_replicas={num_replicas})")
        if skipped is None:
            skipped = skipped_items(dataset)
        self.skipped = skipped if skipped is not None else SkippedItems()
        if shuffle_buffer and hasattr(dataset, "shuffle"):
            dataset = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer)
        if num_replicas > 1:
            from datasets.distributed import split_dataset_by_node

            dataset = split_dataset_by_node(dataset, rank=rank, world_size=num_replicas)
        self.dataset = dataset
        self.max_seconds = float(max_seconds)
        self.buffer_size = buffer_size
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.max_batch_size = max_batch_size
        self.drop_too_long = drop_too_long
        self.duration_key = duration_key
        self.epoch = 0
        self._start = 0
        self.dropped_too_long = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: reshuffles the stream and the batch order."""
        if epoch != self.epoch:
            self._start = 0
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def _flush(self, buffer: list[dict], rng: np.random.RandomState) -> list[list[dict]]:
        durations = np.array([example[self.duration_key] for example in buffer], dtype=np.float64)
        order = np.argsort(durations, kind="stable")
        batches = pack_by_duration(order, durations, self.max_seconds, self.max_batch_size)
        return [[buffer[i] for i in batches[j]] for j in rng.permutation(len(batches))]

    def _batches(self) -> Iterator[list[dict]]:
        rng = np.random.RandomState(self.seed + self.epoch)
        buffer: list[dict] = []
        for example in self.dataset:
            duration = float(example[self.duration_key])
            if duration > self.max_seconds:
                if not self.drop_too_long:
                    raise ValueError(
                        f"utterance {example.get('id')} lasts {duration:.2f} s > max_seconds={self.max_seconds}; "
                        "raise max_seconds or pass drop_too_long=True"
                    )
                self.dropped_too_long += 1
                logger.warning("dropping utterance %s (%.2f s > max_seconds=%s); %d dropped so far",
                               example.get("id"), duration, self.max_seconds, self.dropped_too_long)
                continue
            buffer.append(example)
            if len(buffer) >= self.buffer_size:
                yield from self._flush(buffer, rng)
                buffer = []
        if buffer:
            yield from self._flush(buffer, rng)
        where = f" on rank {self.rank}" if self.num_replicas > 1 else ""
        self.skipped.report(f"streaming epoch {self.epoch}{where}")

    def __iter__(self) -> Iterator[list[dict]]:
        start, self._start = self._start, 0
        for position, batch in enumerate(self._batches()):
            if position >= start:
                yield batch

    def state_dict(self, consumed_batches: int) -> dict[str, Any]:
        """Position after the training loop consumed ``consumed_batches`` batches this epoch."""
        return {"epoch": self.epoch, "position": int(consumed_batches), "seed": self.seed,
                "num_replicas": self.num_replicas}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`: the next ``__iter__`` skips the consumed batches."""
        if state["seed"] != self.seed or state["num_replicas"] != self.num_replicas:
            raise ValueError("streaming batcher state was saved with another seed or number of processes; "
                             "resume with the same settings")
        self.set_epoch(int(state["epoch"]))
        self._start = int(state["position"])

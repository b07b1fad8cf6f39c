"""Dynamic batches bounded by total (padded) audio seconds, with length buckets.

This is fairseq's ``max_tokens`` batching for map-style datasets: a batch of ``n``
utterances whose longest lasts ``d`` seconds costs ``n * d`` padded seconds, and no batch
exceeds ``max_seconds``. Utterances are grouped into ``num_buckets`` length buckets
(quantiles of the durations); within a bucket the order is shuffled every epoch, batches
are packed greedily, and the list of batches is shuffled.

Several processes (``accelerate``/``torchrun``): every rank builds the same batch list
from ``seed + epoch`` and takes every ``num_replicas``-th batch starting at ``rank``, so
ranks see disjoint data. When the number of batches does not divide evenly, the first
batches are repeated (``uneven="pad"``, logged) or the tail is dropped (``uneven="drop"``,
logged) so that every rank runs the same number of steps. Use the sampler directly in a
``DataLoader(batch_sampler=...)`` and do **not** pass that loader through
``accelerator.prepare`` (it would shard the batches a second time); move batches to the
device yourself (``accelerator.device``).

Resume: ``state_dict(consumed_batches)`` stores epoch and position;
``load_state_dict`` makes the next ``__iter__`` continue from that batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)


def pack_by_duration(
    order: Sequence[int], durations: np.ndarray, max_seconds: float, max_batch_size: int | None = None
) -> list[list[int]]:
    """Greedily cut ``order`` into batches whose padded cost ``len * max(duration)`` ≤ ``max_seconds``."""
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0.0
    for index in order:
        duration = float(durations[index])
        new_longest = max(longest, duration)
        full = max_batch_size is not None and len(current) >= max_batch_size
        if current and (full or new_longest * (len(current) + 1) > max_seconds):
            batches.append(current)
            current, new_longest = [], duration
        current.append(int(index))
        longest = new_longest
    if current:
        batches.append(current)
    return batches


def padding_fraction(batches: Sequence[Sequence[int]], durations: np.ndarray) -> float:
    """Fraction of padded seconds: ``1 - sum(durations) / sum(len(b) * max(b))``."""
    real = sum(float(durations[b].sum()) for b in map(np.asarray, batches))
    padded = sum(len(b) * float(durations[np.asarray(b)].max()) for b in batches)
    return 1.0 - real / padded if padded else 0.0


class DurationBucketBatchSampler(Sampler[list[int]]):
    """Batch sampler yielding index lists whose padded audio seconds stay within a budget.

    Args:
        durations: seconds per utterance, shape ``(N,)`` (``dataset["duration"]``).
        max_seconds: padded-seconds budget per batch (fairseq ``max_tokens / 16000``).
        num_buckets: length buckets (quantiles); 1 = no bucketing (random batches).
        max_batch_size: optional cap on utterances per batch.
        shuffle: shuffle within buckets and the batch order each epoch.
        seed: base seed; epoch ``e`` uses ``seed + e``.
        num_replicas, rank: process count and index (``accelerator.num_processes``,
            ``accelerator.process_index``).
        uneven: ``"pad"`` (repeat first batches) or ``"drop"`` (drop the tail) so every
            rank gets the same number of batches.
        ids: optional utterance ids, used in error messages.
    """

    def __init__(
        self,
        durations: Sequence[float] | np.ndarray,
        max_seconds: float,
        num_buckets: int = 32,
        max_batch_size: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        uneven: str = "pad",
        ids: Sequence[str] | None = None,
    ) -> None:
        self.durations = np.asarray(durations, dtype=np.float64)
        if self.durations.ndim != 1 or self.durations.size == 0:
            raise ValueError(f"durations must be a non-empty 1-D sequence, got shape {self.durations.shape}")
        if max_seconds <= 0:
            raise ValueError(f"max_seconds must be positive, got {max_seconds}")
        too_long = np.flatnonzero(self.durations > max_seconds)
        if too_long.size:
            first = int(too_long[0])
            name = ids[first] if ids is not None else f"index {first}"
            raise ValueError(
                f"{too_long.size} utterance(s) last longer than max_seconds={max_seconds} (e.g. {name}: "
                f"{self.durations[first]:.2f} s); raise max_seconds or filter them out first"
            )
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, num_replicas={num_replicas})")
        if uneven not in ("pad", "drop"):
            raise ValueError(f"uneven={uneven!r}; choose 'pad' or 'drop'")
        if num_buckets < 1:
            raise ValueError(f"num_buckets must be ≥ 1, got {num_buckets}")
        self.max_seconds = float(max_seconds)
        self.num_buckets = num_buckets
        self.max_batch_size = max_batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.uneven = uneven
        self.epoch = 0
        self._start = 0
        quantiles = np.quantile(self.durations, np.linspace(0, 1, num_buckets + 1)[1:-1])
        self.bucket_of = np.searchsorted(quantiles, self.durations, side="right")

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (reshuffles); resets a resumed position from another epoch."""
        if epoch != self.epoch:
            self._start = 0
        self.epoch = epoch

    def global_batches(self, epoch: int | None = None) -> list[list[int]]:
        """All batches of ``epoch`` before splitting across ranks (same on every rank)."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.RandomState(self.seed + epoch)
        batches: list[list[int]] = []
        for bucket in range(self.num_buckets):
            members = np.flatnonzero(self.bucket_of == bucket)
            if members.size == 0:
                continue
            if self.shuffle:
                members = members[rng.permutation(members.size)]
            else:
                members = members[np.argsort(self.durations[members], kind="stable")]
            batches.extend(pack_by_duration(members, self.durations, self.max_seconds, self.max_batch_size))
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _rank_batches(self, epoch: int, report: bool = False) -> list[list[int]]:
        batches = self.global_batches(epoch)
        remainder = len(batches) % self.num_replicas
        if remainder:
            log = logger.info if report else logger.debug
            if self.uneven == "pad":
                extra = self.num_replicas - remainder
                log("epoch %d: %d batches for %d ranks; repeating %d batch(es) so ranks stay even",
                            epoch, len(batches), self.num_replicas, extra)
                batches = batches + [batches[i % len(batches)] for i in range(extra)]
            else:
                log("epoch %d: dropping the last %d of %d batches so ranks stay even",
                            epoch, remainder, len(batches))
                batches = batches[: len(batches) - remainder]
        return batches[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        start, self._start = self._start, 0
        yield from self._rank_batches(self.epoch, report=True)[start:]

    def __len__(self) -> int:
        return len(self._rank_batches(self.epoch)) - self._start

    def state_dict(self, consumed_batches: int) -> dict[str, Any]:
        """Position after this rank consumed ``consumed_batches`` batches of the current epoch
        (count what the training loop used, not what a prefetching DataLoader fetched)."""
        return {"epoch": self.epoch, "position": int(consumed_batches), "seed": self.seed,
                "num_replicas": self.num_replicas}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`: the next ``__iter__`` starts at its position."""
        if state["seed"] != self.seed or state["num_replicas"] != self.num_replicas:
            raise ValueError(
                f"sampler state was saved with seed={state['seed']}, num_replicas={state['num_replicas']} but this "
                f"sampler has seed={self.seed}, num_replicas={self.num_replicas}; resume with the same settings"
            )
        self.epoch = int(state["epoch"])
        self._start = int(state["position"])

    def padding_fraction(self) -> float:
        """Padding fraction of this epoch's global batches."""
        return padding_fraction(self.global_batches(), self.durations)

"""The training loops' DataLoader: decoding workers, pinned memory, a generator of its own."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.data import DataLoader


def open_loader(data: Any, collate_fn: Callable, seed: int, num_workers: int = 0, pin_memory: bool = True,
                batch_sampler: Any = None) -> DataLoader:
    """One epoch's DataLoader over ``data`` (a map-style dataset with ``batch_sampler``, or an iterable
    yielding lists of examples, e.g. `StreamingBucketBatcher`).

    Args:
        seed: seeds the loader's own generator (its base seed for workers), so opening the data again on
            resume does not draw from, and shift, the global RNG restored from a checkpoint.
        num_workers: decoding/collating processes (0: in this process). The collators' randomness comes
            from `hfspeech.data.BatchSeeds`, so batches are the same for every value. Workers start with each
            epoch's loader (not persistent), so they see the epoch set on the sampler and seeds.
        pin_memory: page-locked batches, only when a GPU is present (no effect on a CPU run).
    """
    if num_workers < 0:
        raise ValueError(f"dataloader_num_workers must be >= 0, got {num_workers}")
    options: dict[str, Any] = {"num_workers": num_workers, "pin_memory": pin_memory and torch.cuda.is_available(),
                               "generator": torch.Generator().manual_seed(seed)}
    if batch_sampler is None:
        options["batch_size"] = None
    else:
        options["batch_sampler"] = batch_sampler
    if num_workers:
        options["prefetch_factor"] = 4  # batches in flight per worker: covers a slow (long) batch
    return DataLoader(data, collate_fn=collate_fn, **options)

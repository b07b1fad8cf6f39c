"""One random generator per batch, derived from the batch itself: crops and speed factors that do
not depend on which process or DataLoader worker collates the batch.

A collator given one shared ``torch.Generator`` draws from a stream whose position depends on the
batches collated before: each DataLoader worker would hold its own copy of it (repeating the
same draws in every worker), and a run with 2 workers would crop differently from one with none.
`BatchSeeds` seeds a fresh generator per batch from ``(seed, epoch, the batch's utterance ids)``
instead, so a batch is cropped and perturbed the same way whatever collates it, and a resumed run
replays the same draws without replaying the batches before it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch


class BatchSeeds:
    """``generator(examples)``: a ``torch.Generator`` seeded by ``(seed, epoch, ids of examples)``.

    Args:
        seed: the run's seed. Call `set_epoch` before each epoch (before the DataLoader starts
            its workers, which copy this object).
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def generator(self, examples: Sequence[Mapping[str, Any]]) -> torch.Generator:
        ids = []
        for position, example in enumerate(examples):
            if example.get("id") is None:
                raise ValueError(f"example {position} of the batch has no 'id': per-batch seeds need the utterance "
                                 "ids (sources from hfspeech.data.load_source carry them), or pass a torch.Generator")
            ids.append(str(example["id"]))
        key = "\0".join([str(self.seed), str(self.epoch), *ids]).encode()
        return torch.Generator().manual_seed(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
                                             & 0x7FFF_FFFF_FFFF_FFFF)


def batch_generator(source: torch.Generator | BatchSeeds | None,
                    examples: Sequence[Mapping[str, Any]]) -> torch.Generator | None:
    """The generator a collator draws this batch's randomness from."""
    return source.generator(examples) if isinstance(source, BatchSeeds) else source

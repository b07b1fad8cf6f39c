"""Verify audio: decode every file of a source once, in parallel, and name each one that fails.

A header can be valid while the audio behind it is cut off or corrupt, so reading headers
(what loading a source does) does not prove a file usable; only decoding it does.
:func:`find_bad_audio` decodes every file of a record table on all available cores (FFmpeg
decodes outside the GIL, so threads suffice) with a progress bar, and returns each corrupt,
empty, truncated or undecodable file with its reason (:func:`~hfspeech.data.audio.audio_problem`).
It backs

- ``load_source(..., skip_bad=True)`` for map-style sources, which leaves the bad files out
  and reports them;
- ``hfspeech data info SOURCE --verify``, which lists them and exits non-zero;
- :func:`verify_sources`, which training runs call before the first update when
  ``verify_data: true``.

The cost is one decoding pass: see the README ("Checking data") for seconds per hour of audio.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tqdm.auto import tqdm

from .audio import audio_problem
from .records import plain_column
from .skipped import BadItem, SkippedItems

logger = logging.getLogger(__name__)

#: Rows decoded per chunk: bounds the encoded bytes held at once for Hub (parquet) sources.
CHUNK_ROWS = 256


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _entry_location(entry: Any, utterance_id: str) -> str:
    return (entry.get("path") if isinstance(entry, dict) else None) or utterance_id


def find_bad_audio(table: Any, source: str, workers: int | None = None) -> list[tuple[int, BadItem]]:
    """Decode every ``audio`` entry of a record table; return ``(row, BadItem)`` per bad file, in row order.

    Args:
        table: a ``datasets.Dataset`` whose ``audio`` column holds encoded ``{"bytes", "path"}``
            entries (a source from :func:`hfspeech.data.load_source` with its format removed, or
            the record table before probing) and an ``id`` column.
        source: name shown on the progress bar.
        workers: decoding threads (default: every available core).
    """
    workers = workers or available_cores()
    bad: list[tuple[int, BadItem]] = []
    progress = tqdm(total=len(table), desc=f"verifying audio of {source}", unit=" file")
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(table), CHUNK_ROWS):
            chunk = table[start:start + CHUNK_ROWS]
            for offset, problem in enumerate(pool.map(audio_problem, chunk["audio"])):
                if problem is not None:
                    location = _entry_location(chunk["audio"][offset], str(chunk["id"][offset]))
                    bad.append((start + offset, BadItem(location, problem)))
                progress.update(1)
    progress.close()
    return bad


def _loaded_table(dataset: Any, name: str) -> Any:
    """The encoded record table behind a map-style source (its decoding transform removed)."""
    import datasets

    if isinstance(dataset, datasets.IterableDataset):
        raise ValueError(f"{name}: a streamed source cannot be verified up front (it decodes as it streams and "
                         "skips bad audio with skip_bad=True); pass the source spec or a map-style dataset")
    if not isinstance(dataset, datasets.Dataset) or "audio" not in dataset.column_names:
        raise ValueError(f"{name}: expected a dataset from hfspeech.data.load_source (with an 'audio' column) "
                         f"or a source spec, got {type(dataset).__name__}")
    return dataset.with_format(None)


def verify_sources(sources: str | Any | Sequence[Any], split: str = "", name: str | None = None) -> SkippedItems:
    """Decode every audio file of a training run's data once, on every available core; raise naming every bad file.

    Args:
        sources: comma-separated source specs (as ``train_data``; every kind ``load_source``
            reads), or a map-style dataset from ``load_source``/``load_sources``, or a list of them.
            Specs are loaded with ``skip_bad=True`` so that every bad item (unreadable header,
            missing or empty transcript, audio without a metadata row) is listed, not just the first.
        split: the split of local LibriSpeech/Libri-light specs (``train_split``).
        name: what to call the data in messages (default: the specs, or "dataset").

    Returns:
        The (empty) report of bad items, when every file decodes.

    Raises:
        ValueError: listing each bad item (``location: reason``) and the fix.
    """
    from .sources import load_source

    report = SkippedItems()
    started = time.perf_counter()
    seconds = 0.0
    items = [spec.strip() for spec in sources.split(",") if spec.strip()] if isinstance(sources, str) else \
        list(sources) if isinstance(sources, (list, tuple)) else [sources]
    if not items:
        raise ValueError("verify_sources: no data source given; pass the train_data specs or a dataset")
    name = name or (sources if isinstance(sources, str) else "dataset")
    for item in items:
        if isinstance(item, str):
            loaded = load_source(item, split=split or None, skip_bad=True, skipped=report)
            seconds += float(sum(plain_column(loaded, "duration")))  # unformatted: no decoding
            continue
        table = _loaded_table(item, name)
        for _, bad in find_bad_audio(table, name):
            report.add(bad.location, bad.reason)
        seconds += float(sum(table["duration"])) if "duration" in table.column_names else 0.0
    if report:
        raise ValueError(f"{report.summary(name)}\nremove or re-export these files (or fix the listed rows) before "
                         "training; `hfspeech data info SOURCE --verify` lists them again")
    logger.info("%s: every audio file decodes (%.2f h verified in %.1f s)", name, seconds / 3600,
                time.perf_counter() - started)
    return report

"""TSV/CSV manifests: one utterance per row with ``path``, optional ``text`` and ``duration``.

Relative paths are resolved against the manifest's folder. Optional columns: ``id``
(default: the file stem), ``speaker_id`` (default: ``""``). A ``duration`` column, when
present, is checked against the audio header (a mismatch above 0.1 s is a bad item).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from datasets import Dataset, IterableDataset

from .audio import SkippedItems
from .records import finalize, plain_column, table_from_rows

DURATION_TOLERANCE_S = 0.1


def load_manifest(
    manifest: str | os.PathLike, streaming: bool = False, skip_bad: bool = False,
    skipped: SkippedItems | None = None,
) -> Dataset | IterableDataset:
    """Load a ``.tsv`` (tab-separated) or ``.csv`` manifest with a header row.

    ``skipped`` (optional) collects the items skipped with ``skip_bad=True``.
    """
    path = Path(manifest)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    skipped = skipped if skipped is not None else SkippedItems()
    rows: list[dict[str, Any]] = []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        fields = reader.fieldnames or []
        if "path" not in fields:
            raise ValueError(f"{path}: needs a header row with a 'path' column, found {fields}")
        labeled = "text" in fields
        for line_number, record in enumerate(reader, 2):
            location = f"{path}:{line_number}"
            audio_path = Path(record["path"] or "")
            if not audio_path.is_absolute():
                audio_path = path.parent / audio_path
            problem = None
            if not record["path"] or not audio_path.is_file():
                problem = f"audio file {audio_path} not found; fix the path or remove the row"
            elif labeled and not (record.get("text") or "").strip():
                problem = f"empty text for {audio_path}; fill it in or remove the row"
            if problem is not None:
                if not skip_bad:
                    raise ValueError(f"{location}: {problem} (or pass skip_bad=True / --skip-bad to skip it)")
                skipped.add(location, problem)
                continue
            row: dict[str, Any] = {
                "path": str(audio_path),
                "id": record.get("id") or audio_path.stem,
                "speaker_id": record.get("speaker_id") or "",
                "expected_duration": record.get("duration") or None,
                "location": location,
            }
            if labeled:
                row["text"] = record["text"].strip()
            rows.append(row)
    dataset = finalize(table_from_rows(rows, labeled=labeled), str(path), streaming, skip_bad, skipped)
    if not streaming and "duration" in fields:
        _check_durations(rows, dataset)
    return dataset


def _check_durations(rows: list[dict[str, Any]], dataset: Dataset) -> None:
    measured = dict(zip(plain_column(dataset, "id"), plain_column(dataset, "duration")))
    for row in rows:
        if row["expected_duration"] is None or row["id"] not in measured:
            continue
        try:
            expected = float(row["expected_duration"])
        except ValueError:
            raise ValueError(f"{row['location']}: duration {row['expected_duration']!r} is not a number") from None
        if abs(expected - measured[row["id"]]) > DURATION_TOLERANCE_S:
            raise ValueError(
                f"{row['location']}: manifest duration {expected:.3f} s but {row['path']} lasts "
                f"{measured[row['id']]:.3f} s; regenerate the manifest"
            )

"""Audio folders: ``audiofolder`` directories with ``metadata.csv`` and plain audio directories.

``audiofolder`` (the Hugging Face convention): ``ROOT/metadata.csv`` with a ``file_name``
column (path relative to ROOT), an optional ``text`` (or ``transcription``/``sentence``)
column and an optional ``speaker_id`` column. A plain directory holds audio files only;
its utterances are unlabeled (no ``text`` column). The speaker is the first field of a
LibriSpeech-style file name (``SPEAKER-CHAPTER-UTT``), else the parent folder name.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any

from datasets import Dataset, IterableDataset

from .audio import AUDIO_EXTENSIONS, SkippedItems
from .records import finalize, table_from_rows

TEXT_COLUMNS = ("text", "transcription", "sentence", "transcript")
_LIBRISPEECH_ID = re.compile(r"^(\d+)-\d+-\d+$")


def _speaker_of(path: Path, base: Path) -> str:
    match = _LIBRISPEECH_ID.match(path.stem)
    if match:
        return match.group(1)
    return path.parent.name if path.parent != base else ""


def find_audio_files(root: Path) -> list[Path]:
    """Every audio file below ``root`` (by extension), sorted."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)


def _bad(skipped: SkippedItems, skip_bad: bool, location: str, reason: str) -> None:
    if not skip_bad:
        raise ValueError(f"{location}: {reason} (or pass skip_bad=True / --skip-bad to skip it)")
    skipped.add(location, reason)


def load_audiofolder(
    root: str | os.PathLike, streaming: bool = False, skip_bad: bool = False,
    skipped: SkippedItems | None = None,
) -> Dataset | IterableDataset:
    """Load an ``audiofolder`` directory (``metadata.csv`` + audio files).

    Every row must name an existing file and every audio file must have a row; a row with
    an empty ``text`` is a bad item (the column is a transcript column, so empty means missing).
    ``skipped`` (optional) collects the items skipped with ``skip_bad=True``.
    """
    base = Path(root)
    metadata = base / "metadata.csv"
    if not metadata.is_file():
        raise FileNotFoundError(f"{metadata}: audiofolder metadata not found")
    skipped = skipped if skipped is not None else SkippedItems()
    rows: list[dict[str, Any]] = []
    with open(metadata, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        if "file_name" not in fields:
            raise ValueError(f"{metadata}: needs a 'file_name' column, found {fields}")
        text_column = next((name for name in TEXT_COLUMNS if name in fields), None)
        listed: set[Path] = set()
        for line_number, record in enumerate(reader, 2):
            path = (base / record["file_name"]).resolve()
            location = f"{metadata}:{line_number}"
            if not path.is_file():
                _bad(skipped, skip_bad, location, f"metadata row for missing audio file {path}; "
                     "restore the file or remove the row")
                continue
            listed.add(path)
            row: dict[str, Any] = {
                "path": str(path),
                "id": str(Path(record["file_name"]).with_suffix("")),
                "speaker_id": record.get("speaker_id") or path.parent.name,
            }
            if text_column is not None:
                text = (record.get(text_column) or "").strip()
                if not text:
                    _bad(skipped, skip_bad, location, f"empty '{text_column}' for {path}; fill it in or remove the row")
                    continue
                row["text"] = text
            rows.append(row)
    for path in find_audio_files(base):
        if path.resolve() not in listed:
            _bad(skipped, skip_bad, str(path), f"audio file has no row in {metadata}; add one or remove the file")
    table = table_from_rows(rows, labeled=text_column is not None)
    return finalize(table, str(base), streaming, skip_bad, skipped)


def load_audio_directory(
    root: str | os.PathLike, streaming: bool = False, skip_bad: bool = False,
    skipped: SkippedItems | None = None,
) -> Dataset | IterableDataset:
    """Load a plain directory of audio files (recursively) as unlabeled utterances.

    ``skipped`` (optional) collects the items skipped with ``skip_bad=True``.
    """
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: audio directory not found")
    files = find_audio_files(base)
    if not files:
        raise ValueError(f"{base}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found below it")
    rows = [
        {"path": str(path), "id": str(path.relative_to(base).with_suffix("")),
         "speaker_id": _speaker_of(path, base)}
        for path in files
    ]
    return finalize(table_from_rows(rows, labeled=False), str(base), streaming, skip_bad, skipped)

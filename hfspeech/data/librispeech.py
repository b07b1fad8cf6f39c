"""LibriSpeech: the native directory layout, Libri-light limited-resource subsets, the Hub.

Native layout: ``ROOT/SPLIT/SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac`` with one
``SPEAKER-CHAPTER.trans.txt`` per chapter (``UTT-ID TRANSCRIPT`` per line). Libri-light's
``librispeech_finetuning`` uses the same layout below ``1h/{0..5}/{clean,other}`` and
``9h/{clean,other}``. The Hub dataset is ``openslr/librispeech_asr``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from datasets import Dataset, IterableDataset

from .audio import SkippedItems
from .records import finalize, table_from_rows

logger = logging.getLogger(__name__)

HUB_REPO_ID = "openslr/librispeech_asr"
#: config -> splits of ``openslr/librispeech_asr``.
HUB_SPLITS: dict[str, tuple[str, ...]] = {
    "clean": ("train.100", "train.360", "validation", "test"),
    "other": ("train.500", "validation", "test"),
    "all": ("train.clean.100", "train.clean.360", "train.other.500", "validation.clean",
            "validation.other", "test.clean", "test.other"),
}
NATIVE_SPLITS = ("train-clean-100", "train-clean-360", "train-other-500", "dev-clean", "dev-other",
                 "test-clean", "test-other")
#: Libri-light limited-resource subset -> directories below ``librispeech_finetuning``.
LIBRILIGHT_SUBSETS: dict[str, tuple[str, ...]] = {
    "10min": ("1h/0",),
    "1h": ("1h",),
    "10h": ("1h", "9h"),
}


def native_split_name(split: str) -> str:
    """Map a Hub-style split name (``train.clean.100``, ``validation.other``) to a directory name."""
    name = split.replace(".", "-").replace("validation", "dev")
    return name


def is_librispeech_dir(path: Path) -> bool:
    """True when ``path`` holds ``*.trans.txt`` files in the native layout (any depth ≤ 4)."""
    if not path.is_dir():
        return False
    for depth_pattern in ("*.trans.txt", "*/*.trans.txt", "*/*/*.trans.txt", "*/*/*/*.trans.txt",
                          "*/*/*/*/*.trans.txt"):
        if next(path.glob(depth_pattern), None) is not None:
            return True
    return False


def is_librilight_dir(path: Path) -> bool:
    """True for a Libri-light ``librispeech_finetuning`` directory (``1h/`` and ``9h/``)."""
    return (path / "1h").is_dir() and (path / "9h").is_dir()


def _scan_native(roots: list[Path], skipped: SkippedItems, skip_bad: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for root in roots:
        for transcript_file in sorted(root.rglob("*.trans.txt")):
            chapter_dir = transcript_file.parent
            audio_files = {p.stem: p for p in chapter_dir.glob("*.flac")}
            seen: set[str] = set()
            with open(transcript_file, encoding="utf-8") as handle:
                for line_number, line in enumerate(handle, 1):
                    line = line.rstrip("\n")
                    if not line.strip():
                        continue
                    utterance_id, _, text = line.partition(" ")
                    if not text.strip():
                        _bad(skipped, skip_bad, f"{transcript_file}:{line_number}",
                             f"transcript line for {utterance_id} is empty; add the text or remove the line")
                        continue
                    if utterance_id not in audio_files:
                        _bad(skipped, skip_bad, f"{transcript_file}:{line_number}",
                             f"transcript for missing audio file {chapter_dir / (utterance_id + '.flac')}; "
                             "restore the file or remove the line")
                        continue
                    seen.add(utterance_id)
                    rows.append({"path": str(audio_files[utterance_id]), "id": utterance_id,
                                 "speaker_id": utterance_id.split("-")[0], "text": text.strip()})
            for stem in sorted(set(audio_files) - seen):
                _bad(skipped, skip_bad, str(audio_files[stem]),
                     f"no transcript line in {transcript_file}; add '{stem} TEXT' or remove the file")
    return rows


def _bad(skipped: SkippedItems, skip_bad: bool, location: str, reason: str) -> None:
    if not skip_bad:
        raise ValueError(f"{location}: {reason} (or pass skip_bad=True / --skip-bad to skip it)")
    skipped.add(location, reason)


def _read_file_list(file_list: str | os.PathLike) -> list[str]:
    path = Path(file_list)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file list not found")
    entries = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [Path(entry).name.split(".")[0] for entry in entries]


def load_librispeech_local(
    root: str | os.PathLike,
    split: str | None = None,
    streaming: bool = False,
    skip_bad: bool = False,
    file_list: str | os.PathLike | None = None,
    skipped: SkippedItems | None = None,
) -> Dataset | IterableDataset:
    """Load a LibriSpeech directory in its native layout.

    Args:
        root: the ``LibriSpeech`` directory (holding split folders), its parent, or one split folder.
        split: ``train-clean-100`` (or Hub-style ``train.clean.100``); None = everything under root.
        streaming: return a lazily decoded ``IterableDataset``.
        skip_bad: skip (and report) bad items instead of raising.
        file_list: text file of utterance ids or paths (one per line) selecting a subset;
            every listed id must exist.
        skipped: optional ledger collecting the items skipped with ``skip_bad=True``.
    """
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: LibriSpeech directory not found")
    if (base / "LibriSpeech").is_dir():
        base = base / "LibriSpeech"
    if split is not None:
        candidates = [base / split, base / native_split_name(split)]
        found = [c for c in candidates if c.is_dir()]
        if not found:
            available = sorted(p.name for p in base.iterdir() if p.is_dir())
            raise ValueError(f"{base}: no split folder {split!r}; available: {available}")
        base = found[0]
    skipped = skipped if skipped is not None else SkippedItems()
    rows = _scan_native([base], skipped, skip_bad)
    if file_list is not None:
        wanted = _read_file_list(file_list)
        by_id = {row["id"]: row for row in rows}
        missing = [utt for utt in wanted if utt not in by_id]
        if missing:
            raise ValueError(f"{file_list}: {len(missing)} listed utterance(s) not found under {base}, "
                             f"e.g. {missing[:3]}; check the list and the split")
        rows = [by_id[utt] for utt in wanted]
    return finalize(table_from_rows(rows, labeled=True), str(base), streaming, skip_bad, skipped)


def load_librilight_limited(
    root: str | os.PathLike,
    subset: str = "10h",
    streaming: bool = False,
    skip_bad: bool = False,
    skipped: SkippedItems | None = None,
) -> Dataset | IterableDataset:
    """Load a Libri-light limited-resource subset (``10min``, ``1h`` or ``10h``).

    ``root`` is the ``librispeech_finetuning`` directory; subsets are selected by its
    folders (10 min = ``1h/0``, 1 h = ``1h/*``, 10 h = ``1h/*`` + ``9h``).
    """
    base = Path(root)
    if subset not in LIBRILIGHT_SUBSETS:
        raise ValueError(f"unknown Libri-light subset {subset!r}; choose one of {list(LIBRILIGHT_SUBSETS)}")
    if not is_librilight_dir(base):
        raise FileNotFoundError(f"{base}: not a Libri-light librispeech_finetuning directory (needs 1h/ and 9h/)")
    roots = [base / part for part in LIBRILIGHT_SUBSETS[subset]]
    for part in roots:
        if not part.is_dir():
            raise FileNotFoundError(f"{part}: missing folder of the {subset} subset")
    skipped = skipped if skipped is not None else SkippedItems()
    rows = _scan_native(roots, skipped, skip_bad)
    return finalize(table_from_rows(rows, labeled=True), f"{base}[{subset}]", streaming, skip_bad, skipped)


def parse_hub_spec(spec: str) -> tuple[str, str]:
    """``librispeech:CONFIG/SPLIT`` -> ``(CONFIG, SPLIT)``, validated against :data:`HUB_SPLITS`."""
    body = spec.split(":", 1)[1]
    config, _, split = body.partition("/")
    if config not in HUB_SPLITS:
        raise ValueError(f"{spec!r}: unknown LibriSpeech config {config!r}; choose one of {list(HUB_SPLITS)}")
    if split not in HUB_SPLITS[config]:
        raise ValueError(f"{spec!r}: config {config!r} has no split {split!r}; choose one of {list(HUB_SPLITS[config])}")
    return config, split


def load_librispeech_hub(
    config: str,
    split: str,
    streaming: bool = True,
    skip_bad: bool = False,
    data_files: str | list[str] | None = None,
    repo_id: str = HUB_REPO_ID,
    skipped: SkippedItems | None = None,
) -> Dataset | IterableDataset:
    """Load ``openslr/librispeech_asr`` CONFIG/SPLIT from the Hub (streaming by default).

    Args:
        data_files: local parquet shards in the Hub schema (``file, audio{bytes,path}, text,
            speaker_id, chapter_id, id``) to read instead of the Hub (offline mirrors, tests).
    """
    import datasets

    if data_files is None:
        if config not in HUB_SPLITS or split not in HUB_SPLITS[config]:
            raise ValueError(f"{repo_id}: no {config}/{split}; valid: {HUB_SPLITS}")
        raw = datasets.load_dataset(repo_id, config, split=split, streaming=streaming)
    else:
        raw = datasets.load_dataset("parquet", data_files={split: data_files}, split=split, streaming=streaming)
    missing = {"audio", "text", "speaker_id", "id"} - set(raw.column_names or [])
    if missing:
        raise ValueError(f"{repo_id if data_files is None else data_files}: not the LibriSpeech schema, "
                         f"missing column(s) {sorted(missing)}")
    raw = raw.cast_column("audio", datasets.Audio(decode=False))
    raw = raw.select_columns(["audio", "id", "speaker_id", "text"])
    raw = raw.cast_column("speaker_id", datasets.Value("string"))
    source = f"librispeech:{config}/{split}"
    if streaming:
        from .records import StreamingDecoder

        return raw.map(StreamingDecoder(source, skip_bad, skipped), batched=True, batch_size=8)
    return finalize(raw, source, streaming=False, skip_bad=skip_bad, skipped=skipped)

"""Speaker-disjoint train/dev splits and fixed-duration labeled subsets, written as manifests.

Small corpora (AN4, speechocean762) come as one training folder; a dev set must not share
speakers with the training set, or dev WER measures memorised voices. `split_by_speaker`
draws the dev speakers with a seeded shuffle; `duration_subset` draws utterances of the
training side until a duration budget is reached (the papers' "10 minutes of labels").
`write_split` writes both as TSV manifests (absolute audio paths) that every loader reads:

    OUT/train.tsv  OUT/dev.tsv  OUT/train_10min.tsv ...  OUT/split.json (speakers, hours)
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

MANIFEST_COLUMNS = ("path", "text", "speaker_id", "id", "duration")


def split_by_speaker(speakers: Sequence[str], dev_speakers: int, seed: int = 0,
                     source: str = "the source") -> tuple[list[int], list[int]]:
    """Row indices ``(train, dev)`` with ``dev_speakers`` speakers (seeded choice) on the dev side only.

    Raises:
        ValueError: naming ``source`` when speakers are missing, when there is only one
            speaker, or when ``dev_speakers`` would leave either side empty.
    """
    if not speakers:
        raise ValueError(f"{source}: no utterances to split")
    missing = [index for index, speaker in enumerate(speakers) if not speaker]
    if missing:
        raise ValueError(f"{source}: {len(missing)} utterance(s) have no speaker_id (e.g. row {missing[0]}); a "
                         "speaker-disjoint split needs one per utterance (a speaker_id column in metadata.csv or "
                         "the manifest, or one folder per speaker)")
    names = sorted(set(speakers))
    if len(names) < 2:
        raise ValueError(f"{source}: every utterance is from speaker {names[0]!r}; a speaker-disjoint dev set needs at "
                         "least two speakers (give a separate dev source instead)")
    if not 1 <= dev_speakers < len(names):
        raise ValueError(f"{source}: dev_speakers={dev_speakers} must be between 1 and {len(names) - 1} "
                         f"({len(names)} speakers: at least one must stay for training)")
    random.Random(seed).shuffle(names)
    dev = set(names[:dev_speakers])
    train_rows = [row for row, speaker in enumerate(speakers) if speaker not in dev]
    dev_rows = [row for row, speaker in enumerate(speakers) if speaker in dev]
    return train_rows, dev_rows


def duration_subset(rows: Sequence[int], durations: Sequence[float], seconds: float, seed: int = 0) -> list[int]:
    """Rows drawn in a seeded random order until their durations reach ``seconds`` (kept in input order).

    The last row drawn crosses the budget, so the subset lasts at least ``seconds`` unless
    ``rows`` last less in all (then every row is kept).
    """
    if seconds <= 0:
        raise ValueError(f"subset duration must be positive, got {seconds} s")
    order = list(rows)
    random.Random(seed).shuffle(order)
    chosen, total = set(), 0.0
    for row in order:
        if total >= seconds:
            break
        chosen.add(row)
        total += float(durations[row])
    return [row for row in rows if row in chosen]


def _records(dataset, source: str) -> list[dict[str, Any]]:
    """Manifest rows of a map-style source (read without decoding any audio)."""
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        raise ValueError(f"{source}: a streamed source cannot be split; split a local source")
    if "text" not in dataset.column_names:
        raise ValueError(f"{source}: has no transcripts; a train/dev split is for labeled data")
    table = dataset.with_format(None)
    records = []
    for audio, text, speaker, utterance_id, duration in zip(
            table["audio"], table["text"], table["speaker_id"], table["id"], table["duration"]):
        path = audio.get("path") if isinstance(audio, Mapping) else None
        if not path or not Path(path).is_file():
            raise ValueError(f"{source}: utterance {utterance_id} has no audio file on disk ({path!r}); only local "
                             "sources can be split into manifests")
        records.append({"path": str(Path(path).resolve()), "text": text, "speaker_id": speaker, "id": utterance_id,
                        "duration": f"{duration:.4f}"})
    return records


def write_manifest(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    """A TSV manifest with `MANIFEST_COLUMNS` (what `hfspeech.data.load_manifest` reads)."""
    for record in records:
        for column in ("text", "speaker_id", "id"):
            if any(char in str(record[column]) for char in "\t\n"):
                raise ValueError(f"utterance {record['id']}: its {column} holds a tab or newline, which a TSV "
                                 "manifest cannot carry; clean the source")
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, MANIFEST_COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows({column: record[column] for column in MANIFEST_COLUMNS} for record in records)


def write_split(source: str, output_dir: str | Path, dev_speakers: int, subsets: Mapping[str, float] | None = None,
                seed: int = 0, split: str | None = None) -> dict[str, Any]:
    """Split a labeled local source by speaker and write ``train.tsv``, ``dev.tsv`` and one
    ``train_NAME.tsv`` per ``subsets`` entry (NAME -> seconds, drawn from the training side).

    Returns the summary also written to ``split.json``: per manifest its utterances, hours
    and speakers, and the dev speakers.
    """
    from .sources import load_source

    records = _records(load_source(source, split=split), source)
    train, dev = split_by_speaker([record["speaker_id"] for record in records], dev_speakers, seed, source)
    durations = [float(record["duration"]) for record in records]
    parts = {"train": train, "dev": dev}
    for name, seconds in (subsets or {}).items():
        parts[f"train_{name}"] = duration_subset(train, durations, seconds, seed)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"source": source, "seed": seed, "manifests": {},
                               "dev_speakers": sorted({records[row]["speaker_id"] for row in dev})}
    for name, rows in parts.items():
        write_manifest(output / f"{name}.tsv", [records[row] for row in rows])
        summary["manifests"][name] = {
            "path": str(output / f"{name}.tsv"), "utterances": len(rows),
            "hours": sum(durations[row] for row in rows) / 3600,
            "speakers": len({records[row]["speaker_id"] for row in rows})}
    (output / "split.json").write_text(json.dumps(summary, indent=2))
    return summary

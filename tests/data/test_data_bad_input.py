"""Bad input on every source kind: fail naming the file, or skip it and report it at the end.

The issue's cases — corrupt audio (unreadable header, or a valid header with corrupt frames),
an empty file, a missing transcript, a transcript for a missing file — are made in tmp_path
from the fixtures, for each kind (LibriSpeech layout, audiofolder, plain directory, manifest,
Hub parquet shards), map-style and streaming.
"""

from __future__ import annotations

import logging
import shutil
import struct
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile

from hfspeech.data import SkippedItems, StreamingBucketBatcher, load_source, skipped_items
from hfspeech.data.sources import detect_source_kind
from test_data_sources import AN4, CHAPTER, HUB_FEATURES, LIBRISPEECH, transcripts

AUDIO_PROBLEMS = ("corrupt header", "corrupt data", "empty")
LABEL_PROBLEMS = ("missing transcript", "transcript for missing file")
KIND_PROBLEMS = {
    "librispeech": AUDIO_PROBLEMS + LABEL_PROBLEMS,
    "audiofolder": AUDIO_PROBLEMS + LABEL_PROBLEMS,
    "directory": AUDIO_PROBLEMS,  # unlabeled: no transcripts to mismatch
    "manifest": AUDIO_PROBLEMS + LABEL_PROBLEMS,
    "hub": AUDIO_PROBLEMS + LABEL_PROBLEMS,
}
CASES = [(kind, problem) for kind, problems in KIND_PROBLEMS.items() for problem in problems]
LS_VICTIM = "103-1240-0006"
AN4_VICTIM = "an253-fash-b"


def flac_audio_offset(blob: bytes) -> int:
    """Byte offset of the first audio frame: after ``fLaC`` and every metadata block."""
    assert blob[:4] == b"fLaC"
    offset = 4
    while True:
        header = blob[offset]
        length = struct.unpack(">I", b"\0" + blob[offset + 1 : offset + 4])[0]
        offset += 4 + length
        if header & 0x80:  # last-metadata-block flag
            return offset


def damaged_audio(blob: bytes, problem: str) -> bytes:
    if problem == "corrupt header":
        return b"fLaC this is not a flac stream" * 10
    if problem == "empty":
        return b""
    assert problem == "corrupt data"
    start = flac_audio_offset(blob) + 64
    noise = np.random.RandomState(0).randint(0, 256, len(blob) - start).astype(np.uint8).tobytes()
    return blob[:start] + noise


def damage_file(path: Path, problem: str) -> None:
    path.write_bytes(damaged_audio(path.read_bytes(), problem))
    if problem == "corrupt data":  # the header still reads: only decoding finds the damage
        assert soundfile.info(path).frames > 0


def build_source(tmp_path: Path, kind: str, problem: str) -> tuple[str, dict, str, int]:
    """Make a ``kind`` source with one bad item; returns ``(spec, load kwargs, victim, good count)``."""
    lines = transcripts()
    if kind == "librispeech":
        root = tmp_path / "LibriSpeech"
        shutil.copytree(LIBRISPEECH / "LibriSpeech", root)
        chapter = root / "train-clean-100" / "103" / "1240"
        transcript = chapter / "103-1240.trans.txt"
        if problem == "missing transcript":
            kept = [line for line in transcript.read_text().splitlines() if not line.startswith(LS_VICTIM)]
            transcript.write_text("".join(line + "\n" for line in kept))
        elif problem == "transcript for missing file":
            (chapter / f"{LS_VICTIM}.flac").unlink()
        else:
            damage_file(chapter / f"{LS_VICTIM}.flac", problem)
        return str(root), {}, LS_VICTIM, 2
    if kind == "audiofolder":
        root = tmp_path / "an4"
        shutil.copytree(AN4, root)
        metadata = root / "metadata.csv"
        if problem == "missing transcript":  # an audio file without its metadata row
            kept = [line for line in metadata.read_text().splitlines() if AN4_VICTIM not in line]
            metadata.write_text("\n".join(kept) + "\n")
        elif problem == "transcript for missing file":
            (root / "fash" / f"{AN4_VICTIM}.flac").unlink()
        else:
            damage_file(root / "fash" / f"{AN4_VICTIM}.flac", problem)
        return str(root), {}, AN4_VICTIM, 5
    if kind in ("directory", "manifest"):
        folder = tmp_path / "clips"
        folder.mkdir()
        for utterance in lines:
            shutil.copy(CHAPTER / f"{utterance}.flac", folder)
        texts = dict(lines)
        if problem == "missing transcript":
            texts[LS_VICTIM] = ""
        elif problem == "transcript for missing file":
            (folder / f"{LS_VICTIM}.flac").unlink()
        else:
            damage_file(folder / f"{LS_VICTIM}.flac", problem)
        if kind == "directory":
            return str(folder), {}, LS_VICTIM, 2
        manifest = tmp_path / "train.tsv"
        rows = ["path\ttext"] + [f"clips/{u}.flac\t{texts[u]}" for u in sorted(texts)]
        manifest.write_text("\n".join(rows) + "\n")
        return str(manifest), {}, LS_VICTIM, 2
    assert kind == "hub"
    utterances = sorted(lines)
    audio = [{"bytes": (CHAPTER / f"{u}.flac").read_bytes(), "path": f"{u}.flac"} for u in utterances]
    texts = [lines[u] for u in utterances]
    victim = utterances.index(LS_VICTIM)
    if problem == "missing transcript":
        texts[victim] = ""
    elif problem == "transcript for missing file":
        audio[victim] = {"bytes": None, "path": f"{LS_VICTIM}.flac"}
    else:
        audio[victim]["bytes"] = damaged_audio(audio[victim]["bytes"], problem)
    table = datasets.Dataset.from_dict({
        "file": [f"{u}.flac" for u in utterances], "audio": audio, "text": texts,
        "speaker_id": [103] * 3, "chapter_id": [1240] * 3, "id": utterances,
    }, features=HUB_FEATURES)
    shard = tmp_path / "train.100-00000-of-00001.parquet"
    table.to_parquet(str(shard), batch_size=8)  # explicit: no size estimate that stats a missing path
    return "librispeech:clean/train.100", {"data_files": [str(shard)]}, LS_VICTIM, 2


def read_all(dataset) -> list[str]:
    """Iterate the whole dataset, decoding every example's audio (map-style decodes on access)."""
    ids = []
    for example in dataset:
        assert example["audio"].size > 0
        ids.append(example["id"])
    return ids


@pytest.mark.parametrize("streaming", [False, True], ids=["map", "streaming"])
@pytest.mark.parametrize("kind,problem", CASES)
def test_bad_item_fails_naming_the_file(tmp_path, kind, problem, streaming):
    spec, kwargs, victim, _ = build_source(tmp_path, kind, problem)
    if kind != "hub":
        assert detect_source_kind(spec) == kind
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        read_all(load_source(spec, streaming=streaming, **kwargs))
    assert victim in str(error.value)
    assert "skip_bad=True" in str(error.value)  # the message names the fix


@pytest.mark.parametrize("streaming", [False, True], ids=["map", "streaming"])
@pytest.mark.parametrize("kind,problem", CASES)
def test_skip_bad_skips_and_reports_every_item_at_the_end(tmp_path, caplog, kind, problem, streaming):
    spec, kwargs, victim, good = build_source(tmp_path, kind, problem)
    report = SkippedItems()
    with caplog.at_level(logging.WARNING, logger="hfspeech.data"):
        dataset = load_source(spec, streaming=streaming, skip_bad=True, skipped=report, **kwargs)
        if streaming:
            with report.reporting("test pass"):
                ids = read_all(dataset)
        else:
            ids = read_all(dataset)
    assert len(ids) == good and not any(victim in i for i in ids)
    assert skipped_items(dataset) is report
    assert len(report) == 1 and victim in str(next(iter(report)))
    messages = [r.getMessage() for r in caplog.records]
    summaries = [m for m in messages if "skipped 1 bad item(s)" in m]
    assert summaries and victim in summaries[-1]
    if streaming:
        assert messages[-1] == summaries[-1]  # the full report comes at the end of the pass
    else:
        assert len(summaries) == 1  # one summary when loading ends; nothing more on access


def test_streaming_batcher_reports_once_per_epoch_at_its_end(tmp_path, caplog):
    spec, _, _, _ = build_source(tmp_path, "directory", "corrupt data")
    damage_file(Path(spec) / "103-1240-0009.flac", "corrupt header")
    stream = load_source(spec, streaming=True, skip_bad=True)
    batcher = StreamingBucketBatcher(stream, max_seconds=60.0, buffer_size=1, shuffle_buffer=0)
    assert batcher.skipped is skipped_items(stream)
    with caplog.at_level(logging.WARNING, logger="hfspeech.data"):
        for epoch in range(2):
            batcher.set_epoch(epoch)
            seen = []
            for batch in batcher:
                seen += [e["id"] for e in batch]
                assert not any("bad item(s)" in r.getMessage() and f"epoch {epoch}" in r.getMessage()
                               for r in caplog.records)  # not before the epoch ends
            assert seen == ["103-1240-0004"]
    summaries = [r.getMessage() for r in caplog.records if "skipped 2 bad item(s)" in r.getMessage()]
    assert len(summaries) == 2 and "epoch 0" in summaries[0] and "epoch 1" in summaries[1]
    assert all("103-1240-0006.flac" in s and "103-1240-0009.flac" in s for s in summaries)
    immediate = [r for r in caplog.records if "skipping bad item" in r.getMessage()]
    assert len(immediate) == 1  # the first skip is announced, the rest wait for the summary
    assert len(batcher.skipped) == 2 and sorted(Path(p).name for p in batcher.skipped.locations()) == [
        "103-1240-0006.flac", "103-1240-0009.flac"]


def test_report_follows_the_dataset_through_transformations(tmp_path):
    spec, _, _, _ = build_source(tmp_path, "librispeech", "corrupt data")
    mapped = load_source(spec, skip_bad=True)
    report = skipped_items(mapped)
    assert report is not None and len(report) == 1 and "103-1240-0006" in report
    assert skipped_items(mapped.select([0])) is report and skipped_items(mapped.shuffle(seed=0)) is report
    assert report.as_dicts()[0]["location"].endswith("103-1240-0006.flac")
    assert "cannot decode audio" in report.as_dicts()[0]["reason"]
    stream = load_source(spec, streaming=True, skip_bad=True)
    from datasets.distributed import split_dataset_by_node

    for derived in (stream.shuffle(seed=0, buffer_size=4), split_dataset_by_node(stream, rank=0, world_size=2)):
        assert skipped_items(derived) is skipped_items(stream)
    assert skipped_items(datasets.Dataset.from_dict({"a": [1]})) is None


def test_stray_audio_file_and_absent_paths(tmp_path):
    folder = tmp_path / "an4"
    shutil.copytree(AN4, folder)
    shutil.copy(CHAPTER / f"{LS_VICTIM}.flac", folder / "stray.flac")
    with pytest.raises(ValueError, match="stray.flac: audio file has no row"):
        load_source(str(folder))
    assert len(load_source(str(folder), skip_bad=True)) == 6
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_source(str(tmp_path / "absent"))

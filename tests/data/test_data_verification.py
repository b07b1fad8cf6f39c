"""Verifying audio: `hfspeech data info --verify`, `verify_sources` for training runs, and the
parallel decoding pass behind them, on AN4 recordings damaged the ways real files are: cut off
mid-frame (the first 3,000 bytes of a file: its header still reads), cut at a frame boundary (it
decodes, but to less than its header says), and empty."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import soundfile

from hfspeech.cli import main
from hfspeech.data import load_source
from hfspeech.data.audio import decode_audio
from hfspeech.data.verification import find_bad_audio, verify_sources
from hfspeech.training.arguments import FinetuningArguments, PretrainingArguments, parse_arguments
from helpers import FIXTURES

AN4 = FIXTURES / "data" / "an4"


def flac_frame_offsets(blob: bytes) -> list[int]:
    """Byte offsets of the FLAC frame headers (sync code 0xFFF8/0xFFF9 after the metadata blocks)."""
    assert blob[:4] == b"fLaC"
    offset = 4
    while True:
        header = blob[offset]
        offset += 4 + struct.unpack(">I", b"\0" + blob[offset + 1 : offset + 4])[0]
        if header & 0x80:  # last metadata block
            break
    return [i for i in range(offset, len(blob) - 1) if blob[i] == 0xFF and blob[i + 1] in (0xF8, 0xF9)]


def damaged_copy(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """AN4 audiofolder with three bad files; returns it and {file name: what the reason must say}."""
    root = Path(shutil.copytree(AN4, tmp_path / "an4"))
    cut_mid_frame = root / "fash" / "an251-fash-b.flac"
    cut_mid_frame.write_bytes(cut_mid_frame.read_bytes()[:3000])
    assert soundfile.info(cut_mid_frame).frames > 0  # the header is intact
    cut_at_frame = root / "fash" / "an253-fash-b.flac"
    blob = cut_at_frame.read_bytes()
    cut_at_frame.write_bytes(blob[: flac_frame_offsets(blob)[-1]])  # without its last frame
    header_seconds = soundfile.info(cut_at_frame).duration
    decoded_seconds = decode_audio(str(cut_at_frame))[0].size / 16000
    assert decoded_seconds < header_seconds - 0.1  # decodes without an error, but short
    (root / "fbbh" / "an86-fbbh-b.flac").write_bytes(b"")
    return root, {"an251-fash-b.flac": "cannot decode audio",
                  "an253-fash-b.flac": f"decodes to {decoded_seconds:.3f} s but its header says {header_seconds:.3f} s",
                  "an86-fbbh-b.flac": "audio file is empty"}


def test_verify_lists_every_bad_file_with_its_reason_and_fails(tmp_path, capsys):
    root, expected = damaged_copy(tmp_path)
    assert main(["data", "info", str(root), "--verify", "--json"]) == 1
    summary = json.loads(capsys.readouterr().out)
    found = {Path(item["location"]).name: item["reason"] for item in summary["skipped"]}
    assert sorted(found) == sorted(expected)
    for name, reason in expected.items():
        assert reason in found[name], (name, found[name])
    assert summary["utterances"] == 3 and summary["verified"]["bad_items"] == 3
    assert main(["data", "info", str(root), "--verify"]) == 1
    captured = capsys.readouterr()
    assert "bad:          3 bad item(s)" in captured.out and "an253-fash-b.flac: decodes to" in captured.out
    assert "3 bad item(s) in" in captured.err and "--skip-bad" in captured.err
    assert main(["data", "info", str(root), "--verify", "--skip-bad"]) == 0  # left out, listed, not an error
    assert "skipped:      3 bad item(s)" in capsys.readouterr().out


def test_without_verify_a_file_cut_behind_its_header_passes_as_good(tmp_path, capsys):
    root, _ = damaged_copy(tmp_path)
    (root / "fbbh" / "an86-fbbh-b.flac").unlink()
    (root / "metadata.csv").write_text("".join(line + "\n" for line in (root / "metadata.csv").read_text().splitlines()
                                               if "an86-fbbh-b" not in line))
    assert main(["data", "info", str(root), "--json"]) == 0  # headers only: the two cut files look fine
    assert json.loads(capsys.readouterr().out)["utterances"] == 5
    assert main(["data", "info", str(root), "--verify", "--json"]) == 1
    assert len(json.loads(capsys.readouterr().out)["skipped"]) == 2
    assert main(["data", "info", str(AN4), "--verify"]) == 0
    assert "verified:     every file decoded" in capsys.readouterr().out


def test_verify_on_a_directory_without_audio_says_so(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no audio here\n")
    assert main(["data", "info", str(tmp_path / "notes"), "--verify"]) == 2
    error = capsys.readouterr().err
    assert f"{tmp_path / 'notes'}: no audio files (.flac, .wav" in error and "found below it" in error


def test_parallel_decoding_finds_the_same_files_in_row_order(tmp_path):
    root, expected = damaged_copy(tmp_path)
    table = load_source(str(root), skip_bad=True).with_format(None)  # the 3 good files
    assert find_bad_audio(table, "good", workers=2) == []
    records = datasets_table_of(root)
    serial, parallel = find_bad_audio(records, "an4", workers=1), find_bad_audio(records, "an4", workers=2)
    assert serial == parallel
    assert [Path(item.location).name for _, item in parallel] == \
        [Path(entry["path"]).name for entry in records["audio"] if Path(entry["path"]).name in expected]
    assert [row for row, _ in parallel] == sorted(row for row, _ in parallel)


def datasets_table_of(root: Path):
    """Record table of every file under ``root`` (independent of the loaders): audio + id."""
    import datasets

    paths = sorted(root.rglob("*.flac"))
    return datasets.Dataset.from_dict({"audio": [{"bytes": None, "path": str(p)} for p in paths],
                                       "id": [p.stem for p in paths]})


def test_verify_sources_checks_a_training_runs_data(tmp_path):
    root, expected = damaged_copy(tmp_path)
    with pytest.raises(ValueError) as error:
        verify_sources(f"{AN4},{root}")
    message = str(error.value)
    assert "skipped 3 bad item(s)" in message and "remove or re-export these files" in message
    for name, reason in expected.items():
        assert name in message and reason in message
    assert len(verify_sources(str(AN4))) == 0
    assert len(verify_sources(load_source(str(AN4)))) == 0
    (root / "fbbh" / "an86-fbbh-b.flac").unlink()
    (root / "metadata.csv").write_text("".join(line + "\n" for line in (root / "metadata.csv").read_text().splitlines()
                                               if "an86-fbbh-b" not in line))
    loaded = load_source(str(root))  # headers read fine: a training run would fail hours in
    with pytest.raises(ValueError, match=r"dataset: skipped 2 bad item\(s\)"):
        verify_sources(loaded)
    with pytest.raises(ValueError, match="a streamed source cannot be verified up front"):
        verify_sources(load_source(str(AN4), streaming=True))


def test_training_arguments_have_verify_data_off_by_default(tmp_path):
    assert PretrainingArguments(output_dir="o").verify_data is False
    assert FinetuningArguments(output_dir="o", model="m").verify_data is False
    parsed = parse_arguments(FinetuningArguments, None, ["output_dir=o", "model=m", "verify_data=true"])
    assert parsed.verify_data is True


def test_pretraining_with_verify_data_stops_before_the_first_update(tmp_path):
    from hfspeech import SpeechEncoderConfig
    from hfspeech.training.pretrain_data import build_pretraining_batches

    root, expected = damaged_copy(tmp_path)
    (root / "fbbh" / "an86-fbbh-b.flac").unlink()
    (root / "metadata.csv").write_text("".join(line + "\n" for line in (root / "metadata.csv").read_text().splitlines()
                                               if "an86-fbbh-b" not in line))
    config = SpeechEncoderConfig.from_preset("tiny")
    arguments = dict(output_dir=str(tmp_path / "run"), train_data=str(root), min_sample_seconds=0.1)
    with pytest.raises(ValueError, match=r"skipped 2 bad item\(s\)") as error:
        build_pretraining_batches(PretrainingArguments(**arguments, verify_data=True), config)
    assert "an251-fash-b.flac: cannot decode audio" in str(error.value)
    assert f"an253-fash-b.flac: {expected['an253-fash-b.flac']}" in str(error.value)  # only decoding finds it

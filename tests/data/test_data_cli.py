"""`hfspeech data info` on every source kind (in-process, through hfspeech.cli.main)."""

from __future__ import annotations

import json
import shutil

import datasets
import pytest
import soundfile

from hfspeech.cli import main
from test_data_sources import write_hub_shards
from helpers import FIXTURES as TEST_FIXTURES

FIXTURES = TEST_FIXTURES / "data"


def info(capsys, *args: str) -> dict:
    assert main(["data", "info", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def seconds(paths) -> float:
    return sum(soundfile.info(p).duration for p in paths)


def test_info_librispeech_native(capsys):
    summary = info(capsys, str(FIXTURES / "librispeech"), "--split", "train-clean-100")
    flacs = list((FIXTURES / "librispeech").rglob("*.flac"))
    assert summary["utterances"] == 3 and summary["speakers"] == 1
    assert summary["hours"] == pytest.approx(seconds(flacs) / 3600)
    assert summary["sample_rates"] == {"16000": 3} and summary["out_of_vocabulary"] == {}


def test_info_audiofolder_8khz_and_text_output(capsys):
    summary = info(capsys, str(FIXTURES / "fsdd"))
    assert summary["sample_rates"] == {"8000": 6} and summary["speakers"] == 2
    assert summary["hours"] == pytest.approx(seconds((FIXTURES / "fsdd").glob("*.wav")) / 3600)
    assert main(["data", "info", str(FIXTURES / "an4")]) == 0
    text = capsys.readouterr().out
    assert "utterances:   6" in text and "16000 Hz (6)" in text and "speakers:     2" in text


def test_info_directory_manifest_and_oov(capsys, tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    for wav in sorted((FIXTURES / "fsdd").glob("*.wav"))[:3]:
        shutil.copy(wav, folder)
    summary = info(capsys, str(folder))
    assert summary["utterances"] == 3 and not summary["labeled"]
    manifest = tmp_path / "m.csv"
    rows = ["path,text"] + [f"{p},{t}" for p, t in zip(sorted(folder.glob("*.wav")), ["zero 0", "one!", "two"])]
    manifest.write_text("\n".join(rows) + "\n")
    summary = info(capsys, str(manifest))
    assert summary["affected_utterances"] == 2
    assert summary["out_of_vocabulary"]["0"]["utterances"] == 1 and summary["out_of_vocabulary"]["!"]["occurrences"] == 1


def test_info_hub_spec_streams(capsys, tmp_path, monkeypatch):
    shards = write_hub_shards(tmp_path)
    real_load = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda repo, config, split, streaming: real_load(
        "parquet", data_files={split: shards}, split=split, streaming=streaming))
    summary = info(capsys, "librispeech:clean/train.100")
    assert summary["streamed"] and summary["utterances"] == 3 and summary["speakers"] == 1
    assert summary["hours"] == pytest.approx(seconds((FIXTURES / "librispeech").rglob("*.flac")) / 3600, rel=1e-4)


def test_info_reports_bad_input_with_exit_code_2(capsys, tmp_path):
    folder = tmp_path / "an4"
    shutil.copytree(FIXTURES / "an4", folder)
    (folder / "fash" / "an251-fash-b.flac").write_bytes(b"")
    assert main(["data", "info", str(folder)]) == 2
    assert "an251-fash-b.flac: audio file is empty" in capsys.readouterr().err
    summary = info(capsys, str(folder), "--skip-bad")
    assert summary["utterances"] == 5 and len(summary["skipped"]) == 1
    assert summary["skipped"][0]["location"].endswith("an251-fash-b.flac")
    assert "empty" in summary["skipped"][0]["reason"]
    streamed = info(capsys, str(folder), "--skip-bad", "--streaming")
    assert streamed["utterances"] == 5 and [s["location"] for s in streamed["skipped"]] == [
        s["location"] for s in summary["skipped"]]
    assert main(["data", "info", str(folder), "--skip-bad"]) == 0
    assert "skipped:      1 bad item(s)" in capsys.readouterr().out


@pytest.mark.parametrize("streaming", [False, True], ids=["map", "streaming"])
def test_info_lists_corrupt_audio_behind_a_valid_header_at_the_end(capsys, tmp_path, streaming):
    from test_data_bad_input import build_source

    spec, _, victim, good = build_source(tmp_path, "manifest", "corrupt data")
    flags = ["--streaming"] if streaming else []
    assert main(["data", "info", spec, "--skip-bad", *flags]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"utterances:   {good}" in lines
    assert lines[-2] == "skipped:      1 bad item(s)"  # the list closes the output
    assert lines[-1].startswith(f"  {tmp_path / 'clips' / victim}.flac: cannot decode audio")
    if streaming:  # map-style info reads headers only unless --skip-bad asks to decode
        assert main(["data", "info", spec, *flags]) == 2
        error = capsys.readouterr().err
        assert f"{victim}.flac: cannot decode audio" in error and "--skip-bad" in error


def test_info_librilight_subset(capsys, tmp_path):
    chapter_source = FIXTURES / "librispeech" / "LibriSpeech" / "train-clean-100" / "103" / "1240"
    lines = dict(line.split(" ", 1) for line in (chapter_source / "103-1240.trans.txt").read_text().splitlines())
    root = tmp_path / "librispeech_finetuning"
    for folder, utterance in zip(("1h/0/clean", "1h/3/other", "9h/clean"), sorted(lines)):
        chapter = root / folder / "103" / "1240"
        chapter.mkdir(parents=True)
        shutil.copy(chapter_source / f"{utterance}.flac", chapter)
        (chapter / "103-1240.trans.txt").write_text(f"{utterance} {lines[utterance]}\n")
    for subset, count in (("10min", 1), ("1h", 2), ("10h", 3)):
        summary = info(capsys, str(root), "--split", subset)
        assert summary["utterances"] == count and summary["speakers"] == 1
        flacs = [chapter_source / f"{u}.flac" for u in sorted(lines)[:count]]
        assert summary["hours"] == pytest.approx(seconds(flacs) / 3600)

"""Speaker-disjoint splits and duration subsets (`hfspeech data split`) on the real AN4 fixtures."""

import csv
import json
from pathlib import Path

import pytest

from hfspeech.cli import main as cli_main
from hfspeech.data import load_source
from hfspeech.data.splits import duration_subset, split_by_speaker
from helpers import FIXTURES

AN4 = FIXTURES / "an4"


def test_dev_speakers_never_train_and_the_draw_is_seeded():
    speakers = ["a", "a", "b", "c", "c", "c", "d"]
    train, dev = split_by_speaker(speakers, 2, seed=3)
    assert sorted(train + dev) == list(range(7))
    assert {speakers[i] for i in train}.isdisjoint({speakers[i] for i in dev})
    assert len({speakers[i] for i in dev}) == 2
    assert split_by_speaker(speakers, 2, seed=3) == (train, dev)
    assert any(split_by_speaker(speakers, 2, seed=seed) != (train, dev) for seed in range(10))


@pytest.mark.parametrize("speakers, dev, message", [
    (["a", "a", "a"], 1, "every utterance is from speaker 'a'"),
    (["a", "b"], 2, "between 1 and 1"),
    (["a", "b"], 0, "between 1 and 1"),
    (["a", ""], 1, "no speaker_id"),
    ([], 1, "no utterances"),
])
def test_splits_that_cannot_be_made_are_refused(speakers, dev, message):
    with pytest.raises(ValueError, match=message):
        split_by_speaker(speakers, dev, source="corpus")


def test_duration_subset_stops_once_the_budget_is_reached():
    durations = [1.0, 2.0, 3.0, 4.0, 5.0]
    subset = duration_subset(range(5), durations, 6.5, seed=0)
    total = sum(durations[i] for i in subset)
    assert total >= 6.5 and total - max(durations[i] for i in subset) < 6.5
    assert subset == sorted(subset)
    assert duration_subset(range(5), durations, 100.0) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="positive"):
        duration_subset(range(5), durations, 0)


def test_split_command_writes_manifests_every_loader_reads(tmp_path):
    assert cli_main(["data", "split", str(AN4), str(tmp_path), "--dev-speakers", "1", "--subset", "short=3",
                     "--seed", "1"]) == 0
    summary = json.loads((tmp_path / "split.json").read_text())
    assert summary["manifests"]["train"]["speakers"] == 1 and summary["manifests"]["dev"]["speakers"] == 1
    train, dev = load_source(str(tmp_path / "train.tsv")), load_source(str(tmp_path / "dev.tsv"))
    assert len(train) + len(dev) == 7
    assert set(train.with_format(None)["speaker_id"]).isdisjoint(dev.with_format(None)["speaker_id"])
    original = load_source(str(AN4)).with_format(None)
    texts = dict(zip(original["id"], original["text"]))
    for row in csv.DictReader(open(tmp_path / "train.tsv"), delimiter="\t"):
        assert Path(row["path"]).is_absolute() and texts[row["id"]] == row["text"]
    short = load_source(str(tmp_path / "train_short.tsv"))
    assert 3.0 <= sum(short.with_format(None)["duration"]) and len(short) < len(train)
    assert cli_main(["data", "split", str(AN4), str(tmp_path / "bad"), "--dev-speakers", "2"]) == 2
    assert cli_main(["data", "split", str(AN4), str(tmp_path / "bad"), "--dev-speakers", "1", "--subset", "x"]) == 2

"""The demo's flite corpus: voices per split and excluded dev sentences."""

from __future__ import annotations

import csv
import itertools
import re
import shutil

import pytest

from hfspeech.demo_corpus import SLOTS, TEMPLATES, TRAIN_VOICES, build_corpus

pytestmark = pytest.mark.skipif(shutil.which("flite") is None, reason="flite is not installed")


def every_sentence() -> list[str]:
    sentences = []
    for template in TEMPLATES:
        slots = re.findall(r"{(\w+)}", template)
        for values in itertools.product(*(SLOTS[slot] for slot in slots)):
            sentences.append(template.format(**dict(zip(slots, values))))
    return sentences


def test_dev_sentences_avoid_excluded_ones_and_use_the_given_voices(tmp_path):
    allowed = {"OPEN THE GARAGE DOOR", "OPEN THE OFFICE DOOR"}
    exclude = frozenset(every_sentence()) - allowed
    summary = build_corpus(tmp_path, train_sentences=0, dev_sentences=2, seed=5, dev_voices=TRAIN_VOICES[:2],
                           exclude_dev=exclude)
    with open(tmp_path / "dev" / "metadata.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert summary["dev"]["voices"] == list(TRAIN_VOICES[:2]) and len(rows) == 4
    assert [row["speaker_id"] for row in rows] == list(TRAIN_VOICES[:2]) * 2
    assert {row["text"] for row in rows} <= allowed
    assert rows[0]["text"] == rows[1]["text"] and rows[2]["text"] == rows[3]["text"]  # one sentence, both voices
    with pytest.raises(ValueError, match="exclude_dev"):
        build_corpus(tmp_path / "none", train_sentences=0, dev_sentences=1, exclude_dev=frozenset(every_sentence()))

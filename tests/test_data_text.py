"""Text normalisation to the CTC vocabulary and the out-of-vocabulary report (hand-computed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hfspeech.data import TextNormalizer, load_source, out_of_vocabulary_report

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def test_case_whitespace_and_apostrophes_fold_onto_the_vocabulary():
    normalizer = TextNormalizer()
    assert normalizer("  Lynde\u2019s   hollow\tit was ") == "LYNDE'S HOLLOW IT WAS"
    assert normalizer("MISSUS RACHEL") == "MISSUS RACHEL"


def test_unknown_characters_raise_by_default_naming_the_utterance():
    with pytest.raises(ValueError, match=r"utterance 42-7-1: characters \[',', '3'\] are outside"):
        TextNormalizer()("Hello, 3 worlds", utterance_id="42-7-1")


def test_remove_and_space_policies_and_hook():
    assert TextNormalizer(on_unknown="remove")("don't-stop, now!") == "DON'TSTOP NOW"
    assert TextNormalizer(on_unknown="space")("don't-stop, now!") == "DON'T STOP NOW"
    digits = {"3": " three ", "7": " seven "}
    hook = lambda text: "".join(digits.get(c, c) for c in text)  # noqa: E731
    assert TextNormalizer(hook=hook)("room 37") == "ROOM THREE SEVEN"
    with pytest.raises(ValueError, match="on_unknown"):
        TextNormalizer(on_unknown="ignore")


def test_out_of_vocabulary_report_counts_characters_and_utterances():
    texts = ["Hello, world.", "it's 3 o'clock", "plain words", "a-b-c, 3"]
    report = out_of_vocabulary_report(texts, ids=["u1", "u2", "u3", "u4"])
    # ',' in u1 and u4 (2 occurrences); '.' in u1; '3' in u2 and u4; '-' twice in u4.
    assert report.total_utterances == 4
    assert report.affected_utterances == 3
    assert dict(report.occurrences) == {",": 2, ".": 1, "3": 2, "-": 2}
    assert dict(report.utterances) == {",": 2, ".": 1, "3": 2, "-": 1}
    assert report.as_dict()["-"] == {"occurrences": 2, "utterances": 1, "example_id": "u4"}
    assert "3 of 4 utterances" in str(report)


def test_real_transcripts_are_in_vocabulary():
    dataset = load_source(str(FIXTURES / "an4"))
    report = out_of_vocabulary_report(dataset["text"], dataset["id"])
    assert report.affected_utterances == 0 and report.total_utterances == 6
    normalizer = TextNormalizer()
    assert [normalizer(t) for t in dataset["text"]] == dataset["text"]

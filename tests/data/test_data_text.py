"""Text normalisation to the CTC vocabulary and the out-of-vocabulary report (hand-computed)."""

from __future__ import annotations

from collections import Counter

import pytest

from hfspeech.data import TextNormalizer, load_source, out_of_vocabulary_report
from hfspeech.data.text import CTC_ALPHABET, describe_removed
from helpers import FIXTURES as TEST_FIXTURES

FIXTURES = TEST_FIXTURES / "data"


def test_case_whitespace_and_apostrophes_fold_onto_the_vocabulary():
    normalizer = TextNormalizer()
    assert normalizer("  Lynde\u2019s   hollow\tit was ") == "LYNDE'S HOLLOW IT WAS"
    assert normalizer("MISSUS RACHEL") == "MISSUS RACHEL"


def test_unknown_characters_raise_by_default_naming_the_utterance():
    with pytest.raises(ValueError, match=r"utterance 42-7-1: characters \[',', '3'\] are outside"):
        TextNormalizer()("Hello, 3 worlds", utterance_id="42-7-1")


def test_remove_and_space_policies_and_hook():
    assert TextNormalizer(on_unknown="remove")("don't+stop, now!") == "DON'TSTOP NOW"
    assert TextNormalizer(on_unknown="space")("don't+stop, now!") == "DON'T STOP NOW"
    assert TextNormalizer(on_unknown="space")("don't-stop, now!") == "DON'T STOP NOW"
    digits = {"3": " three ", "7": " seven "}
    hook = lambda text: "".join(digits.get(c, c) for c in text)  # noqa: E731
    assert TextNormalizer(hook=hook)("room 37") == "ROOM THREE SEVEN"
    with pytest.raises(ValueError, match="on_unknown"):
        TextNormalizer(on_unknown="ignore")


def test_out_of_vocabulary_report_counts_characters_and_utterances():
    texts = ["Hello, world.", "it's 3 o'clock", "plain words", "a+b+c, 3"]
    report = out_of_vocabulary_report(texts, ids=["u1", "u2", "u3", "u4"])
    # ',' in u1 and u4 (2 occurrences); '.' in u1; '3' in u2 and u4; '+' twice in u4.
    assert report.total_utterances == 4
    assert report.affected_utterances == 3
    assert dict(report.occurrences) == {",": 2, ".": 1, "3": 2, "+": 2}
    assert dict(report.utterances) == {",": 2, ".": 1, "3": 2, "+": 1}
    assert report.as_dict()["+"] == {"occurrences": 2, "utterances": 1, "example_id": "u4"}
    assert "3 of 4 utterances" in str(report)


def test_real_transcripts_are_in_vocabulary():
    dataset = load_source(str(FIXTURES / "an4"))
    report = out_of_vocabulary_report(dataset["text"], dataset["id"])
    assert report.affected_utterances == 0 and report.total_utterances == 6
    normalizer = TextNormalizer()
    assert [normalizer(t) for t in dataset["text"]] == dataset["text"]


def test_one_rule_set_for_apostrophes_accents_dashes_quotes_and_digits():
    normalizer = TextNormalizer(on_unknown="remove")
    raw = "\u2018Caf\u00e9\u2019 na\u00efve\u2014Zo\u00eb\u02bcs well-known self_made and/or `tis 1/2"
    # by hand: quotes ‘ ’ ` and ʼ -> ', é ï ë -> E I E, — - _ / separate words, the digits go,
    # and apostrophes at a word's edge ('CAFE', 'TIS) are quotation marks
    text, removed = normalizer.normalize(raw)
    assert text == "CAFE NAIVE ZOE'S WELL KNOWN SELF MADE AND OR TIS"
    assert removed == Counter({"1": 1, "2": 1})
    with pytest.raises(ValueError, match=r"utterance u7: characters \['1', '2'\]"):
        TextNormalizer()(raw, "u7")  # digits are reported, never guessed at
    assert TextNormalizer()("Zo\u00eb\u2019s cafe\u0301") == "ZOE'S CAFE"  # composed and decomposed accents
    lower = TextNormalizer(vocabulary="abcdefghijklmnopqrstuvwxyz' ")
    assert lower("Don\u2019t GO") == "don't go"  # case follows the vocabulary
    assert TextNormalizer(vocabulary="aAbB ")("Ab ba") == "Ab ba"  # mixed-case vocabulary: case kept
    assert TextNormalizer(vocabulary=set(CTC_ALPHABET + " -"))("well-known") == "WELL-KNOWN"  # in the vocabulary


def test_removed_characters_are_described_with_the_digits_named():
    assert describe_removed(Counter(), "LM text") == ""
    line = describe_removed(Counter({",": 5, "1": 2, "9": 1}), "LM text")
    assert line.startswith("LM text: removed 8 characters") and "3 of them are digits" in line and "hook" in line


def test_the_decoders_vocabulary_and_the_tokenizer_use_this_alphabet():
    from hfspeech.decoding.vocabulary import DEFAULT_LABELS, CTCVocabulary
    from hfspeech.processing.tokenization import LIBRISPEECH_VOCABULARY

    assert CTC_ALPHABET == "'ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    assert "".join(DEFAULT_LABELS[5:]) == CTC_ALPHABET == "".join(list(LIBRISPEECH_VOCABULARY)[5:])
    vocabulary = CTCVocabulary(DEFAULT_LABELS)
    assert vocabulary.normalize_text("Zo\u00eb\u2019s well-known caf\u00e9, 3") == \
        ("ZOE'S WELL KNOWN CAFE", Counter({",": 1, "3": 1}))

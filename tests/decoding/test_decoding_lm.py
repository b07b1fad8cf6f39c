"""KenLM building: normalisation, lmplz/build_binary outputs, </s> handling, pruning, bad input."""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

import kenlm
import pytest

from hfspeech.decoding import CTCVocabulary, DecoderSpec, build_decoder, build_language_model, load_vocabulary
from hfspeech.decoding import lm_build
from hfspeech.decoding.lm_build import ensure_end_of_sentence_unigram, iter_sentences, read_arpa_unigrams
from helpers import FIXTURES as TEST_FIXTURES, ROOT

FIXTURES = TEST_FIXTURES / "decoding"
TEXT = FIXTURES / "austen-emma-head.txt"


@pytest.fixture(scope="module")
def vocabulary() -> CTCVocabulary:
    return load_vocabulary(None)


@pytest.fixture(scope="module")
def built(tmp_path_factory, vocabulary):
    return build_language_model([TEXT], tmp_path_factory.mktemp("lm"), vocabulary, order=3)


def arpa_counts(path: Path) -> dict[int, int]:
    header = path.read_text(encoding="utf-8").split("\n\n")[0]
    return {int(order): int(count) for order, count in re.findall(r"ngram (\d)=(\d+)", header)}


def test_normalize_text_matches_hand_written_examples(vocabulary):
    assert vocabulary.normalize_text("Emma Woodhouse, handsome, clever,")[0] == "EMMA WOODHOUSE HANDSOME CLEVER"
    assert vocabulary.normalize_text("\u201cI don\u2019t--know!\u201d said Mr. Knightley")[0] == \
        "I DON'T KNOW SAID MR KNIGHTLEY"
    text, removed = vocabulary.normalize_text("Caf\u00e9 'twenty-one' 1816.")
    assert text == "CAFE TWENTY ONE"
    assert removed == Counter({"1": 2, "8": 1, "6": 1, ".": 1})


def test_built_lm_loads_in_kenlm_and_matches_the_text(built, vocabulary):
    assert built.binary_path.is_file() and built.arpa_path.is_file()
    binary, arpa = kenlm.Model(str(built.binary_path)), kenlm.Model(str(built.arpa_path))
    assert binary.order == arpa.order == 3
    sentence = "SHE WAS THE YOUNGEST OF THE TWO DAUGHTERS"  # from the text
    assert binary.score(sentence) == pytest.approx(arpa.score(sentence), abs=1e-4)
    assert binary.score(sentence) > binary.score("DAUGHTERS TWO THE OF YOUNGEST THE WAS SHE")
    # Independent word count: every word of the normalised sentences, by plain str.split.
    words = set()
    for sentence_text in iter_sentences(TEXT, line_per_sentence=False):
        words.update(vocabulary.normalize_text(sentence_text)[0].split())
    unigrams = built.unigrams_path.read_text(encoding="utf-8").split()
    assert set(unigrams) == words and len(unigrams) == len(words) == built.num_unigrams
    assert arpa_counts(built.arpa_path)[1] == len(words) + 3  # + <unk> <s> </s>
    assert "</s>" in {line.split("\t")[1] for line in built.arpa_path.read_text().split("\n") if line.count("\t")}
    metadata = json.loads((built.directory / "lm_build.json").read_text())
    assert metadata["order"] == 3 and metadata["alphabet"] == "'" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    assert metadata["removed_characters"][","] > 100


def test_missing_end_of_sentence_unigram_is_added(built, tmp_path):
    lines = built.arpa_path.read_text(encoding="utf-8").split("\n")
    without = [line for line in lines if not (line.count("\t") and line.split("\t")[1] == "</s>")]
    counts = arpa_counts(built.arpa_path)
    without = [f"ngram 1={counts[1] - 1}" if line.startswith("ngram 1=") else line for line in without]
    # Drop the higher-order n-grams ending in </s> too, so the ARPA stays consistent.
    without = [line for line in without if not line.split("\t")[1:2] or not line.split("\t")[1].endswith(" </s>")]
    for order in (2, 3):
        kept = sum(1 for line in without if line.count("\t") and len(line.split("\t")[1].split()) == order)
        without = [f"ngram {order}={kept}" if line.startswith(f"ngram {order}=") else line for line in without]
    broken = tmp_path / "no_eos.arpa"
    broken.write_text("\n".join(without), encoding="utf-8")
    assert ensure_end_of_sentence_unigram(broken) is True
    assert ensure_end_of_sentence_unigram(broken) is False  # idempotent
    repaired = kenlm.Model(str(broken))
    assert arpa_counts(broken)[1] == counts[1]
    assert "</s>" not in read_arpa_unigrams(broken)  # specials are not decoder words
    assert repaired.score("EMMA") < 0


def test_pruning_drops_rare_ngrams(built, tmp_path, vocabulary):
    pruned = build_language_model([TEXT], tmp_path, vocabulary, order=3, prune=[0, 1, 1], keep_arpa=True)
    full_counts, pruned_counts = arpa_counts(built.arpa_path), arpa_counts(pruned.arpa_path)
    assert pruned_counts[1] == full_counts[1]
    assert pruned_counts[2] < full_counts[2] and pruned_counts[3] < full_counts[3] / 2
    kenlm.Model(str(pruned.binary_path))


def test_bad_build_arguments(tmp_path, vocabulary):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        build_language_model([tmp_path / "missing.txt"], tmp_path / "out", vocabulary)
    (tmp_path / "digits.txt").write_text("1816 1817\n\n42\n")
    with pytest.raises(ValueError, match="no words left"):
        build_language_model([tmp_path / "digits.txt"], tmp_path / "out", vocabulary)
    with pytest.raises(ValueError, match="first threshold must be 0"):
        build_language_model([TEXT], tmp_path / "out", vocabulary, prune=[1, 1])
    with pytest.raises(ValueError, match="order=9"):
        build_language_model([TEXT], tmp_path / "out", vocabulary, order=9)


def test_missing_kenlm_binary_explains_the_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(FileNotFoundError, match="install_kenlm.sh"):
        lm_build.find_kenlm_binary("lmplz")


def test_lm_with_other_alphabet_is_rejected_with_the_characters(tmp_path, vocabulary, built):
    lower = tmp_path / "lower"
    lower.mkdir()
    (lower / "lm.arpa").write_text(built.arpa_path.read_text().replace("EMMA", "emma").replace("JANE", "jane"))
    with pytest.raises(ValueError) as error:
        build_decoder(DecoderSpec(vocabulary.labels, "flashlight", lm_path=str(lower)))
    message = str(error.value)
    for char in "emajn":
        assert repr(char) in message
    assert "hfspeech lm build" in message


def test_unloadable_arpa_says_to_rebuild(tmp_path, vocabulary):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "lm.arpa").write_text("\\data\\\nngram 1=3\n\n\\1-grams:\n-1.0\tHELLO\n\n\\end\\\n")
    for backend in ("pyctcdecode", "flashlight"):
        with pytest.raises(ValueError, match="rebuild it"):
            build_decoder(DecoderSpec(vocabulary.labels, backend, lm_path=str(bad)))
    with pytest.raises(FileNotFoundError, match="hfspeech lm build"):
        build_decoder(DecoderSpec(vocabulary.labels, "pyctcdecode", lm_path=str(tmp_path / "nowhere")))


def test_cli_lm_build(tmp_path, capsys):
    from hfspeech.cli import main

    out = tmp_path / "cli_lm"
    assert main(["lm", "build", str(TEXT), str(out), "--order", "2"]) == 0
    assert "2-gram LM" in capsys.readouterr().out
    assert kenlm.Model(str(out / "lm.bin")).order == 2
    assert main(["lm", "build", str(tmp_path / "missing.txt"), str(out)]) == 2  # clear error, exit code 2
    assert "missing.txt does not exist" in capsys.readouterr().err


def test_install_script_is_idempotent_and_checks_its_argument(tmp_path):
    import subprocess

    script = ROOT / "scripts" / "install_kenlm.sh"
    usage = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr
    prefix = Path(lm_build.find_kenlm_binary("lmplz")).parent.parent
    again = subprocess.run(["bash", str(script), str(prefix)], capture_output=True, text=True, timeout=30)
    assert again.returncode == 0 and "already installed" in again.stdout


def test_lm_unigrams_and_tokenizer_transcripts_agree_character_for_character(tmp_path):
    """The LM corpus and the CTC targets go through the same normaliser: the same text gives the
    LM the very words the tokenizer encodes (and the CTC collator's labels spell)."""
    import numpy as np

    from hfspeech.cli import main
    from hfspeech.data import CTCCollator, TextNormalizer
    from hfspeech.processing import CharacterCTCTokenizer

    crafted = tmp_path / "crafted.txt"
    crafted.write_text("\u2018Caf\u00e9\u2019 na\u00efve\u2014Zo\u00eb\u02bcs well-known self_made and/or `tis "
                       "1/2 past o\u2019clock\n\nDON'T stop: it\u2019s 4 o'clock, Jos\u00e9!\n", encoding="utf-8")
    texts = [TEXT, crafted]
    assert main(["lm", "build", *map(str, texts), str(tmp_path / "lm"), "--order", "2"]) == 0
    unigrams = (tmp_path / "lm" / "unigrams.txt").read_text(encoding="utf-8").split()
    tokenizer = CharacterCTCTokenizer()  # the LibriSpeech vocabulary, `lm build`'s default alphabet
    normalizer = TextNormalizer(on_unknown="remove")
    collator = CTCCollator(tokenizer=tokenizer, text_normalizer=normalizer)
    transcript_words = set()
    for path in texts:
        for sentence in iter_sentences(path, line_per_sentence=False):
            labels = collator([{"audio": np.zeros(400, dtype=np.float32), "text": sentence, "id": "x"}])["labels"][0]
            ids = [int(i) for i in labels if i >= 0]
            assert tokenizer.unk_token_id not in ids
            transcript = tokenizer.decode(ids, group_tokens=False)
            transcript_words.update(transcript.split())
    assert transcript_words == set(unigrams) and len(unigrams) == len(set(unigrams))
    assert {"CAFE", "NAIVE", "ZOE'S", "WELL", "KNOWN", "SELF", "MADE", "TIS", "O'CLOCK", "DON'T", "IT'S", "JOSE"} \
        <= set(unigrams)


def test_cli_lm_build_takes_options_between_its_texts(tmp_path, capsys):
    from hfspeech.cli import main

    dev = FIXTURES / "austen-emma-dev.txt"
    assert main(["lm", "build", str(TEXT), "--order", "2", str(dev), "--line-per-sentence", str(tmp_path / "a")]) == 0
    assert main(["lm", "build", str(TEXT), str(dev), str(tmp_path / "b"), "--order", "2", "--line-per-sentence"]) == 0
    first, second = (json.loads((tmp_path / name / "lm_build.json").read_text()) for name in ("a", "b"))
    assert first["order"] == 2 and kenlm.Model(str(tmp_path / "a" / "lm.bin")).order == 2
    lines = [line for path in (TEXT, dev) for line in path.read_text(encoding="utf-8").splitlines()]
    normalizer = CTCVocabulary.from_labels(load_vocabulary(None).labels).text_normalizer()
    assert first["num_sentences"] == second["num_sentences"] == sum(bool(normalizer(line)) for line in lines)
    assert (tmp_path / "a" / "unigrams.txt").read_text() == (tmp_path / "b" / "unigrams.txt").read_text()

"""Decoders: greedy, pyctcdecode and flashlight behind one interface; timestamps; bad input."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from hfspeech.decoding import (
    CTCVocabulary,
    DecoderSpec,
    build_decoder,
    build_language_model,
    forced_align,
    load_vocabulary,
    simulate_emissions,
)
from hfspeech.decoding.lm_build import iter_sentences
from helpers import FIXTURES as TEST_FIXTURES

FIXTURES = TEST_FIXTURES / "decoding"
BEAM_BACKENDS = ("pyctcdecode", "flashlight")


@pytest.fixture(scope="module")
def vocabulary() -> CTCVocabulary:
    return load_vocabulary(None)


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory, vocabulary) -> str:
    directory = tmp_path_factory.mktemp("lm")
    build_language_model([FIXTURES / "austen-emma-head.txt"], directory, vocabulary, order=4)
    return str(directory)


def crafted_emissions(vocabulary: CTCVocabulary, spec: list[tuple[str, float, int]]) -> np.ndarray:
    """Frames from (label, probability, frames): the label gets ``probability``, the blank
    the rest but 1e-4 spread over the other labels. ``"_"`` is the blank, ``"|"`` the delimiter."""
    index = {label: i for i, label in enumerate(vocabulary.labels) if label}
    rows = []
    for label, probability, count in spec:
        row = np.full(vocabulary.size, 1e-4)
        token = vocabulary.blank_index if label == "_" else index[" " if label == "|" else label]
        row[token] = probability
        if token != vocabulary.blank_index:
            row[vocabulary.blank_index] += 1.0 - row.sum()
        else:
            row[token] += 1.0 - row.sum()
        rows.extend([row] * count)
    return np.log(np.array(rows, dtype=np.float64)).astype(np.float32)


def spell(vocabulary: CTCVocabulary, text: str, weak: dict[int, float] | None = None) -> np.ndarray:
    """Two confident frames + one blank per character; ``weak`` maps character positions to a
    probability below the blank's on a single frame, so the character is more likely absent."""
    weak = weak or {}
    spec = [("_", 0.9, 1)]
    for position, char in enumerate(text):
        label = "|" if char == " " else char
        spec += [(label, weak[position], 1) if position in weak else (label, 0.9, 2), ("_", 0.9, 1)]
    return crafted_emissions(vocabulary, spec)


def test_greedy_text_and_timestamps_are_hand_checked(vocabulary):
    # frames: _ H H _ I | | _ H I I   (20 ms each)
    log_probs = crafted_emissions(vocabulary, [("_", .9, 1), ("H", .9, 2), ("_", .9, 1), ("I", .9, 1), ("|", .9, 2),
                                               ("_", .9, 1), ("H", .9, 1), ("I", .9, 2)])
    result = build_decoder(DecoderSpec(vocabulary.labels)).decode(log_probs)
    assert result.text == "HI HI"
    assert [(c.text, c.start_frame, c.end_frame) for c in result.chars] == \
        [("H", 1, 3), ("I", 4, 5), ("H", 8, 9), ("I", 9, 11)]
    assert [(w.text, w.start_frame, w.end_frame) for w in result.words] == [("HI", 1, 5), ("HI", 8, 11)]
    assert result.words[1].start_time == pytest.approx(0.16) and result.words[1].end_time == pytest.approx(0.22)
    # 8 character frames at 0.9; 3 blank frames at 1 - 31e-4, plus the 3 specials folded in.
    assert result.score == pytest.approx(8 * np.log(0.9) + 3 * np.log(1 - 28e-4), rel=1e-4)


def test_lm_fixes_an_acoustically_ambiguous_word(vocabulary, lm_dir):
    text = "I DO NOT KNOW"
    log_probs = spell(vocabulary, text, weak={text.index("KNOW"): 0.35})  # the K is barely audible
    assert build_decoder(DecoderSpec(vocabulary.labels)).decode(log_probs).text == "I DO NOT NOW"
    for backend in BEAM_BACKENDS:
        result = build_decoder(DecoderSpec(vocabulary.labels, backend, lm_path=lm_dir, beam_width=16)).decode(log_probs)
        assert result.text == text, backend
        assert [w.text for w in result.words] == text.split()
        know = result.words[-1]
        # 1 blank frame, then 3 frames per character (K: 2 frames); KNOW = frames 28..37.
        assert (know.start_frame, know.end_frame) == (28, 38), backend
        # Without the LM the same search keeps the acoustically better "NOW".
        no_lm = build_decoder(DecoderSpec(vocabulary.labels, backend, beam_width=16)).decode(log_probs)
        assert no_lm.text == "I DO NOT NOW", backend


def test_hotwords_steer_pyctcdecode(vocabulary, lm_dir):
    log_probs = spell(vocabulary, "I DO NOT KNOW", weak={9: 0.35})
    spec = DecoderSpec(vocabulary.labels, "pyctcdecode", lm_path=lm_dir, beam_width=16)
    assert build_decoder(spec).decode(log_probs).text == "I DO NOT KNOW"
    boosted = DecoderSpec(vocabulary.labels, "pyctcdecode", lm_path=lm_dir, beam_width=16, hotwords=("NOW",))
    assert build_decoder(boosted).decode(log_probs).text == "I DO NOT NOW"
    with pytest.raises(ValueError, match="hotwords"):
        DecoderSpec(vocabulary.labels, "flashlight", hotwords=("NOW",))


def test_beam_one_without_lm_weights_equals_greedy(vocabulary, lm_dir):
    sentences = [vocabulary.normalize_text(s)[0] for s in iter_sentences(FIXTURES / "austen-emma-head.txt", False)]
    cache = simulate_emissions([s for s in sentences if len(s.split()) > 4][:12], vocabulary, seed=3)
    greedy = build_decoder(DecoderSpec(vocabulary.labels))
    expected = [greedy.decode(x) for x in cache.log_probs]
    assert sum(e.text != r for e, r in zip(expected, cache.references)) >= 3  # greedy makes errors here
    wide = dict(beam_width=1, beam_prune_logp=-1000.0, token_min_logp=-1000.0)
    for backend in BEAM_BACKENDS:
        decoder = build_decoder(DecoderSpec(vocabulary.labels, backend, alpha=0.0, beta=0.0, **wide))
        for log_probs, reference in zip(cache.log_probs, expected):
            result = decoder.decode(log_probs)
            assert result.text == reference.text, backend
            assert [(c.start_frame, c.end_frame) for c in result.chars] == \
                [(c.start_frame, c.end_frame) for c in reference.chars], backend
    # With an LM at alpha = beta = 0, on words the LM knows, both still follow the acoustics.
    log_probs = spell(vocabulary, "I DO NOT NOW")
    for backend in BEAM_BACKENDS:
        spec = DecoderSpec(vocabulary.labels, backend, lm_path=lm_dir, alpha=0.0, beta=0.0, **wide)
        assert build_decoder(spec).decode(log_probs).text == "I DO NOT NOW", backend


def test_forced_align_matches_brute_force(vocabulary):
    rng = np.random.RandomState(0)
    labels = ["", " ", "A", "B"]
    targets = [2, 2, 3]  # "AAB": a blank is needed between the two A's
    log_probs = np.log(rng.dirichlet(np.ones(len(labels)), size=6)).astype(np.float32)

    def collapse(path):
        return [token for token, _ in itertools.groupby(path) if token != 0]

    best = max((path for path in itertools.product(range(len(labels)), repeat=6) if collapse(path) == targets),
               key=lambda path: sum(log_probs[t, token] for t, token in enumerate(path)))
    assert forced_align(log_probs, targets).tolist() == list(best)
    with pytest.raises(ValueError, match="cannot be aligned"):
        forced_align(log_probs[:2], targets)


def test_batches_torch_tensors_and_padding(vocabulary):
    first, second = spell(vocabulary, "HI THERE"), spell(vocabulary, "NO")
    padded = np.full((2, len(first), vocabulary.size), -30.0, dtype=np.float32)
    padded[0], padded[1, : len(second)] = first, second
    decoder = build_decoder(DecoderSpec(vocabulary.labels, "flashlight", beam_width=4))
    results = decoder.decode_batch(torch.from_numpy(padded), torch.tensor([len(first), len(second)]))
    assert [r.text for r in results] == ["HI THERE", "NO"]
    assert [r.text for r in decoder.decode_batch([first, second])] == ["HI THERE", "NO"]


def test_special_tokens_count_as_blank(vocabulary):
    log_probs = spell(vocabulary, "AA")  # A, blank, A  -> "AA"
    # Replace the separating blank frame by the <unk> special (index 3): still two A's.
    swapped = log_probs.copy()
    swapped[4, [0, 3]] = swapped[4, [3, 0]]
    for backend in ("greedy", *BEAM_BACKENDS):
        decoder = build_decoder(DecoderSpec(vocabulary.labels, backend, beam_width=4))
        assert decoder.decode(swapped).text == "AA", backend


def test_bad_emissions_are_rejected(vocabulary):
    decoder = build_decoder(DecoderSpec(vocabulary.labels, "pyctcdecode", beam_width=4))
    with pytest.raises(ValueError, match="vocabulary has 32 labels"):
        decoder.decode(np.zeros((10, 30), dtype=np.float32))
    with pytest.raises(ValueError, match="zero frames"):
        decoder.decode(np.zeros((0, 32), dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        decoder.decode(np.full((3, 32), np.nan, dtype=np.float32))
    logits = np.random.RandomState(0).normal(size=(5, 32)).astype(np.float32)
    with pytest.raises(ValueError, match="apply log_softmax"):
        decoder.decode(logits)
    decoder.decode(torch.log_softmax(torch.from_numpy(logits), dim=-1))
    with pytest.raises(ValueError, match="empty"):
        decoder.decode_batch([])
    with pytest.raises(ValueError, match="outside 1..5"):
        decoder.decode_batch(np.zeros((2, 5, 32), dtype=np.float32), [5, 6])
    with pytest.raises(ValueError, match="no language model"):
        decoder.set_weights(1.0, 2.0)
    with pytest.raises(ValueError, match="backend"):
        DecoderSpec(vocabulary.labels, "beam")
    with pytest.raises(ValueError, match="word delimiter"):
        CTCVocabulary(("", "A", "B"))


def test_blank_anywhere_and_tokenizer_vocabulary(vocabulary, lm_dir):
    from hfspeech.processing.tokenization import CharacterCTCTokenizer

    assert CTCVocabulary.from_tokenizer(CharacterCTCTokenizer()) == vocabulary
    # Same model outputs, blank moved from index 0 to the end: every backend must agree.
    order = list(range(1, vocabulary.size)) + [0]
    moved = CTCVocabulary(tuple(vocabulary.labels[i] for i in order), blank_index=vocabulary.size - 1)
    log_probs = spell(vocabulary, "I DO NOT KNOW", weak={9: 0.35})
    for backend in ("greedy", *BEAM_BACKENDS):
        lm = lm_dir if backend != "greedy" else None
        original = build_decoder(DecoderSpec(vocabulary.labels, backend, lm_path=lm, beam_width=8)).decode(log_probs)
        spec = DecoderSpec(moved.labels, backend, blank_index=moved.blank_index, lm_path=lm, beam_width=8)
        permuted = build_decoder(spec).decode(log_probs[:, order])
        assert permuted.text == original.text, backend
        assert [(c.start_frame, c.end_frame) for c in permuted.chars] == \
            [(c.start_frame, c.end_frame) for c in original.chars], backend


def test_decoder_saved_in_a_model_directory_survives_a_move(vocabulary, lm_dir, tmp_path):
    import json
    import shutil

    from hfspeech.decoding.saving import load_decoder, save_decoder

    spec = DecoderSpec(vocabulary.labels, "pyctcdecode", lm_path=lm_dir, alpha=0.7, beta=1.5, beam_width=8)
    model_dir = tmp_path / "model"
    save_decoder(spec, model_dir)
    moved = tmp_path / "moved"
    shutil.move(model_dir, moved)
    loaded = load_decoder(moved)
    assert (loaded.spec.alpha, loaded.spec.beta, loaded.spec.beam_width) == (0.7, 1.5, 8)
    assert Path(loaded.spec.lm_path).parent == moved / "language_model"
    log_probs = spell(vocabulary, "I DO NOT KNOW", weak={9: 0.35})
    assert loaded.decode(log_probs).text == build_decoder(spec).decode(log_probs).text == "I DO NOT KNOW"
    # A vocab.json that disagrees with the saved labels is caught.
    (moved / "vocab.json").write_text(json.dumps({"<pad>": 0, "|": 1, "A": 2}))
    with pytest.raises(ValueError, match="differ from the model's vocab.json"):
        load_decoder(moved)
    with pytest.raises(FileNotFoundError, match="no saved decoder"):
        load_decoder(tmp_path)


def test_beam_backends_score_a_word_by_the_sum_over_its_alignments(vocabulary, lm_dir):
    # Two frames. Best single alignment: "I" ("I" then blank: 0.5 x 0.44 = 0.22). Summed over
    # alignments, "A" wins: AA + A_ + _A = 0.3 x 0.46 + 0.3 x 0.44 + 0.2 x 0.46 = 0.362 against
    # "I": II + I_ + _I = 0.05 + 0.22 + 0.02 = 0.29. Both words are in the LM; alpha = beta = 0.
    index = {label: i for i, label in enumerate(vocabulary.labels) if label}
    rows = np.full((2, vocabulary.size), 1e-6)
    for frame, probabilities in enumerate(({"A": 0.3, "I": 0.5}, {"A": 0.46, "I": 0.1})):
        for label, probability in probabilities.items():
            rows[frame, index[label]] = probability
        rows[frame, vocabulary.blank_index] += 1.0 - rows[frame].sum()
    log_probs = np.log(rows).astype(np.float32)
    for lookahead in ("max", "none"):
        for backend in BEAM_BACKENDS:
            spec = DecoderSpec(vocabulary.labels, backend, lm_path=lm_dir, alpha=0.0, beta=0.0, beam_width=32,
                               lexicon_lookahead=lookahead)
            assert build_decoder(spec).decode(log_probs).text == "A", (backend, lookahead)


def test_lexicon_lookahead_modes(vocabulary, lm_dir, tmp_path):
    with pytest.raises(ValueError, match="lexicon_lookahead"):
        DecoderSpec(vocabulary.labels, "flashlight", lexicon_lookahead="smear")
    text = "I DO NOT KNOW"
    log_probs = spell(vocabulary, text, weak={text.index("KNOW"): 0.35})
    spec = DecoderSpec(vocabulary.labels, "flashlight", lm_path=lm_dir, beam_width=16, lexicon_lookahead="none")
    assert build_decoder(spec).decode(log_probs).text == text
    from hfspeech.decoding.saving import load_decoder_spec, save_decoder

    save_decoder(spec, tmp_path)
    assert load_decoder_spec(tmp_path).lexicon_lookahead == "none"

"""Worker pool (spawn/fork), emissions cache, LM-weight tuning, WER/CER, the `evaluate` metric, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import evaluate
import jiwer
import numpy as np
import pytest

import hfspeech
from hfspeech.decoding import (
    DecoderPool,
    DecoderSpec,
    EmissionsCache,
    SimulationConfig,
    build_decoder,
    build_language_model,
    error_report,
    load_vocabulary,
    measure_decoding_speed,
    simulate_emissions,
    tune_lm_weights,
)
from hfspeech.decoding.lm_build import iter_sentences
from helpers import FIXTURES as TEST_FIXTURES

FIXTURES = TEST_FIXTURES / "decoding"


@pytest.fixture(scope="module")
def vocabulary():
    return load_vocabulary(None)


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory, vocabulary) -> str:
    directory = tmp_path_factory.mktemp("lm")
    build_language_model([FIXTURES / "austen-emma-head.txt"], directory, vocabulary, order=4)
    return str(directory)


@pytest.fixture(scope="module")
def dev_set(vocabulary) -> EmissionsCache:
    """Held-out Emma sentences (not in the LM text), simulated with frequent confusions."""
    sentences = [vocabulary.normalize_text(s)[0] for s in iter_sentences(FIXTURES / "austen-emma-dev.txt", False)]
    chosen = [s for s in sentences if 6 <= len(s.split()) <= 16][:30]
    return simulate_emissions(chosen, vocabulary, seed=1, config=SimulationConfig(confusion_rate=0.15))


# A spawned worker re-imports hfspeech (torch + transformers: several seconds on a loaded CPU), so
# the spawn case runs one worker; the fork case runs two, which also checks the result order.
@pytest.mark.parametrize(("start_method", "backend", "workers"),
                         [("spawn", "pyctcdecode", 1), ("fork", "flashlight", 2), ("fork", "pyctcdecode", 2)])
def test_pool_matches_sequential_decoding(start_method, backend, workers, vocabulary, lm_dir, dev_set):
    items = dev_set.log_probs[:6]
    spec = DecoderSpec(vocabulary.labels, backend, lm_path=lm_dir, beam_width=8)
    expected = [build_decoder(spec).decode(x) for x in items]
    with DecoderPool(spec, num_workers=workers, start_method=start_method) as pool:
        assert pool.start_method == start_method
        results = pool.decode_batch(items)
        assert [r.text for r in results] == [e.text for e in expected]
        assert [[(w.text, w.start_frame, w.end_frame) for w in r.words] for r in results] == \
            [[(w.text, w.start_frame, w.end_frame) for w in e.words] for e in expected]
        # The same workers serve later calls, with other LM weights when asked.
        reweighted = pool.decode_batch(items, alpha=0.0, beta=0.0)
        assert [r.text for r in reweighted] == \
            [r.text for r in build_decoder(spec.with_weights(0.0, 0.0)).decode_batch(items)]
        assert [r.text for r in pool.decode_batch(items)] == [e.text for e in expected]


def test_pool_rejects_bad_settings(vocabulary, tmp_path):
    spec = DecoderSpec(vocabulary.labels, "flashlight")
    with pytest.raises(ValueError, match="start_method"):
        DecoderPool(spec, start_method="teleport")
    with pytest.raises(ValueError, match="num_workers"):
        DecoderPool(spec, num_workers=0)
    with pytest.raises(FileNotFoundError):  # fails in the parent, before any worker starts
        DecoderPool(DecoderSpec(vocabulary.labels, "flashlight", lm_path=str(tmp_path / "none")))


def test_emissions_cache_round_trip_and_errors(dev_set, tmp_path):
    path = dev_set.save(tmp_path / "dev.npz")
    loaded = EmissionsCache.load(path)
    assert loaded.references == dev_set.references and loaded.utterance_ids == dev_set.utterance_ids
    assert loaded.vocabulary == dev_set.vocabulary and loaded.metadata["source"] == "simulated"
    for original, restored in zip(dev_set.log_probs, loaded.log_probs):
        np.testing.assert_array_equal(original, restored)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        EmissionsCache.load(tmp_path / "missing.npz")
    arrays = dict(np.load(path))
    arrays["lengths"] = arrays["lengths"] + 1
    np.savez(tmp_path / "corrupt.npz", **arrays)
    with pytest.raises(ValueError, match="corrupt"):
        EmissionsCache.load(tmp_path / "corrupt.npz")
    with pytest.raises(ValueError, match="vocabulary has 32 labels"):
        EmissionsCache([np.zeros((4, 31))], ["A"], ["u"], dev_set.vocabulary)


def test_tuning_beats_the_default_weights(vocabulary, lm_dir, dev_set, tmp_path):
    spec = DecoderSpec(vocabulary.labels, "flashlight", lm_path=lm_dir, beam_width=16)  # alpha 0.5, beta 1
    result = tune_lm_weights(dev_set, spec, num_trials=12, seed=0)
    assert (result.default_alpha, result.default_beta) == (0.5, 1.0)
    texts = [build_decoder(spec).decode(x).text for x in dev_set.log_probs]
    assert result.default_wer == pytest.approx(jiwer.wer(dev_set.references, texts))
    assert result.wer < result.default_wer < result.greedy_wer
    assert 0.0 <= result.alpha <= 5.0 and -5.0 <= result.beta <= 5.0
    # flashlight: 12 trials per lexicon lookahead mode, the spec's own ("max") first.
    assert [t.lexicon_lookahead for t in result.trials] == ["max"] * 12 + ["none"] * 12
    assert result.wer == min(t.wer for t in result.trials)
    # The reported best WER is what decoding with the best weights (and lookahead) gives.
    tuned = build_decoder(result.apply(spec))
    assert tuned.spec.lexicon_lookahead == result.lexicon_lookahead
    assert jiwer.wer(dev_set.references, [tuned.decode(x).text for x in dev_set.log_probs]) == \
        pytest.approx(result.wer)
    saved = json.loads(result.to_json(tmp_path / "best.json").read_text())
    assert (saved["alpha"], saved["beta"]) == (result.alpha, result.beta)
    assert "| greedy (no LM) |" in result.table()
    with pytest.raises(ValueError, match="needs a beam backend and an LM"):
        tune_lm_weights(dev_set, DecoderSpec(vocabulary.labels, "flashlight"))


def test_references_are_normalised_like_the_ctc_targets_and_the_lm(dev_set, caplog):
    """Raw references (curly apostrophes, accents, punctuation, a digit) score against the
    model's alphabet: the cache holds what TextNormalizer makes of them, the digit is reported."""
    log_probs = dev_set.log_probs[:2]
    with caplog.at_level("WARNING", logger="hfspeech.decoding.emissions"):
        cache = EmissionsCache(log_probs, ["Don\u2019t stop, Zo\u00eb!", "Room 4 \u2014 well-known."], ["u1", "u2"],
                               dev_set.vocabulary)
    assert cache.references == ["DON'T STOP ZOE", "ROOM WELL KNOWN"]
    assert "references: removed 4 characters" in caplog.text and "1 of them are digits" in caplog.text
    perfect = error_report(cache.references, ["DON'T STOP ZOE", "ROOM WELL KNOWN"])
    assert perfect.wer == 0.0


def test_error_report_matches_jiwer_and_hand_counts():
    references = ["THE CAT SAT", "A B C", "HELLO WORLD"]
    hypotheses = ["THE CAT SAT", "A X C D", "HELLO"]
    report = error_report(references, hypotheses, ["u1", "u2", "u3"])
    assert (report.words.substitutions, report.words.deletions, report.words.insertions) == (1, 1, 1)
    assert report.words.reference_length == 8 and report.wer == pytest.approx(3 / 8)
    assert report.wer == pytest.approx(jiwer.wer(references, hypotheses))
    assert report.cer == pytest.approx(jiwer.cer(references, hypotheses))
    assert [u.utterance_id for u in report.worst(2)] == ["u2", "u3"]
    assert "WER 37.50% (S 1, D 1, I 1, N 8)" in report.summary()
    with pytest.raises(ValueError, match="empty references for utterances \\['u2'\\]"):
        error_report(["A", " "], ["A", "B"], ["u1", "u2"])
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        error_report(["A", "B"], ["A"])


def test_evaluate_metric_loads_offline_and_matches_jiwer():
    metric = evaluate.load(str(Path(hfspeech.__file__).parent / "metrics" / "wer"))
    references, predictions = ["HELLO WORLD", "A B C D"], ["HELLO WORD", "A C D E F"]
    result = metric.compute(predictions=predictions, references=references, return_details=True)
    assert result["wer"] == pytest.approx(jiwer.wer(references, predictions))
    assert (result["substitutions"], result["deletions"], result["insertions"]) == (1, 1, 2)
    with pytest.raises(ValueError, match="empty"):
        metric.compute(predictions=["A"], references=[""])


def test_decoding_speed_is_measured_against_audio_time(dev_set, vocabulary):
    decoder = build_decoder(DecoderSpec(vocabulary.labels))
    results, speed = measure_decoding_speed(decoder.decode_batch, dev_set.log_probs, dev_set.audio_seconds)
    assert len(results) == speed.utterances == len(dev_set)
    assert speed.real_time_factor == pytest.approx(speed.decode_seconds / dev_set.audio_seconds)
    assert 0 < speed.real_time_factor < 1
    assert dev_set.audio_seconds == pytest.approx(sum(len(x) for x in dev_set.log_probs) * 0.02)


def test_cli_tune_and_decode(vocabulary, lm_dir, dev_set, tmp_path, capsys):
    from hfspeech.cli import main

    cache_path = dev_set.save(tmp_path / "dev.npz")
    weights = tmp_path / "weights.json"
    assert main(["lm", "tune", str(cache_path), lm_dir, "--trials", "3", "--beam-width", "8",
                 "--output", str(weights)]) == 0
    assert "best alpha=" in capsys.readouterr().out
    best = json.loads(weights.read_text())
    hypotheses = tmp_path / "hyps.jsonl"
    assert main(["lm", "decode", str(cache_path), "--lm", lm_dir, "--weights", str(weights), "--beam-width", "8",
                 "--output", str(hypotheses)]) == 0
    output = capsys.readouterr().out
    assert f"WER {100 * best['wer']:.2f}%" in output and "RTF" in output
    lines = [json.loads(line) for line in hypotheses.read_text().splitlines()]
    assert len(lines) == len(dev_set) and lines[0]["words"][0][1] >= 0
    assert main(["lm", "decode", str(tmp_path / "none.npz")]) == 2

"""Model-side decoding: emissions from a model directory, SpeechProcessorWithLM + AutoProcessor + ASR
pipeline, `hfspeech lm tune MODEL DATA --lm`, `hfspeech transcribe` and `hfspeech evaluate`.

A tiny CTC model is fine-tuned for 2 steps on the AN4 fixture (its outputs are near random, so the
checks compare decoding paths with each other and with independent computations, not accuracy).
The LM is a trigram over the AN4 transcripts; a second LM over Emma (tests/fixtures/decoding) uses
letters the AN4 model cannot emit.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import jiwer
import numpy as np
import pytest
import torch
import transformers

import hfspeech  # noqa: F401  (registers the Auto* classes)
from hfspeech.cli import main
from hfspeech.decoding import DecoderPool, DecoderSpec, build_decoder, build_language_model, load_vocabulary
from hfspeech.decoding.emissions import EmissionsCache, cached_emissions
from hfspeech.decoding.inference import (
    compute_emissions, load_ctc_model, model_emissions_cache_path, resolve_decoder_spec,
)
from hfspeech.decoding.vocabulary import DEFAULT_LABELS, CTCVocabulary
from hfspeech.decoding import SpeechProcessorWithLM, attach_language_model
from hfspeech.processing import SpeechProcessor
from helpers import FIXTURES

AN4 = FIXTURES / "an4"
ROWS = list(csv.DictReader(open(AN4 / "metadata.csv", encoding="utf-8")))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    from hfspeech.modeling.commands import initialise_pretraining_model
    from hfspeech.training.arguments import FinetuningArguments
    from hfspeech.training.finetune_loop import run_finetuning

    root = tmp_path_factory.mktemp("model")
    initialise_pretraining_model(root / "init", "wav2vec2", "tiny")
    run_finetuning(FinetuningArguments(
        output_dir=str(root / "run"), model=str(root / "init"), train_data=str(AN4), dev_data="",
        learning_rate=2e-3, max_steps=2, freeze_transformer_steps=0, max_batch_seconds=8.0, eval_steps=100,
        save_steps=100, mask_time_prob=0.05, mask_feature_prob=0.0, layerdrop=0.0, seed=3))
    return root / "run" / "final"


@pytest.fixture
def model_dir(trained, tmp_path) -> Path:
    """A fresh copy per test (tests write decoders and caches into it)."""
    return Path(shutil.copytree(trained, tmp_path / "model"))


@pytest.fixture(scope="module")
def an4_lm(trained, tmp_path_factory) -> Path:
    text = tmp_path_factory.mktemp("text") / "an4.txt"
    text.write_text("\n".join(row["text"] for row in ROWS) + "\n", encoding="utf-8")
    directory = tmp_path_factory.mktemp("an4_lm")
    build_language_model([text], directory, load_vocabulary(trained), order=3, line_per_sentence=True)
    return directory


@pytest.fixture(scope="module")
def emma_lm(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("emma_lm")
    build_language_model([FIXTURES / "decoding" / "austen-emma-dev.txt"], directory,
                         CTCVocabulary(DEFAULT_LABELS), order=2)
    return directory


@pytest.fixture(scope="module")
def loaded(trained):
    return load_ctc_model(trained)


def waveform(index: int) -> np.ndarray:
    from hfspeech.data.audio import decode_audio

    return decode_audio(str(AN4 / ROWS[index]["file_name"]))[0]


def single_log_probs(loaded, audio: np.ndarray) -> np.ndarray:
    """Independent reference: the model on one unpadded utterance, log-softmax in torch."""
    inputs = loaded.processor(audio=audio, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        logits = loaded.model(inputs["input_values"], attention_mask=inputs["attention_mask"]).logits
    return torch.log_softmax(logits[0], dim=-1).numpy()


def test_emissions_follow_the_data_and_match_single_utterance_forwards(loaded):
    cache = compute_emissions(loaded, str(AN4), batch_seconds=6.0, max_batch_size=3)
    assert cache.references == [row["text"] for row in ROWS]
    assert cache.utterance_ids == [row["file_name"].rsplit(".", 1)[0] for row in ROWS]
    assert cache.vocabulary == load_vocabulary(loaded.directory)
    assert cache.seconds_per_frame == pytest.approx(0.02)
    for index in range(len(ROWS)):
        audio = waveform(index)
        expected = single_log_probs(loaded, audio)
        assert cache.log_probs[index].shape == expected.shape
        # Batches are padded; the attention mask keeps the valid frames (tiny preset: layer norm convs).
        np.testing.assert_allclose(cache.log_probs[index], expected, atol=2e-4)
    assert cache.metadata["audio_seconds"] == pytest.approx(sum(waveform(i).size for i in range(len(ROWS))) / 16000)


def test_emissions_cache_is_computed_once(model_dir, loaded, tmp_path):
    path = model_emissions_cache_path(model_dir, str(AN4))
    assert path.parent == model_dir / "emissions"
    first = cached_emissions(path, lambda: compute_emissions(loaded, str(AN4)))

    def must_not_run() -> EmissionsCache:
        raise AssertionError("emissions recomputed although cached")

    second = cached_emissions(path, must_not_run)
    for a, b in zip(first.log_probs, second.log_probs):
        np.testing.assert_array_equal(a, b)
    assert model_emissions_cache_path(model_dir, str(AN4), tmp_path / "c").parent == tmp_path / "c"


def test_processor_with_lm_saves_loads_and_autoprocessor_picks_the_class(model_dir, an4_lm):
    assert type(transformers.AutoProcessor.from_pretrained(str(model_dir))) is SpeechProcessor
    vocabulary = load_vocabulary(model_dir)
    spec = DecoderSpec(vocabulary.labels, "pyctcdecode", vocabulary.blank_index, lm_path=str(an4_lm),
                       alpha=1.5, beta=-0.5, beam_width=20)
    attach_language_model(model_dir, spec)
    processor = transformers.AutoProcessor.from_pretrained(str(model_dir))
    assert type(processor) is SpeechProcessorWithLM
    loaded_spec = processor.decoder_spec
    assert (loaded_spec.alpha, loaded_spec.beta, loaded_spec.beam_width, loaded_spec.backend) == (1.5, -0.5, 20,
                                                                                                  "pyctcdecode")
    assert Path(loaded_spec.lm_path) == model_dir / "language_model" / "lm.bin"
    assert (model_dir / "language_model" / "lm.bin").read_bytes() == (an4_lm / "lm.bin").read_bytes()
    # pyctcdecode's own loader (used by the ASR pipeline) reads the same directory.
    from pyctcdecode import BeamSearchDecoderCTC

    decoder = BeamSearchDecoderCTC.load_from_dir(str(model_dir))
    assert decoder.model_container[decoder._model_key].alpha == 1.5
    assert len(decoder._alphabet.labels) == vocabulary.size
    # Weights changed and saved again round-trip too.
    processor.set_weights(0.25, 2.0)
    processor.save_pretrained(model_dir)
    again = SpeechProcessorWithLM.from_pretrained(str(model_dir))
    assert (again.decoder_spec.alpha, again.decoder_spec.beta) == (0.25, 2.0)
    assert sorted(p.name for p in (model_dir / "language_model").iterdir()) == ["attrs.json", "lm.bin", "unigrams.txt"]


def test_pipeline_decodes_with_the_lm_like_batch_decode(model_dir, an4_lm, loaded):
    vocabulary = load_vocabulary(model_dir)
    spec = DecoderSpec(vocabulary.labels, "pyctcdecode", vocabulary.blank_index, lm_path=str(an4_lm), alpha=2.0,
                       beta=1.0, beam_width=32)
    processor = attach_language_model(model_dir, spec)
    recognizer = transformers.pipeline("automatic-speech-recognition", model=str(model_dir))
    assert recognizer.type == "ctc_with_lm"
    lm_words = set((an4_lm / "unigrams.txt").read_text().split())
    differs_from_greedy = 0
    for index in range(len(ROWS)):
        audio = waveform(index)
        piped = recognizer(audio.copy(), decoder_kwargs=processor.pipeline_decoder_kwargs)["text"]
        inputs = processor(audio=audio, sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            logits = loaded.model(inputs["input_values"], attention_mask=inputs["attention_mask"]).logits
        with_lm = processor.batch_decode(logits)[0]
        greedy = processor.batch_decode(logits.argmax(-1), skip_special_tokens=True)[0]
        assert piped == with_lm
        assert with_lm and set(with_lm.split()) <= lm_words  # the LM's words only
        differs_from_greedy += with_lm != greedy
    assert differs_from_greedy >= 1


def test_batch_decode_equals_the_decoder_on_log_probs_and_the_pool(model_dir, an4_lm, loaded):
    vocabulary = load_vocabulary(model_dir)
    spec = DecoderSpec(vocabulary.labels, "flashlight", vocabulary.blank_index, lm_path=str(an4_lm), beam_width=16)
    processor = SpeechProcessorWithLM(loaded.processor.feature_extractor, loaded.processor.tokenizer, spec)
    audio = [waveform(0), waveform(1), waveform(2)]
    inputs = processor(audio=audio, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        logits = loaded.model(inputs["input_values"], attention_mask=inputs["attention_mask"]).logits
    lengths = loaded.model.frame_lengths(inputs["attention_mask"].sum(-1)).tolist()
    texts = processor.batch_decode(logits, lengths=lengths)
    log_probs = torch.log_softmax(logits, dim=-1).numpy()
    decoder = build_decoder(spec)
    assert texts == [decoder.decode(log_probs[i, :n]).text for i, n in enumerate(lengths)]
    with DecoderPool(spec, num_workers=2) as pool:
        assert processor.batch_decode(logits, lengths=lengths, pool=pool) == texts
    greedy = DecoderSpec(vocabulary.labels, "greedy", vocabulary.blank_index)
    with DecoderPool(greedy, num_workers=1) as other, pytest.raises(ValueError, match="another DecoderSpec"):
        processor.batch_decode(logits, lengths=lengths, pool=other)


def test_lm_alphabet_mismatch_is_refused_with_the_characters(model_dir, emma_lm, capsys):
    vocabulary = load_vocabulary(model_dir)
    spec = DecoderSpec(vocabulary.labels, "pyctcdecode", vocabulary.blank_index, lm_path=str(emma_lm))
    with pytest.raises(ValueError, match=r"not in the model's alphabet: .*'B' \(e.g."):
        attach_language_model(model_dir, spec)
    assert main(["evaluate", str(model_dir), str(AN4), "--lm", str(emma_lm), "--backend", "pyctcdecode"]) == 2
    error = capsys.readouterr().err
    assert "'B'" in error and "'C'" in error and "Rebuild the LM" in error


def test_lm_tune_model_form_caches_emissions_and_saves_the_best_weights(model_dir, an4_lm, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["lm", "tune", "--help"])
    assert exit_info.value.code == 0 and "MODEL DATA" in capsys.readouterr().out
    argv = ["lm", "tune", str(model_dir), str(AN4), "--lm", str(an4_lm), "--trials", "4", "--beam-width", "8",
            "--backend", "pyctcdecode"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| greedy (no LM) |" in out and "best alpha=" in out
    caches = list((model_dir / "emissions").glob("*.npz"))
    assert len(caches) == 1
    result = json.loads((model_dir / "lm_tuning.json").read_text())
    assert 0.0 <= result["alpha"] <= 5.0 and -5.0 <= result["beta"] <= 5.0
    assert result["wer"] == min(trial["wer"] for trial in result["trials"])
    processor = transformers.AutoProcessor.from_pretrained(str(model_dir))
    assert (processor.decoder_spec.alpha, processor.decoder_spec.beta) == (result["alpha"], result["beta"])
    assert processor.decoder_spec.beam_width == 8
    stamp = caches[0].stat().st_mtime_ns
    assert main(argv) == 0  # second run: the cached emissions are reused
    assert caches[0].stat().st_mtime_ns == stamp


def test_evaluate_reports_wer_cer_and_speed(model_dir, an4_lm, capsys):
    assert main(["evaluate", str(model_dir), str(AN4), "--lm", str(an4_lm), "--backend", "pyctcdecode",
                 "--beam-width", "8", "--json", "--worst", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    words = report["words"]
    reference_words = sum(len(row["text"].split()) for row in ROWS)
    assert words["reference_length"] == reference_words
    assert report["wer"] == pytest.approx((words["substitutions"] + words["deletions"] + words["insertions"])
                                          / reference_words)
    worst = report["worst"]
    assert len(worst) == 3
    for item in worst:  # independent check of the per-utterance WER with jiwer
        assert item["wer"] == pytest.approx(jiwer.wer(item["reference"], item["hypothesis"]))
    assert report["backend"] == "pyctcdecode" and report["lm_path"] == str(an4_lm)
    assert 0 < report["decoding_real_time_factor"] < report["end_to_end_real_time_factor"]

    # Without --lm and without a saved decoder: greedy; the text summary prints S/D/I and RTF.
    assert main(["evaluate", str(model_dir), str(AN4)]) == 0
    out = capsys.readouterr().out
    assert "decoder greedy" in out and "WER " in out and "(S " in out and "RTF decoding" in out


def test_saved_decoder_is_the_default_and_greedy_without_one(model_dir, an4_lm, loaded):
    vocabulary = loaded.vocabulary
    assert resolve_decoder_spec(model_dir, vocabulary, 0.02).backend == "greedy"
    attach_language_model(model_dir, DecoderSpec(vocabulary.labels, "pyctcdecode", vocabulary.blank_index,
                                                 lm_path=str(an4_lm), alpha=3.0))
    spec = resolve_decoder_spec(model_dir, vocabulary, 0.02)
    assert (spec.backend, spec.alpha) == ("pyctcdecode", 3.0)
    assert resolve_decoder_spec(model_dir, vocabulary, 0.02, lm=an4_lm).backend == "flashlight"
    assert resolve_decoder_spec(model_dir, vocabulary, 0.02, backend="greedy").backend == "greedy"


def test_evaluate_refuses_data_without_transcripts(model_dir, tmp_path, capsys):
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    shutil.copyfile(AN4 / ROWS[0]["file_name"], audio_dir / "a.flac")
    assert main(["evaluate", str(model_dir), str(audio_dir)]) == 2
    assert "no transcript" in capsys.readouterr().err


def test_transcribe_prints_one_line_per_file_and_refuses_empty_audio(model_dir, an4_lm, loaded, tmp_path, capsys):
    files = [AN4 / ROWS[i]["file_name"] for i in (0, 3)]
    assert main(["transcribe", str(model_dir), *map(str, files), "--lm", str(an4_lm), "--backend", "pyctcdecode",
                 "--beam-width", "8"]) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    assert [line.split("\t")[0] for line in lines] == [str(f) for f in files]
    vocabulary = loaded.vocabulary
    decoder = build_decoder(DecoderSpec(vocabulary.labels, "pyctcdecode", vocabulary.blank_index,
                                        lm_path=str(an4_lm), beam_width=8))
    for line, index in zip(lines, (0, 3)):
        assert line.split("\t")[1] == decoder.decode(single_log_probs(loaded, waveform(index))).text
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    assert main(["transcribe", str(model_dir), str(empty)]) == 2
    assert "empty" in capsys.readouterr().err


def test_pipeline_word_timestamps_with_the_lm_are_pyctcdecodes_word_frames(model_dir, an4_lm, loaded):
    """With the LM processor the pipeline's word chunks are the beam's words at their frames (pyctcdecode,
    loaded from the directory, run directly on the model's logits; frames x 320 samples / 16 kHz);
    characters are transformers' word-only case. Also over chunks of a long input."""
    from pyctcdecode import BeamSearchDecoderCTC

    vocabulary = load_vocabulary(model_dir)
    spec = DecoderSpec(vocabulary.labels, "pyctcdecode", vocabulary.blank_index, lm_path=str(an4_lm), alpha=2.0,
                       beta=1.0, beam_width=16)
    attach_language_model(model_dir, spec)
    recognizer = transformers.pipeline("automatic-speech-recognition", model=str(model_dir))
    decoder = BeamSearchDecoderCTC.load_from_dir(str(model_dir))
    ratio = loaded.model.config.inputs_to_logits_ratio
    for index in (0, 3):
        audio = waveform(index)
        output = recognizer(audio.copy(), return_timestamps="word", decoder_kwargs={"beam_width": 16})
        inputs = loaded.processor(audio=audio, sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            logits = loaded.model(**inputs).logits[0].numpy()
        text, _, words = decoder.decode_beams(logits, beam_width=16)[0][:3]
        assert output["text"] == text and text
        assert output["chunks"] == [{"text": word, "timestamp": (start * ratio / 16000, end * ratio / 16000)}
                                    for word, (start, end) in words]
    with pytest.raises(ValueError, match="CTC with LM can only predict word level timestamps"):
        recognizer(waveform(0), return_timestamps="char")
    long = np.concatenate([waveform(index) for index in range(len(ROWS))])
    chunked = recognizer(long, return_timestamps="word", chunk_length_s=3.0, stride_length_s=1.0)
    assert chunked["chunks"] and chunked["chunks"][-1]["timestamp"][1] > len(long) / 16000 - 3.0


def test_transcribe_and_evaluate_take_options_among_their_positionals(model_dir, an4_lm, tmp_path, capsys):
    files = [str(AN4 / ROWS[i]["file_name"]) for i in (0, 3)]
    options = ["--lm", str(an4_lm), "--backend", "pyctcdecode", "--beam-width", "8"]
    assert main(["transcribe", str(model_dir), *files, *options]) == 0
    last = capsys.readouterr().out
    assert main(["transcribe", "--beam-width", "8", str(model_dir), files[0], "--lm", str(an4_lm), files[1],
                 "--backend", "pyctcdecode"]) == 0
    assert capsys.readouterr().out == last and len(last.strip().split("\n")) == 2
    assert main(["evaluate", str(model_dir), str(AN4), "--json", *options]) == 0
    last = json.loads(capsys.readouterr().out)
    assert main(["evaluate", "--json", str(model_dir), *options[:2], str(AN4), *options[2:]]) == 0
    mixed = json.loads(capsys.readouterr().out)
    assert (mixed["wer"], mixed["cer"], mixed["lm_path"]) == (last["wer"], last["cer"], last["lm_path"])


def test_transcribe_reports_resampling_and_down_mixing_once(model_dir, tmp_path, caplog, capsys):
    """An 8 kHz file, then stereo files: each conversion is logged once, naming the first file it
    happens to; a stereo file with two equal channels transcribes as its mono original."""
    import soundfile

    audio = waveform(0)
    files = {"mono.wav": (audio, 16000), "narrow.wav": (audio[::2], 8000),
             "stereo.wav": (np.stack([audio, audio], axis=1), 16000),
             "stereo2.wav": (np.stack([audio, audio], axis=1), 16000)}
    for name, (samples, rate) in files.items():
        soundfile.write(tmp_path / name, samples, rate, subtype="FLOAT")
    with caplog.at_level("INFO", logger="hfspeech.data.audio"):
        assert main(["transcribe", str(model_dir), *(str(tmp_path / name) for name in files)]) == 0
    messages = [record.getMessage() for record in caplog.records if record.name == "hfspeech.data.audio"]
    assert len([m for m in messages if "resampled to 16000 Hz" in m]) == 1
    down_mixed = [m for m in messages if "down-mixed to mono" in m]
    assert len(down_mixed) == 1 and "with 2 channels" in down_mixed[0] and "stereo.wav" in down_mixed[0]
    lines = dict(line.split("\t", 1) for line in capsys.readouterr().out.splitlines())
    assert lines[str(tmp_path / "stereo.wav")] == lines[str(tmp_path / "mono.wav")]

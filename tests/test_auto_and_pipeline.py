"""transformers integration: Auto* factories, the ASR pipeline, `hfspeech init`, CLI help."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import transformers
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForCTC,
    AutoModelForPreTraining,
    AutoProcessor,
    AutoTokenizer,
)

import hfspeech
from hfspeech import (
    CharacterCTCTokenizer,
    SpeechEncoderConfig,
    SpeechEncoderForCTC,
    SpeechEncoderForPreTraining,
    SpeechEncoderModel,
    SpeechFeatureExtractor,
    SpeechProcessor,
)
from hfspeech.cli import main as cli_main
from helpers import FIXTURES

AN4 = FIXTURES / "an4"


@pytest.fixture(scope="module")
def ctc_directory(tmp_path_factory) -> Path:
    transcripts = [line.split(",", 1)[1].rsplit(",", 1)[0].strip('"') for line in (AN4 / "metadata.csv").read_text().splitlines()[1:]]
    tokenizer = CharacterCTCTokenizer.from_transcripts(transcripts)
    processor = SpeechProcessor(SpeechFeatureExtractor(), tokenizer)
    config = SpeechEncoderConfig.from_preset("tiny", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = SpeechEncoderForCTC(config).eval()
    with torch.no_grad():  # a sharper head, so greedy paths contain several distinct characters
        model.lm_head.weight.mul_(50)
    directory = tmp_path_factory.mktemp("ctc")
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def test_auto_classes_load_hfspeech_directories(ctc_directory, tmp_path):
    assert isinstance(AutoConfig.from_pretrained(ctc_directory), SpeechEncoderConfig)
    assert isinstance(AutoModelForCTC.from_pretrained(ctc_directory), SpeechEncoderForCTC)
    assert isinstance(AutoModel.from_pretrained(ctc_directory), SpeechEncoderModel)
    assert isinstance(AutoFeatureExtractor.from_pretrained(ctc_directory), SpeechFeatureExtractor)
    assert isinstance(AutoTokenizer.from_pretrained(ctc_directory), CharacterCTCTokenizer)
    assert isinstance(AutoProcessor.from_pretrained(ctc_directory), SpeechProcessor)
    SpeechEncoderForPreTraining(SpeechEncoderConfig.from_preset("tiny", objective="hubert")).save_pretrained(tmp_path)
    assert isinstance(AutoModelForPreTraining.from_pretrained(tmp_path), SpeechEncoderForPreTraining)


def test_asr_pipeline_transcribes_a_file_like_manual_greedy_decoding(ctc_directory):
    file = AN4 / "fash" / "an255-fash-b.flac"
    recognizer = transformers.pipeline("automatic-speech-recognition", model=str(ctc_directory))
    text = recognizer(str(file))["text"]
    # independent path: read the file, process, run the model, argmax, decode
    audio, rate = sf.read(file, dtype="float32")
    processor = SpeechProcessor.from_pretrained(ctc_directory)
    model = SpeechEncoderForCTC.from_pretrained(ctc_directory).eval()
    inputs = processor(audio=audio, sampling_rate=rate, return_tensors="pt")
    with torch.no_grad():
        ids = model(**inputs).logits.argmax(-1)[0]
    # transformers' pipeline keeps special tokens for CTC models (blanks are removed by grouping)
    expected = processor.batch_decode(ids[None], skip_special_tokens=False)[0]
    assert text == expected
    assert len(set(text.replace(" ", ""))) >= 3, text  # a real, non-trivial transcription


def test_pretrained_checkpoint_loads_into_ctc_with_a_fresh_head(tmp_path, caplog):
    pretrained = SpeechEncoderForPreTraining(SpeechEncoderConfig.from_preset("tiny", objective="wav2vec2"))
    pretrained.save_pretrained(tmp_path)
    with caplog.at_level(logging.INFO):
        ctc = SpeechEncoderForCTC.from_pretrained(tmp_path, vocab_size=12)
    assert ctc.lm_head.out_features == 12
    for name, value in pretrained.speech_encoder.state_dict().items():
        torch.testing.assert_close(ctc.speech_encoder.state_dict()[name], value, atol=0, rtol=0)
    assert "objective" in caplog.text  # the dropped pretraining weights are named


def test_cli_init_writes_a_ready_to_train_model(tmp_path):
    assert cli_main(["init", "--objective", "hubert", "--preset", "tiny", "--set", "hubert_num_clusters=[50, 20]",
                     str(tmp_path / "model")]) == 0
    model = AutoModelForPreTraining.from_pretrained(tmp_path / "model")
    assert isinstance(model, SpeechEncoderForPreTraining) and model.config.hubert_num_clusters == [50, 20]
    assert isinstance(AutoFeatureExtractor.from_pretrained(tmp_path / "model"), SpeechFeatureExtractor)
    assert (tmp_path / "model" / "model.safetensors").exists()
    labels = [torch.randint(0, 50, (1, 49)), torch.randint(0, 20, (1, 49))]
    output = model.train()(torch.randn(1, 16000), labels=labels)
    assert torch.isfinite(output.loss)


def test_cli_rejects_unknown_fields_and_presets(tmp_path, capsys):
    assert cli_main(["init", "--objective", "hubert", "--preset", "tiny", "--set", "hiden_size=3", str(tmp_path)]) == 2
    assert "hiden_size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["init", "--objective", "hubert", "--preset", "giant", str(tmp_path)])


def test_every_verb_explains_itself():
    top = subprocess.run([sys.executable, "-m", "hfspeech.cli", "--help"], capture_output=True, text=True)
    assert top.returncode == 0 and "init" in top.stdout and "convert" in top.stdout
    for verb in ("init", "convert"):
        result = subprocess.run([sys.executable, "-m", "hfspeech.cli", verb, "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "usage: hfspeech " + verb in result.stdout


def test_feature_extractor_refuses_wrong_sampling_rate_before_the_model():
    with pytest.raises(ValueError, match="8000"):
        SpeechFeatureExtractor()(np.zeros(16000, dtype=np.float32), sampling_rate=8000)


@pytest.fixture(scope="module")
def transformers_directory(ctc_directory, tmp_path_factory) -> Path:
    """The same model and vocabulary in transformers' own classes (Wav2Vec2ForCTC + Wav2Vec2CTCTokenizer)."""
    from hfspeech.modeling.convert import convert_to_transformers

    return convert_to_transformers(ctc_directory, tmp_path_factory.mktemp("transformers") / "model")


def as_plain(output) -> dict:
    """A tokenizer output with numpy ints turned into Python ints (transformers keeps numpy's)."""
    def plain(items):
        return None if items is None else [{key: value if isinstance(value, str) else int(value)
                                             for key, value in item.items()} for item in items]
    return {"text": output["text"], "char_offsets": plain(output["char_offsets"]),
            "word_offsets": plain(output["word_offsets"])}


def test_tokenizer_offsets_match_wav2vec2_ctc_tokenizer(ctc_directory):
    ours = CharacterCTCTokenizer.from_pretrained(ctc_directory)
    theirs = transformers.Wav2Vec2CTCTokenizer(vocab_file=str(ctc_directory / "vocab.json"))
    rng = np.random.RandomState(0)
    size, pad, delimiter = len(ours), ours.pad_token_id, ours.word_delimiter_token_id
    for _ in range(40):  # frame-level ids: long blank runs, repeats, delimiters, now and then a special token
        ids = rng.choice([pad, pad, pad, delimiter, *range(1, size)], size=rng.randint(1, 60)).repeat(
            rng.randint(1, 4, size=1)).tolist()
        for group_tokens in (True, False):
            kwargs = dict(output_char_offsets=True, output_word_offsets=True, group_tokens=group_tokens)
            assert as_plain(ours.decode(ids, **kwargs)) == as_plain(theirs.decode(ids, **kwargs)), ids
    a, b, bos = ours.convert_tokens_to_ids(["E", "T", "<s>"])
    # by hand: with skip_special_tokens the <s> goes, the three E frames (0, 1, 3) are one run
    # that keeps its time, [0, 4); the delimiter run [5, 6); T [6, 7)
    output = ours.decode([a, a, bos, a, pad, delimiter, b], skip_special_tokens=True, output_char_offsets=True,
                         output_word_offsets=True)
    assert output["text"] == "E T"
    assert output["char_offsets"] == [{"char": "E", "start_offset": 0, "end_offset": 4},
                                      {"char": " ", "start_offset": 5, "end_offset": 6},
                                      {"char": "T", "start_offset": 6, "end_offset": 7}]
    assert output["word_offsets"] == [{"word": "E", "start_offset": 0, "end_offset": 4},
                                      {"word": "T", "start_offset": 6, "end_offset": 7}]


@pytest.mark.parametrize("kind", ["char", "word"])
def test_asr_pipeline_timestamps_match_transformers_wav2vec2(ctc_directory, transformers_directory, kind):
    audio, _ = sf.read(AN4 / "fash" / "an255-fash-b.flac", dtype="float32")
    ours = transformers.pipeline("automatic-speech-recognition", model=str(ctc_directory))
    theirs = transformers.pipeline("automatic-speech-recognition", model=str(transformers_directory))
    assert type(theirs.model).__name__ == "Wav2Vec2ForCTC" and type(theirs.tokenizer).__name__ == "Wav2Vec2CTCTokenizer"
    ours_output = ours(audio.copy(), return_timestamps=kind)
    theirs_output = theirs(audio.copy(), return_timestamps=kind)
    assert ours_output == theirs_output
    chunks = ours_output["chunks"]
    assert len(chunks) >= (20 if kind == "char" else 3)
    assert all(set(chunk) == {"text", "timestamp"} for chunk in chunks)
    starts = [chunk["timestamp"][0] for chunk in chunks]
    assert starts == sorted(starts) and chunks[-1]["timestamp"][1] <= len(audio) / 16000 + 0.02
    if kind == "word":
        assert " ".join(chunk["text"] for chunk in chunks) == ours_output["text"]


def test_asr_pipeline_word_timestamps_on_long_audio_in_chunks(ctc_directory, transformers_directory):
    audio = np.concatenate([sf.read(path, dtype="float32")[0] for path in sorted(AN4.rglob("*.flac"))])  # 12 s
    ours = transformers.pipeline("automatic-speech-recognition", model=str(ctc_directory))
    theirs = transformers.pipeline("automatic-speech-recognition", model=str(transformers_directory))
    options = dict(return_timestamps="word", chunk_length_s=3.0, stride_length_s=1.0)
    chunked = ours(audio.copy(), **options)
    assert chunked == theirs(audio.copy(), **options)
    assert chunked["chunks"][-1]["timestamp"][1] > 10.0  # times count from the start of the whole audio

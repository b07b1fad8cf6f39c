"""Feature extractor, character CTC tokenizer and processor against transformers' Wav2Vec2 classes,
hand-computed values and real LibriSpeech / AN4 audio (tests/fixtures/processing)."""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import (
    AutoFeatureExtractor,
    AutoProcessor,
    AutoTokenizer,
    PretrainedConfig,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
)

from hfspeech.processing import (
    LIBRISPEECH_VOCABULARY,
    CharacterCTCTokenizer,
    SpeechFeatureExtractor,
    SpeechProcessor,
    build_character_vocabulary,
    register_auto_classes,
)
from helpers import FIXTURES as TEST_FIXTURES

FIXTURES = TEST_FIXTURES / "processing"


def read_clip(name: str) -> np.ndarray:
    audio, rate = sf.read(FIXTURES / name, dtype="float32")
    assert rate == 16000 and audio.ndim == 1
    return audio


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    """Three real 16 kHz clips of different lengths: 16000, 41600 and 153280 samples."""
    return [read_clip("an251-fash-b.flac"), read_clip("an255-fash-b.flac"), read_clip("103-1240-0006.flac")]


@pytest.fixture(scope="module")
def transcripts() -> list[str]:
    lines = (FIXTURES / "103-1240.trans.txt").read_text().splitlines()
    return [line.split(" ", 1)[1] for line in lines]


@pytest.fixture()
def wav2vec2_tokenizer(tmp_path: Path) -> Wav2Vec2CTCTokenizer:
    vocab_file = tmp_path / "vocab.json"
    vocab_file.write_text(json.dumps(LIBRISPEECH_VOCABULARY))
    return Wav2Vec2CTCTokenizer(str(vocab_file))


# ---------------------------------------------------------------------------- feature extractor
def test_normalisation_matches_hand_computed_values():
    extractor = SpeechFeatureExtractor(min_num_samples=4)
    out = extractor(np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32), sampling_rate=16000)
    # mean 2.5, population variance 1.25
    expected = (np.array([-1.5, -0.5, 0.5, 1.5]) / np.sqrt(1.25 + 1e-7)).astype(np.float32)
    np.testing.assert_allclose(out["input_values"][0], expected, rtol=1e-6)
    np.testing.assert_array_equal(out["attention_mask"][0], [1, 1, 1, 1])

    waveform = np.random.RandomState(0).uniform(-0.3, 0.5, size=1000).astype(np.float32)
    values = SpeechFeatureExtractor()(waveform, sampling_rate=16000)["input_values"][0]
    samples = waveform.astype(np.float64)
    mean = samples.sum() / samples.size
    variance = ((samples - mean) ** 2).sum() / samples.size
    np.testing.assert_allclose(values, (samples - mean) / np.sqrt(variance + 1e-7), rtol=1e-6, atol=1e-6)
    assert abs(values.mean()) < 1e-6 and abs(values.std() - 1) < 1e-5


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_padding_invariance_on_real_clips(clips, padding_side):
    extractor = SpeechFeatureExtractor(padding_side=padding_side)
    batch = extractor(clips, sampling_rate=16000, return_tensors="np")
    longest = max(len(c) for c in clips)
    assert batch["input_values"].shape == (3, longest) and batch["input_values"].dtype == np.float32
    assert batch["attention_mask"].dtype == np.int32
    for row, clip in enumerate(clips):
        alone = extractor(clip, sampling_rate=16000)["input_values"][0]
        valid = slice(0, len(clip)) if padding_side == "right" else slice(longest - len(clip), longest)
        np.testing.assert_array_equal(batch["input_values"][row, valid], alone)
        assert batch["attention_mask"][row].sum() == len(clip)
        assert batch["attention_mask"][row, valid].all()
        padded = np.ones(longest, dtype=bool)
        padded[valid] = False
        assert (batch["input_values"][row, padded] == 0).all()


def test_matches_transformers_wav2vec2_feature_extractor(clips):
    ours = SpeechFeatureExtractor()
    reference = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    for clip in clips:  # unpadded, one utterance at a time
        expected = reference(clip, sampling_rate=16000)["input_values"][0]
        np.testing.assert_allclose(ours(clip, sampling_rate=16000)["input_values"][0], expected, rtol=1e-5, atol=1e-5)
    # With an attention mask transformers also normalises over the valid samples only.
    expected = reference(clips, sampling_rate=16000, padding="longest", return_tensors="np")
    got = ours(clips, sampling_rate=16000, return_tensors="np")
    np.testing.assert_allclose(got["input_values"], expected["input_values"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got["attention_mask"], expected["attention_mask"])


def test_padding_options_and_return_types(clips):
    extractor = SpeechFeatureExtractor()
    short, medium = clips[0], clips[1]
    out = extractor([short, medium], sampling_rate=16000, padding="max_length", max_length=50000, return_tensors="pt")
    assert out["input_values"].shape == (2, 50000) and out["input_values"].dtype == torch.float32
    assert out["attention_mask"].dtype == torch.int32
    assert out["attention_mask"].sum(1).tolist() == [16000, 41600]
    out = extractor([short, medium], sampling_rate=16000, pad_to_multiple_of=1000)
    assert isinstance(out["input_values"], list) and len(out["input_values"][0]) == 42000
    out = extractor([short, medium], sampling_rate=16000, padding=False)
    assert [len(v) for v in out["input_values"]] == [16000, 41600]
    with pytest.raises(ValueError, match="equal lengths"):
        extractor([short, medium], sampling_rate=16000, padding=False, return_tensors="pt")
    with pytest.raises(ValueError, match="utterance 1 has 41600 samples, more than max_length=20000"):
        extractor([short, medium], sampling_rate=16000, padding="max_length", max_length=20000)
    with pytest.raises(ValueError, match="needs max_length"):
        extractor(short, sampling_rate=16000, padding="max_length")
    with pytest.raises(ValueError, match="padding must be 'longest'"):
        extractor(short, sampling_rate=16000, padding="shortest")
    with pytest.raises(ValueError, match="never truncates"):
        extractor(short, sampling_rate=16000, truncation=True)
    out = extractor(short, sampling_rate=16000, return_attention_mask=False)
    assert "attention_mask" not in out
    # A 1-D torch tensor and a list of Python floats are accepted like numpy arrays.
    np.testing.assert_array_equal(extractor(torch.from_numpy(short), sampling_rate=16000)["input_values"][0],
                                  extractor(short, sampling_rate=16000)["input_values"][0])
    np.testing.assert_allclose(extractor(short[:500].tolist(), sampling_rate=16000)["input_values"][0],
                               extractor(short[:500], sampling_rate=16000)["input_values"][0], atol=1e-6)


def test_without_normalisation_values_are_unchanged(clips):
    out = SpeechFeatureExtractor(do_normalize=False)(clips[:2], sampling_rate=16000, return_tensors="np")
    np.testing.assert_array_equal(out["input_values"][0, :16000], clips[0])
    np.testing.assert_array_equal(out["input_values"][1], clips[1])


@pytest.mark.parametrize("call, message", [
    (lambda fe, a: fe(a), r"sampling_rate is missing.*sampling_rate=16000"),
    (lambda fe, a: fe(a, sampling_rate=8000), r"8000 Hz.*16000 Hz.*librosa.resample\(audio, orig_sr=8000"),
    (lambda fe, a: fe(np.stack([a, a]), sampling_rate=16000), r"shape \(2, 16000\).*down-mix"),
    (lambda fe, a: fe([a, np.stack([a, a], axis=1)], sampling_rate=16000),
     r"utterance 1 has shape \(16000, 2\).*Down-mix"),
    (lambda fe, a: fe((a * 32767).astype(np.int16), sampling_rate=16000), r"integer dtype int16.*float.*/ 32768"),
    (lambda fe, a: fe([a, np.zeros(0, np.float32)], sampling_rate=16000), r"utterance 1 is empty"),
    (lambda fe, a: fe([a, a[:399]], sampling_rate=16000),
     r"utterance 1 has 399 samples, fewer than min_num_samples=400"),
    (lambda fe, a: fe([np.where(np.arange(a.size) == 7, np.nan, a)], sampling_rate=16000),
     r"utterance 0 has 1 non-finite.*sample 7"),
    (lambda fe, a: fe([a, np.full(500, np.inf, np.float32)], sampling_rate=16000), r"utterance 1 has 500 non-finite"),
    (lambda fe, a: fe([], sampling_rate=16000), r"empty batch"),
    (lambda fe, a: fe("clip.wav", sampling_rate=16000), r"got str"),
    (lambda fe, a: fe({"array": a, "sampling_rate": 16000}, sampling_rate=16000), r"pass audio\['array'\]"),
    (lambda fe, a: fe(np.array(0.5, dtype=np.float32), sampling_rate=16000), r"utterance 0 is a single number"),
], ids=["no-rate", "wrong-rate", "stereo", "stereo-in-batch", "int16", "empty", "too-short", "nan", "inf",
        "empty-batch", "path", "dict", "scalar"])
def test_bad_audio_raises_with_the_fix(clips, call, message):
    with pytest.raises(ValueError, match=message):
        call(SpeechFeatureExtractor(), clips[0])


def test_min_num_samples_is_configurable(clips):
    extractor = SpeechFeatureExtractor(min_num_samples=1000)
    with pytest.raises(ValueError, match="999 samples, fewer than min_num_samples=1000"):
        extractor(clips[0][:999], sampling_rate=16000)
    assert extractor(clips[0][:1000], sampling_rate=16000)["input_values"][0].shape == (1000,)
    with pytest.raises(ValueError, match="min_num_samples must be a positive integer"):
        SpeechFeatureExtractor(min_num_samples=0)


def test_feature_extractor_save_load_round_trip(tmp_path, clips):
    extractor = SpeechFeatureExtractor(min_num_samples=321, normalization_epsilon=1e-5, padding_side="left")
    extractor.save_pretrained(tmp_path)
    loaded = SpeechFeatureExtractor.from_pretrained(tmp_path)
    assert (loaded.min_num_samples, loaded.normalization_epsilon, loaded.padding_side) == (321, 1e-5, "left")
    np.testing.assert_array_equal(loaded(clips[:2], sampling_rate=16000, return_tensors="np")["input_values"],
                                  extractor(clips[:2], sampling_rate=16000, return_tensors="np")["input_values"])


# ---------------------------------------------------------------------------- tokenizer
def test_default_vocabulary_layout():
    tokenizer = CharacterCTCTokenizer()
    expected = ["<pad>", "<s>", "</s>", "<unk>", "|", "'", *string.ascii_uppercase]
    assert [tokenizer.decoder[i] for i in range(32)] == expected
    assert len(tokenizer) == 32 and tokenizer.vocab_size == 32
    assert tokenizer.pad_token_id == 0 and tokenizer.unk_token_id == 3 and tokenizer.word_delimiter_token_id == 4
    assert tokenizer("AB C")["input_ids"] == [6, 7, 4, 8]


def test_from_transcripts_builds_vocab(transcripts):
    tokenizer = CharacterCTCTokenizer.from_transcripts(transcripts)
    # The 10 LibriSpeech transcripts use the apostrophe and every letter but Z.
    assert tokenizer.get_vocab() == build_character_vocabulary("'" + string.ascii_uppercase[:25])
    assert tokenizer.get_vocab() == {k: v for k, v in LIBRISPEECH_VOCABULARY.items() if k != "Z"}
    # B occurs 3 times, A twice: frequency order puts B first, sorted order A first.
    frequency = CharacterCTCTokenizer.from_transcripts(["BAB", "A B"], order="frequency")
    assert [frequency.decoder[i] for i in range(5, 7)] == ["B", "A"]
    assert [CharacterCTCTokenizer.from_transcripts(["BAB"]).decoder[i] for i in range(5, 7)] == ["A", "B"]


def test_encode_decode_matches_wav2vec2_tokenizer(transcripts, wav2vec2_tokenizer):
    ours = CharacterCTCTokenizer()
    ours_ids = ours(transcripts)["input_ids"]
    assert ours_ids == wav2vec2_tokenizer(transcripts)["input_ids"]
    assert ours.batch_decode(ours_ids, group_tokens=False) == transcripts
    assert wav2vec2_tokenizer.batch_decode(ours_ids, group_tokens=False) == transcripts

    # Frame-level CTC paths: every token repeated 1-3 times, blanks inserted at random and
    # always between two equal tokens; decoding with group_tokens must undo that.
    random = np.random.RandomState(0)
    paths = []
    for ids in ours_ids:
        path = [0] * random.randint(0, 3)
        for previous, token in zip([None, *ids], ids):
            if token == previous or random.rand() < 0.3:
                path += [0] * random.randint(1, 3)
            path += [token] * random.randint(1, 4)
        paths.append(path + [0] * random.randint(0, 3))
    assert ours.batch_decode(paths) == transcripts
    assert wav2vec2_tokenizer.batch_decode(paths) == transcripts
    assert ours.decode(torch.tensor(paths[0])) == transcripts[0]


def test_unknown_characters_map_to_unk_and_are_reported(wav2vec2_tokenizer):
    tokenizer = CharacterCTCTokenizer()
    ids = tokenizer("HELLO, WORLD!")["input_ids"]
    assert ids == wav2vec2_tokenizer("HELLO, WORLD!")["input_ids"]
    assert ids[5] == tokenizer.unk_token_id and ids[-1] == tokenizer.unk_token_id
    assert tokenizer.out_of_vocabulary_characters(["HELLO, WORLD!", "NAÏVE, YES"]) == {",": 2, "!": 1, "Ï": 1}
    assert tokenizer.out_of_vocabulary_characters("DON'T STOP") == {}


def test_do_lower_case_matches_wav2vec2(tmp_path):
    vocab_file = tmp_path / "vocab.json"
    vocab_file.write_text(json.dumps(LIBRISPEECH_VOCABULARY))
    ours = CharacterCTCTokenizer(str(vocab_file), do_lower_case=True)
    reference = Wav2Vec2CTCTokenizer(str(vocab_file), do_lower_case=True)
    ids = ours("don't stop")["input_ids"]
    assert ids == reference("don't stop")["input_ids"] == CharacterCTCTokenizer()("DON'T STOP")["input_ids"]
    assert ours.decode(ids, group_tokens=False) == reference.decode(ids, group_tokens=False) == "don't stop"


def test_decode_label_padding_specials_and_bad_ids():
    tokenizer = CharacterCTCTokenizer()
    labels = [[30, 10, 24, -100, -100], [7, 4, 8, 8, -100]]  # "YES", "B CC"
    assert tokenizer.batch_decode(labels, group_tokens=False) == ["YES", "B CC"]
    assert tokenizer.decode([1, 30, 10, 24, 2], skip_special_tokens=True) == "YES"
    assert tokenizer.decode([1, 30, 10, 24, 2]) == "<s>YES</s>"
    with pytest.raises(ValueError, match="Token id 40 is outside the vocabulary"):
        tokenizer.decode([30, 40])


def test_tokenizer_save_load_round_trip_and_wav2vec2_interop(tmp_path, transcripts):
    tokenizer = CharacterCTCTokenizer.from_transcripts(transcripts, order="frequency")
    tokenizer.save_pretrained(tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "vocab.json").read_text()) == tokenizer.get_vocab()
    loaded = CharacterCTCTokenizer.from_pretrained(tmp_path / "ours")
    assert loaded.get_vocab() == tokenizer.get_vocab() and loaded.word_delimiter_token == "|"
    assert loaded(transcripts)["input_ids"] == tokenizer(transcripts)["input_ids"]
    # The files load in transformers' class and the other way round.
    reference = Wav2Vec2CTCTokenizer.from_pretrained(tmp_path / "ours")
    assert reference(transcripts)["input_ids"] == tokenizer(transcripts)["input_ids"]
    reference.save_pretrained(tmp_path / "theirs")
    back = CharacterCTCTokenizer.from_pretrained(tmp_path / "theirs")
    assert back(transcripts)["input_ids"] == tokenizer(transcripts)["input_ids"]

    custom = CharacterCTCTokenizer(vocab=build_character_vocabulary("AB", word_delimiter_token="_"),
                                   word_delimiter_token="_")
    custom.save_pretrained(tmp_path / "custom")
    reloaded = CharacterCTCTokenizer.from_pretrained(tmp_path / "custom")
    assert reloaded.word_delimiter_token == "_" and reloaded("AB BA")["input_ids"] == [5, 6, 4, 6, 5]
    assert reloaded.decode([5, 6, 4, 6, 5], group_tokens=False) == "AB BA"


def test_bad_vocabularies_and_transcripts_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json does not exist"):
        CharacterCTCTokenizer(str(tmp_path / "missing.json"))
    without_delimiter = {k: v for k, v in LIBRISPEECH_VOCABULARY.items() if k != "|"}
    with pytest.raises(ValueError, match=r"ids must be 0..30"):
        CharacterCTCTokenizer(vocab=without_delimiter)
    with pytest.raises(ValueError, match=r"lacks the token\(s\) \['\|'\]"):
        CharacterCTCTokenizer(vocab={k: i for i, k in enumerate(without_delimiter)})
    with pytest.raises(ValueError, match="duplicated ids"):
        CharacterCTCTokenizer(vocab={**LIBRISPEECH_VOCABULARY, "Z": 5})
    with pytest.raises(ValueError, match="replace_word_delimiter_char='_' is not supported"):
        CharacterCTCTokenizer(replace_word_delimiter_char="_")
    with pytest.raises(ValueError, match="nested multi-lingual"):
        CharacterCTCTokenizer(vocab={"eng": LIBRISPEECH_VOCABULARY})
    with pytest.raises(ValueError, match=r"Transcript 1 contains whitespace \['\\t'\]"):
        CharacterCTCTokenizer.from_transcripts(["A B", "A\tB"])
    with pytest.raises(ValueError, match="Transcript 0 contains the word delimiter"):
        CharacterCTCTokenizer.from_transcripts(["A|B"])
    with pytest.raises(ValueError, match="no transcripts"):
        CharacterCTCTokenizer.from_transcripts([])


# ---------------------------------------------------------------------------- processor
def test_processor_call_pad_and_decode(clips, transcripts):
    processor = SpeechProcessor(SpeechFeatureExtractor(), CharacterCTCTokenizer())
    audio, texts = clips, ["YES", "U M N Y H SIX", transcripts[6]]
    batch = processor(audio=audio, text=texts, sampling_rate=16000, return_tensors="pt")
    features = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt")
    torch.testing.assert_close(batch["input_values"], features["input_values"], rtol=0, atol=0)
    torch.testing.assert_close(batch["attention_mask"], features["attention_mask"], rtol=0, atol=0)
    ids = processor.tokenizer(texts)["input_ids"]
    assert batch["labels"].dtype == torch.long and batch["labels"].shape == (3, max(map(len, ids)))
    for row, sequence in enumerate(ids):
        assert batch["labels"][row, : len(sequence)].tolist() == sequence
        assert (batch["labels"][row, len(sequence):] == -100).all()
    assert processor.batch_decode(batch["labels"], group_tokens=False) == texts

    text_only = processor(text="YES")
    assert set(text_only) == {"labels"} and text_only["labels"] == [[30, 10, 24]]

    # pad() collates per-example outputs (as a datasets.map + DataLoader pipeline would) into the same batch.
    examples = [{"input_values": processor(audio=a, sampling_rate=16000)["input_values"][0],
                 "labels": processor(text=t)["labels"][0]} for a, t in zip(audio, texts)]
    collated = processor.pad(examples)
    for key in ("input_values", "attention_mask", "labels"):
        torch.testing.assert_close(collated[key], batch[key], rtol=0, atol=0)

    with pytest.raises(ValueError, match=r"3 audio utterance\(s\) but 2 transcript"):
        processor(audio=audio, text=texts[:2], sampling_rate=16000)
    with pytest.raises(ValueError, match="needs audio"):
        processor()
    with pytest.raises(ValueError, match="sampling_rate is missing"):
        processor(audio=audio[0], text="YES")
    with pytest.raises(TypeError):
        SpeechProcessor(CharacterCTCTokenizer(), SpeechFeatureExtractor())


class _ProcessingTestConfig(PretrainedConfig):
    model_type = "hfspeech_processing_test"


def test_processor_save_load_and_auto_classes(tmp_path, clips):
    processor = SpeechProcessor(SpeechFeatureExtractor(min_num_samples=256),
                                CharacterCTCTokenizer.from_transcripts(["YES", "U M N Y H SIX"]))
    processor.save_pretrained(tmp_path)
    _ProcessingTestConfig().save_pretrained(tmp_path)

    loaded = SpeechProcessor.from_pretrained(tmp_path)  # works without Auto* registration
    assert loaded.feature_extractor.min_num_samples == 256
    assert loaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()

    register_auto_classes(_ProcessingTestConfig)
    register_auto_classes(_ProcessingTestConfig)  # idempotent
    assert type(AutoFeatureExtractor.from_pretrained(tmp_path)) is SpeechFeatureExtractor
    assert type(AutoTokenizer.from_pretrained(tmp_path)) is CharacterCTCTokenizer
    auto = AutoProcessor.from_pretrained(tmp_path)
    assert type(auto) is SpeechProcessor and auto.feature_extractor.min_num_samples == 256
    expected = processor(audio=clips[:2], text=["YES", "SIX"], sampling_rate=16000, return_tensors="np")
    got = auto(audio=clips[:2], text=["YES", "SIX"], sampling_rate=16000, return_tensors="np")
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])


def test_register_auto_classes_with_speech_encoder_config(tmp_path):
    from hfspeech.configuration import SpeechEncoderConfig

    register_auto_classes(SpeechEncoderConfig)
    processor = SpeechProcessor(SpeechFeatureExtractor(), CharacterCTCTokenizer())
    processor.save_pretrained(tmp_path)
    SpeechEncoderConfig.from_preset("tiny").save_pretrained(tmp_path)
    assert type(AutoProcessor.from_pretrained(tmp_path)) is SpeechProcessor
    assert type(AutoTokenizer.from_pretrained(tmp_path)) is CharacterCTCTokenizer


def test_register_auto_classes_rejects_bad_configs():
    with pytest.raises(ValueError, match="needs a PretrainedConfig subclass"):
        register_auto_classes(dict)

    class NoModelType(PretrainedConfig):
        model_type = ""

    with pytest.raises(ValueError, match="has no model_type"):
        register_auto_classes(NoModelType)

    class Impostor(PretrainedConfig):
        model_type = "wav2vec2"

    with pytest.raises(ValueError, match="already registered for Wav2Vec2Config"):
        register_auto_classes(Impostor)

"""Collators: CTC against transformers' feature extractor and tokenizer; crops; HuBERT label crops."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor

from hfspeech.data import CTCCollator, HubertCollator, PretrainingCollator, TextNormalizer, crop_windows, load_source
from helpers import FIXTURES as TEST_FIXTURES

FIXTURES = TEST_FIXTURES / "data"


@pytest.fixture(scope="module")
def an4():
    return list(load_source(str(FIXTURES / "an4")))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    vocab = {"<pad>": 0, "<unk>": 1, "|": 2, "'": 3, **{chr(65 + i): 4 + i for i in range(26)}}
    path = tmp_path_factory.mktemp("vocab") / "vocab.json"
    path.write_text(json.dumps(vocab))
    return Wav2Vec2CTCTokenizer(str(path), word_delimiter_token="|")


def test_ctc_batch_matches_transformers_feature_extractor_and_tokenizer(an4, tokenizer):
    examples = an4[:4]
    batch = CTCCollator(tokenizer=tokenizer)(examples)
    reference = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)(
        [e["audio"] for e in examples], sampling_rate=16000, padding=True, return_tensors="pt"
    )
    lengths = [len(e["audio"]) for e in examples]
    assert batch["input_values"].shape == (4, max(lengths)) and batch["input_values"].dtype == torch.float32
    torch.testing.assert_close(batch["input_values"], reference["input_values"], atol=1e-4, rtol=1e-4)
    assert torch.equal(batch["attention_mask"], reference["attention_mask"].long())
    for row, example in enumerate(examples):
        valid = batch["input_values"][row, : lengths[row]]
        variance = float(np.var(example["audio"].astype(np.float64)))
        expected_std = np.sqrt(variance / (variance + 1e-7))  # epsilon 1e-7 as in transformers
        assert abs(valid.mean().item()) < 1e-4
        assert valid.std(unbiased=False).item() == pytest.approx(expected_std, abs=1e-4)
        assert torch.all(batch["input_values"][row, lengths[row]:] == 0)
        expected = tokenizer(example["text"]).input_ids
        labels = batch["labels"][row]
        assert labels[: len(expected)].tolist() == expected
        assert torch.all(labels[len(expected):] == -100)
    assert (batch["labels"] == -100).any()


def test_ctc_delegates_normalisation_to_a_feature_extractor(an4, tokenizer):
    calls = []
    extractor = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)

    def recording_extractor(waveforms, **kwargs):
        calls.append(kwargs)
        return extractor(waveforms, **kwargs)

    batch = CTCCollator(tokenizer=tokenizer, feature_extractor=recording_extractor, normalize=False)(an4[:3])
    plain = CTCCollator(tokenizer=tokenizer)(an4[:3])
    assert calls and calls[0]["sampling_rate"] == 16000
    torch.testing.assert_close(batch["input_values"], plain["input_values"], atol=1e-4, rtol=1e-4)
    assert torch.equal(batch["labels"], plain["labels"])


def test_ctc_text_normalizer_and_errors(tokenizer):
    example = {"id": "x", "audio": np.ones(1600, dtype=np.float32), "text": "yes, go"}
    batch = CTCCollator(tokenizer=tokenizer, text_normalizer=TextNormalizer(on_unknown="remove"))([example])
    assert batch["labels"][0].tolist() == tokenizer("YES GO").input_ids
    with pytest.raises(ValueError, match="needs a tokenizer"):
        CTCCollator()([example])
    with pytest.raises(ValueError, match="example y has neither 'labels' nor 'text'"):
        CTCCollator(tokenizer=tokenizer)([{"id": "y", "audio": np.ones(10, dtype=np.float32)}])
    with pytest.raises(ValueError, match="non-empty 1-D"):
        CTCCollator(tokenizer=tokenizer)([{"id": "z", "audio": np.zeros(0, dtype=np.float32), "text": "A"}])


def test_crop_windows_are_seeded_and_within_bounds():
    lengths = [300_000, 120_000, 90_000]
    starts, sizes = crop_windows(lengths, 250_000, True, torch.Generator().manual_seed(0))
    assert sizes == [90_000] * 3
    assert all(0 <= s <= n - 90_000 for s, n in zip(starts, lengths)) and starts[2] == 0
    again, _ = crop_windows(lengths, 250_000, True, torch.Generator().manual_seed(0))
    assert again == starts
    starts, sizes = crop_windows(lengths, 250_000, False, torch.Generator().manual_seed(0))
    assert sizes == [250_000, 120_000, 90_000] and starts[1:] == [0, 0] and 0 <= starts[0] <= 50_000


def test_pretraining_collator_crops_real_audio_to_its_shortest(an4):
    collator = PretrainingCollator(max_samples=20_000, crop_to_shortest=True, generator=torch.Generator().manual_seed(1))
    batch = collator(an4[:4])
    shortest = min(20_000, min(len(e["audio"]) for e in an4[:4]))
    assert batch["input_values"].shape == (4, shortest) and bool(batch["attention_mask"].all())
    for row, example in enumerate(an4[:4]):
        window = batch["input_values"][row].numpy()
        audio = example["audio"]
        matches = [s for s in range(len(audio) - shortest + 1) if np.array_equal(audio[s : s + shortest], window)]
        assert matches, "the crop must be a contiguous window of the original audio"
    padded = PretrainingCollator(max_samples=20_000, crop_to_shortest=False)(an4[:4])
    lengths = [min(len(e["audio"]), 20_000) for e in an4[:4]]
    assert padded["attention_mask"].sum(1).tolist() == lengths


def ramp_example(name: str, samples: int, rate: float) -> dict:
    """Audio whose value encodes its sample index; label k at frame k (two label sets)."""
    frames = int(round(samples * rate / 16000))
    return {"id": name, "audio": (np.arange(samples) / 1e6).astype(np.float32),
            "labels": [np.arange(frames), np.arange(frames) + 1000]}


@pytest.mark.parametrize("crop_to_shortest", [True, False])
def test_hubert_labels_follow_the_audio_crop(crop_to_shortest):
    examples = [ramp_example("a", 64_000, 50.0), ramp_example("b", 40_000, 50.0), ramp_example("c", 52_000, 50.0)]
    collator = HubertCollator(label_rates=50.0, max_samples=32_000, crop_to_shortest=crop_to_shortest,
                              generator=torch.Generator().manual_seed(4))
    batch = collator(examples)
    assert len(batch["labels"]) == 2
    for row in range(3):
        valid = int(batch["attention_mask"][row].sum())
        start = int(round(batch["input_values"][row, 0].item() * 1e6))  # ramp value = sample index
        labels = batch["labels"][0][row]
        frames = labels[labels != -100]
        first = int(round(start * 50 / 16000))
        assert frames.tolist() == list(range(first, first + len(frames)))
        assert abs(len(frames) - valid * 50 / 16000) <= 1
        assert torch.equal(batch["labels"][1][row][: len(frames)], frames + 1000)
    if crop_to_shortest:
        assert batch["input_values"].shape[1] == 32_000 and batch["labels"][0].shape[1] == 100


def test_hubert_rejects_misaligned_labels():
    example = ramp_example("bad", 32_000, 50.0)
    example["labels"] = [np.arange(50)]  # 1 s of labels for 2 s of audio
    with pytest.raises(ValueError, match="example bad: 50 labels at 50.0 Hz last 1.000 s but the audio lasts 2.000 s"):
        HubertCollator(label_rates=50.0)([example])


def test_speech_feature_extractor_is_accepted(an4, tokenizer):
    processing = pytest.importorskip("hfspeech.processing.feature_extraction")
    extractor = processing.SpeechFeatureExtractor(do_normalize=True)
    batch = CTCCollator(tokenizer=tokenizer, feature_extractor=extractor)(an4[:3])
    plain = CTCCollator(tokenizer=tokenizer)(an4[:3])
    torch.testing.assert_close(batch["input_values"], plain["input_values"], atol=1e-5, rtol=1e-5)
    assert torch.equal(batch["attention_mask"], plain["attention_mask"])


def test_batches_feed_the_tiny_models(an4, tokenizer):
    from hfspeech import SpeechEncoderConfig, SpeechEncoderForCTC, SpeechEncoderForPreTraining

    torch.manual_seed(0)
    ctc = SpeechEncoderForCTC(SpeechEncoderConfig.from_preset("tiny", vocab_size=tokenizer.vocab_size))
    loss = ctc(**CTCCollator(tokenizer=tokenizer)(an4[:2])).loss
    assert torch.isfinite(loss) and loss > 0
    examples = []
    for example in an4[:2]:
        frames = int(round(len(example["audio"]) * 50 / 16000))
        examples.append({**example, "labels": [np.arange(frames) % 10, np.arange(frames) % 7]})
    config = SpeechEncoderConfig.from_preset("tiny", objective="hubert", hubert_num_clusters=(10, 7))
    batch = HubertCollator(label_rates=50.0, max_samples=24_000, generator=torch.Generator().manual_seed(0))(examples)
    loss = SpeechEncoderForPreTraining(config)(**batch).loss
    assert torch.isfinite(loss) and loss > 0

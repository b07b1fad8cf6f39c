"""Speed perturbation: pitch and duration move by the factor (a real tone and real speech), the
draws are seeded, HuBERT labels follow the audio."""


import numpy as np
import pytest
import soundfile
import torch

from hfspeech.data import CTCCollator, HubertCollator
from hfspeech.data.augmentation import SpeedPerturbation, resampling_ratio, speed_perturb, stretch_labels
from helpers import FIXTURES

AN4 = FIXTURES / "an4"


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_a_tone_plays_faster_and_higher(factor):
    seconds = np.arange(16000) / 16000
    tone = np.sin(2 * np.pi * 440 * seconds).astype(np.float32)
    out = speed_perturb(tone, factor)
    assert out.dtype == np.float32 and abs(len(out) - 16000 / factor) <= 1
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    peak_hz = spectrum.argmax() * 16000 / len(out)
    assert abs(peak_hz - 440 * factor) < 2.0


def test_real_speech_keeps_its_energy_and_factor_one_is_the_identity():
    speech, _ = soundfile.read(AN4 / "fash" / "cen7-fash-b.flac", dtype="float32")
    np.testing.assert_array_equal(speed_perturb(speech, 1.0), speech)
    for factor in (0.9, 1.1):
        out = speed_perturb(speech, factor)
        assert abs(np.sqrt(np.mean(out ** 2)) / np.sqrt(np.mean(speech ** 2)) - 1) < 0.02
    assert resampling_ratio(0.9) == (10, 9) and resampling_ratio(1.1) == (10, 11)
    with pytest.raises(ValueError, match="outside"):
        resampling_ratio(3.0)


def test_labels_stretch_with_the_audio():
    labels = np.arange(10)
    np.testing.assert_array_equal(stretch_labels(labels, 1.0), labels)
    slower = stretch_labels(labels, 0.5)
    np.testing.assert_array_equal(slower, np.repeat(labels, 2))
    faster = stretch_labels(labels, 2.0)
    np.testing.assert_array_equal(faster, labels[::2])
    assert len(stretch_labels(labels, 1.1)) == 9 and len(stretch_labels(labels, 0.9)) == 11


def test_draws_are_seeded_and_cover_the_factors():
    first = SpeedPerturbation((0.9, 1.0, 1.1), torch.Generator().manual_seed(4)).draw(300)
    again = SpeedPerturbation((0.9, 1.0, 1.1), torch.Generator().manual_seed(4)).draw(300)
    assert first == again and set(first) == {0.9, 1.0, 1.1}
    assert SpeedPerturbation(()).draw(3) == [1.0, 1.0, 1.0] and not SpeedPerturbation([1.0]).active


def test_collators_apply_the_drawn_speed():
    speech, _ = soundfile.read(AN4 / "mblw" / "an1-mblw-b.flac", dtype="float32")
    examples = [{"id": "a", "audio": speech, "text": "A"}]
    collated = CTCCollator(tokenizer=lambda text: [1], speed=SpeedPerturbation([1.1], torch.Generator()))(examples)
    assert abs(collated["input_values"].shape[1] - len(speech) / 1.1) <= 1
    labels = np.arange(round(len(speech) / 160))  # 100 Hz labels covering the audio
    hubert = HubertCollator(label_rates=100, max_samples=None, speed=SpeedPerturbation([0.9], torch.Generator()))
    batch = hubert([{"id": "a", "audio": speech, "labels": labels}])
    samples, frames = batch["input_values"].shape[1], batch["labels"][0].shape[1]
    assert abs(samples - len(speech) / 0.9) <= 1 and abs(frames - samples / 160) <= 1


def test_pretraining_batches_with_speed_perturbation_replay_per_epoch():
    from hfspeech.configuration import SpeechEncoderConfig
    from hfspeech.training.arguments import PretrainingArguments
    from hfspeech.training.pretrain_data import build_pretraining_batches

    config = SpeechEncoderConfig.from_preset("tiny")

    def first_batches(**fields):
        args = PretrainingArguments(output_dir="unused", train_data=str(AN4), min_sample_seconds=1.0,
                                    max_sample_seconds=10.0, max_batch_seconds=40.0, **fields)
        batches, _ = build_pretraining_batches(args, config)
        return [batch["input_values"] for batch in batches(0)]

    plain = first_batches()
    perturbed = first_batches(speed_perturbation=[0.9, 1.1])
    assert [b.shape for b in perturbed] != [b.shape for b in plain]
    again = first_batches(speed_perturbation=[0.9, 1.1])
    assert all(torch.equal(a, b) for a, b in zip(perturbed, again))

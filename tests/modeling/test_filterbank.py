"""The log-mel filterbank front-end (``feature_frontend="filterbank"``) against a plain NumPy
Kaldi fbank written from the documented steps, on real AN4 audio."""


import numpy as np
import pytest
import soundfile
import torch

from hfspeech import SpeechEncoderConfig, SpeechEncoderForCTC
from hfspeech.modeling.filterbank import FilterbankEncoder, kaldi_mel_banks
from helpers import FIXTURES as TEST_FIXTURES

FIXTURES = TEST_FIXTURES / "an4"


def reference_fbank(waveform: np.ndarray, num_mel_bins: int, window: int = 400, hop: int = 320) -> np.ndarray:
    """Kaldi fbank (snip_edges, no dither) frame by frame in float64: DC removal, pre-emphasis 0.97,
    Povey window, 512-point power spectrum, triangles linear in Kaldi mel from 20 Hz to 8 kHz, log."""
    def mel(f):
        return 1127.0 * np.log(1.0 + f / 700.0)

    edges = np.linspace(mel(20.0), mel(8000.0), num_mel_bins + 2)
    frames = []
    for start in range(0, len(waveform) - window + 1, hop):
        frame = waveform[start:start + window].astype(np.float64)
        frame = frame - frame.mean()
        frame = np.append(frame[0] - 0.97 * frame[0], frame[1:] - 0.97 * frame[:-1])
        frame = frame * (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(window) / (window - 1))) ** 0.85
        power = np.abs(np.fft.rfft(frame, 512)) ** 2
        energies = []
        for m in range(num_mel_bins):
            total = 0.0
            for k in range(256):  # the Nyquist bin (256) has weight 0
                f = mel(k * 16000 / 512)
                if edges[m] < f < edges[m + 2]:
                    weight = (f - edges[m]) / (edges[m + 1] - edges[m]) if f <= edges[m + 1] else \
                        (edges[m + 2] - f) / (edges[m + 2] - edges[m + 1])
                    total += weight * power[k]
            energies.append(np.log(max(total, np.finfo(np.float32).eps)))
        frames.append(energies)
    return np.array(frames)


def filterbank_config(**overrides) -> SpeechEncoderConfig:
    return SpeechEncoderConfig.from_preset("tiny", feature_frontend="filterbank", num_mel_bins=23, **overrides)


def test_log_mel_energies_match_a_plain_kaldi_fbank_on_real_speech():
    waveform, rate = soundfile.read(FIXTURES / "fash" / "cen7-fash-b.flac", dtype="float32")
    assert rate == 16000
    waveform = waveform[: 16000]  # one second keeps the reference loop quick
    ours = FilterbankEncoder(filterbank_config())(torch.from_numpy(waveform)[None])[0].numpy()
    expected = reference_fbank(waveform, 23)
    assert ours.shape == expected.shape == (49, 23)
    np.testing.assert_allclose(ours, expected, atol=2e-3)


def test_stacked_frames_are_consecutive_10ms_log_mels_side_by_side():
    """filterbank_stack=4 on 40 ms frames: frame t = the reference's 10 ms frames 4t..4t+3, concatenated."""
    waveform, _ = soundfile.read(FIXTURES / "fash" / "cen7-fash-b.flac", dtype="float32")
    waveform = waveform[: 8000]
    config = filterbank_config(conv_stride=[5, 2, 2, 2, 2, 2, 4], filterbank_stack=4)
    assert config.frame_rate == 25 and config.feature_dim == 4 * 23
    ours = FilterbankEncoder(config)(torch.from_numpy(waveform)[None])[0].numpy()
    windows = reference_fbank(waveform, 23, window=400, hop=160)  # 48 windows of 25 ms every 10 ms
    assert ours.shape == (12, 92) and len(windows) == 48
    np.testing.assert_allclose(ours, windows.reshape(12, 92), atol=2e-3)
    lengths = torch.tensor([8000, 8000 + 159, 8000 + 160 * 4, 399])
    model = SpeechEncoderForCTC(filterbank_config(conv_stride=[5, 2, 2, 2, 2, 2, 4], filterbank_stack=4, vocab_size=8))
    assert model.frame_lengths(lengths).tolist() == [12, 12, 13, 0]
    with torch.no_grad():
        assert model(torch.randn(1, 8000 + 160 * 4)).logits.shape[1] == 13
        with pytest.raises(ValueError, match=r"700 samples, fewer than .* receptive field \(880 samples"):
            model(torch.randn(1, 700))  # longer than one 25 ms window, shorter than the 4 stacked ones


def test_config_refuses_a_stack_that_does_not_divide_the_frame_and_labels_off_the_frame_rate():
    with pytest.raises(ValueError, match="filterbank_stack must be a positive divisor of the 320 samples"):
        filterbank_config(filterbank_stack=3)
    assert filterbank_config(conv_stride=[5, 2, 2, 2, 2, 2, 4], label_rate=25).label_rate == 25
    with pytest.raises(ValueError, match=r"frame rate \(50 Hz for 320-sample frames"):
        filterbank_config(label_rate=30)


def test_mel_banks_are_triangles_that_cover_the_band():
    banks = kaldi_mel_banks(80, 512)
    assert banks.shape == (80, 257) and banks.min() >= 0 and banks.max() <= 1
    assert np.all(banks[:, 256] == 0)  # Nyquist
    peaks = banks.argmax(axis=1)
    assert np.all(np.diff(peaks) >= 0)  # centres rise with the filter index
    with pytest.raises(ValueError, match="low_freq"):
        kaldi_mel_banks(80, 512, low_freq=9000.0)


def test_frames_and_padding_match_the_conv_stack():
    """Same frame count as the waveform model; a padded utterance gets its unpadded features."""
    torch.manual_seed(0)
    short, long = torch.randn(5_123), torch.randn(9_999)
    model = SpeechEncoderForCTC(filterbank_config(vocab_size=8)).eval()
    waveform_model = SpeechEncoderForCTC(SpeechEncoderConfig.from_preset("tiny", vocab_size=8)).eval()
    batch = torch.zeros(2, 9_999)
    batch[0, :5_123], batch[1] = short, long
    mask = torch.zeros(2, 9_999, dtype=torch.long)
    mask[0, :5_123], mask[1] = 1, 1
    lengths = mask.sum(-1)
    assert torch.equal(model.frame_lengths(lengths), waveform_model.frame_lengths(lengths))
    with torch.no_grad():
        padded = model(batch, attention_mask=mask).logits
        alone = model(short[None]).logits
        assert padded.shape[1] == waveform_model(batch, attention_mask=mask).logits.shape[1]
    frames = int(model.frame_lengths(torch.tensor([5_123]))[0])
    torch.testing.assert_close(padded[0, :frames], alone[0], atol=1e-5, rtol=1e-5)


def test_a_filterbank_model_has_no_front_end_parameters_and_learns():
    """CTC gradients reach every parameter; a few updates lower the loss on real speech."""
    waveform, _ = soundfile.read(FIXTURES / "mblw" / "an1-mblw-b.flac", dtype="float32")
    waveform = (waveform - waveform.mean()) / waveform.std()
    torch.manual_seed(0)
    model = SpeechEncoderForCTC(filterbank_config(vocab_size=6, apply_spec_augment=False, hidden_dropout=0.0,
                                                  attention_dropout=0.0, feat_proj_dropout=0.0))
    assert not list(model.speech_encoder.feature_encoder.parameters())
    inputs, labels = torch.from_numpy(waveform)[None], torch.tensor([[1, 2, 3, 4, 5]])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = model(inputs, labels=labels).loss
        loss.backward()
        if not losses:
            assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p is not
                       model.speech_encoder.masked_spec_embed)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_config_refuses_an_unknown_front_end():
    with pytest.raises(ValueError, match="feature_frontend"):
        SpeechEncoderConfig(feature_frontend="mfcc")


def test_conversion_to_transformers_refuses_a_filterbank_model(tmp_path):
    from hfspeech.modeling.convert import convert_to_transformers

    SpeechEncoderForCTC(filterbank_config(vocab_size=8)).save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match="cannot be converted"):
        convert_to_transformers(tmp_path / "model", tmp_path / "out")


def test_a_saved_filterbank_model_loads_with_its_constants(tmp_path):
    """The window and mel filters are non-persistent buffers: ``from_pretrained`` must rebuild them."""
    torch.manual_seed(0)
    model = SpeechEncoderForCTC(filterbank_config(vocab_size=8)).eval()
    model.save_pretrained(tmp_path / "model")
    loaded = SpeechEncoderForCTC.from_pretrained(tmp_path / "model").eval()
    waveform = torch.randn(1, 8000)
    with torch.no_grad():
        torch.testing.assert_close(loaded(waveform).logits, model(waveform).logits)
    from hfspeech import SpeechEncoderForPreTraining

    SpeechEncoderForPreTraining(SpeechEncoderConfig.from_preset("tiny", objective="hubert", feature_frontend="filterbank",
                                                                num_mel_bins=23)).save_pretrained(tmp_path / "pt")
    ctc = SpeechEncoderForCTC.from_pretrained(tmp_path / "pt", vocab_size=8).eval()
    with torch.no_grad():
        assert torch.isfinite(ctc(waveform).logits).all()

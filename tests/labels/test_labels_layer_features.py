"""Layer features from a tiny random transformers HubertModel: layer choice, chunking, frame counts."""

from __future__ import annotations

import pytest
import torch
from transformers import HubertConfig, HubertModel

from hfspeech.labels.layer_features import LayerFeatureReader, num_conv_frames, parse_layer_spec


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny_hubert() -> HubertModel:
    torch.manual_seed(0)
    config = HubertConfig(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16, 16, 16, 16, 16, 16), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        feat_extract_norm="layer", do_stable_layer_norm=True,
    )
    return HubertModel(config).eval()


def test_layer_features_equal_transformers_hidden_states(tiny_hubert: HubertModel) -> None:
    waveform = torch.randn(8000, generator=torch.Generator().manual_seed(1))
    reader = LayerFeatureReader(tiny_hubert, layer=2)
    features = reader(waveform)
    with torch.no_grad():
        expected = tiny_hubert(waveform[None], output_hidden_states=True).hidden_states[2][0]
    assert features.shape == (num_conv_frames(8000, reader.kernels, reader.strides), 32) == (24, 32)
    torch.testing.assert_close(features, expected)
    assert reader.frame_rate == 50.0


def test_chunked_features_match_per_chunk_forward(tiny_hubert: HubertModel) -> None:
    waveform = torch.randn(16000 * 3 + 500, generator=torch.Generator().manual_seed(2))
    reader = LayerFeatureReader(tiny_hubert, layer=1, chunk_samples=16000)
    features = reader(waveform)
    assert features.shape[0] == reader.num_frames(waveform.shape[0])
    # the 500-sample tail (>= 400 receptive field) is its own chunk; check the second chunk exactly
    with torch.no_grad():
        second = tiny_hubert(waveform[None, 16000:32000], output_hidden_states=True).hidden_states[1][0]
    torch.testing.assert_close(features[49:98], second)
    # a tail shorter than the receptive field is merged into the previous chunk, not dropped
    merged = LayerFeatureReader(tiny_hubert, layer=1, chunk_samples=16000)
    assert merged._chunks(32100) == [(0, 16000), (16000, 32100)]


def test_bad_layer_and_spec_raise() -> None:
    with pytest.raises(ValueError, match="not 'mfcc' or 'MODEL_DIR:LAYER'"):
        parse_layer_spec("model_without_layer")
    assert parse_layer_spec("runs/it1:6") == ("runs/it1", 6)


def test_layer_out_of_range_and_short_audio(tiny_hubert: HubertModel) -> None:
    with pytest.raises(ValueError, match="layer 7 does not exist"):
        LayerFeatureReader(tiny_hubert, layer=7)
    reader = LayerFeatureReader(tiny_hubert, layer=0)
    with pytest.raises(ValueError, match="utterance tiny: 100 samples"):
        reader(torch.zeros(100), utterance_id="tiny")


def test_reader_from_spec_on_an_hfspeech_model_directory(tmp_path) -> None:
    import json

    from hfspeech.configuration import SpeechEncoderConfig
    from hfspeech.modeling.models import SpeechEncoderModel

    torch.manual_seed(0)
    model = SpeechEncoderModel(SpeechEncoderConfig.from_preset("tiny", objective="hubert")).eval()
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "preprocessor_config.json").write_text(json.dumps({"do_normalize": True}))
    reader = LayerFeatureReader.from_spec(f"{tmp_path / 'model'}:1")
    assert reader.normalize and reader.name.endswith(":1") and reader.frame_rate == 50.0
    waveform = 0.3 * torch.randn(12000, generator=torch.Generator().manual_seed(3)) + 0.1
    normalized = (waveform - waveform.mean()) / torch.sqrt(waveform.var(unbiased=False) + 1e-5)
    with torch.no_grad():
        expected = model(normalized[None], output_hidden_states=True).hidden_states[1][0]
    torch.testing.assert_close(reader(waveform), expected, rtol=1e-4, atol=1e-4)


def test_chunked_features_of_a_40ms_stacked_filterbank_model() -> None:
    """Frame counts and chunk joins follow the model's own front-end (4 stacked 10 ms log-mels per 40 ms frame)."""
    from hfspeech.configuration import SpeechEncoderConfig
    from hfspeech.modeling.models import SpeechEncoderModel

    torch.manual_seed(0)
    config = SpeechEncoderConfig.from_preset("tiny", objective="hubert", feature_frontend="filterbank", num_mel_bins=23,
                                             conv_stride=[5, 2, 2, 2, 2, 2, 4], filterbank_stack=4)
    model = SpeechEncoderModel(config).eval()
    reader = LayerFeatureReader(model, layer=2, chunk_samples=16000)
    assert reader.frame_rate == 25.0 and reader.receptive_field == 880
    waveform = torch.randn(16000 + 1000, generator=torch.Generator().manual_seed(4))
    features = reader(waveform)
    assert reader._chunks(17000) == [(0, 16000), (16000, 17000)]
    assert features.shape[0] == reader.num_frames(17000) == 24 + 1  # (1 + 15600 // 160) // 4 and (1 + 600 // 160) // 4
    with torch.no_grad():
        first = model(waveform[None, :16000], output_hidden_states=True).hidden_states[2][0]
    torch.testing.assert_close(features[:24], first)

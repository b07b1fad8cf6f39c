"""Backbone and CTC model behaviour: padding invariance, presets, CTC loss, freezing, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hfspeech.configuration import SpeechEncoderConfig
from hfspeech.modeling.feature_encoder import conv_output_lengths, scale_gradient
from hfspeech.modeling.models import SpeechEncoderForCTC, SpeechEncoderModel

LAYOUTS = {
    "group_norm_post_ln": dict(feat_extract_norm="group", layer_norm_first=False),
    "layer_norm_pre_ln": dict(feat_extract_norm="layer", layer_norm_first=True, conv_bias=True),
}


def tiny(**overrides) -> SpeechEncoderConfig:
    fields = dict(hidden_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0, vocab_size=8)
    fields.update(overrides)
    return SpeechEncoderConfig.from_preset("tiny", **fields)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_padding_does_not_change_outputs(layout):
    """An utterance padded inside a batch gives the hidden states and logits it gives alone."""
    torch.manual_seed(0)
    model = SpeechEncoderForCTC(tiny(**LAYOUTS[layout])).eval()
    generator = torch.Generator().manual_seed(0)
    lengths = [16000, 9321, 4003]
    batch = torch.zeros(len(lengths), max(lengths))
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    utterances = [torch.randn(n, generator=generator) for n in lengths]
    for row, utterance in enumerate(utterances):
        batch[row, : len(utterance)] = utterance
        batch[row, len(utterance):] = 3.0  # garbage padding must not matter either
        mask[row, : len(utterance)] = 1
    with torch.no_grad():
        together = model(batch, attention_mask=mask, output_hidden_states=True)
        for row, utterance in enumerate(utterances):
            alone = model(utterance[None], output_hidden_states=True)
            frames = alone.logits.shape[1]
            assert frames == int(conv_output_lengths(torch.tensor([len(utterance)]), model.config.conv_kernel, model.config.conv_stride)[0])
            torch.testing.assert_close(together.logits[row, :frames], alone.logits[0], atol=1e-4, rtol=0)
            for layer_together, layer_alone in zip(together.hidden_states, alone.hidden_states):
                torch.testing.assert_close(layer_together[row, :frames], layer_alone[0], atol=1e-4, rtol=0)


def test_preset_sizes_match_papers():
    expected = {"base": 95e6, "large": 317e6, "xlarge": 964e6}
    for name, count in expected.items():
        with torch.device("meta"):
            model = SpeechEncoderModel(SpeechEncoderConfig.from_preset(name))
        parameters = sum(p.numel() for p in model.parameters())
        assert abs(parameters / count - 1) <= 0.015, (name, parameters)


def test_presets_carry_fairseq_values():
    base = SpeechEncoderConfig.from_preset("base", objective="wav2vec2")
    assert (base.mask_time_prob, base.feature_grad_mult, base.gumbel_temperature_min) == (0.65, 0.1, 0.5)
    assert base.conv_kernel == [10, 3, 3, 3, 3, 2, 2] and base.conv_stride == [5, 2, 2, 2, 2, 2, 2]
    assert (base.num_conv_pos_embeddings, base.num_conv_pos_embedding_groups) == (128, 16)
    large = SpeechEncoderConfig.from_preset("large", objective="wav2vec2")
    assert large.layer_norm_first and large.feat_extract_norm == "layer" and large.gumbel_temperature_min == 0.1
    hubert = SpeechEncoderConfig.from_preset("base", objective="hubert")
    assert hubert.mask_time_prob == 0.8 and hubert.objective == "hubert"
    assert base.inputs_to_logits_ratio == 320 and base.receptive_field == 400


def test_unknown_preset_and_objective_are_refused():
    with pytest.raises(ValueError, match="Unknown preset 'huge'.*base"):
        SpeechEncoderConfig.from_preset("huge")
    with pytest.raises(ValueError, match="objective"):
        SpeechEncoderConfig.from_preset("base", objective="wav2vec3")


def test_ctc_loss_equals_hand_computed_reference():
    """Our CTC loss (mean reduction) against torch's CTC on log-softmaxed logits, utterance by utterance."""
    torch.manual_seed(0)
    model = SpeechEncoderForCTC(tiny()).eval()
    audio = torch.randn(2, 12000)
    mask = torch.ones(2, 12000, dtype=torch.long)
    mask[1, 7000:] = 0
    labels = torch.tensor([[3, 4, 5, 4], [6, 7, -100, -100]])
    with torch.no_grad():
        output = model(audio, attention_mask=mask, labels=labels)
    frames = model.frame_lengths(mask.sum(-1))
    per_utterance = []
    for row in range(2):
        log_probs = F.log_softmax(output.logits[row, : frames[row]], dim=-1)
        target = labels[row][labels[row] >= 0]
        loss = F.ctc_loss(log_probs[:, None], target[None], frames[row: row + 1], torch.tensor([len(target)]),
                          blank=0, reduction="sum")
        per_utterance.append(loss / len(target))
    torch.testing.assert_close(output.loss, torch.stack(per_utterance).mean(), atol=1e-5, rtol=1e-5)


def test_ctc_label_out_of_vocabulary_is_explained():
    model = SpeechEncoderForCTC(tiny())
    with pytest.raises(ValueError, match="vocab_size=8"):
        model(torch.randn(1, 4000), labels=torch.tensor([[9]]))


def test_freeze_feature_encoder_stops_its_gradients():
    torch.manual_seed(0)
    model = SpeechEncoderForCTC(tiny(mask_time_prob=0.0))
    model.freeze_feature_encoder()
    model.train()
    model(torch.randn(2, 6000), labels=torch.tensor([[3, 4], [5, 6]])).loss.backward()
    assert all(p.grad is None for p in model.speech_encoder.feature_encoder.parameters())
    assert model.lm_head.weight.grad is not None
    assert model.speech_encoder.feature_projection.projection.weight.grad is not None


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = SpeechEncoderForCTC(tiny(mask_time_prob=0.0)).train()
    audio, labels = torch.randn(2, 6000), torch.tensor([[3, 4], [5, 6]])
    model(audio, labels=labels).loss.backward()
    plain = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.speech_encoder.encoder.gradient_checkpointing
    model(audio, labels=labels).loss.backward()
    for name, parameter in model.named_parameters():
        if name in plain:
            torch.testing.assert_close(parameter.grad, plain[name], atol=1e-6, rtol=1e-5)


def test_layerdrop_skips_layers_in_training_only():
    torch.manual_seed(0)
    model = SpeechEncoderModel(tiny(layerdrop=1.0, mask_time_prob=0.0))
    audio = torch.randn(1, 6000)
    model.train()
    with torch.no_grad():
        out = model(audio, output_hidden_states=True)
    # every layer dropped: the output is the first layer's input (post-LN model)
    torch.testing.assert_close(out.last_hidden_state, out.hidden_states[0])
    model.eval()
    with torch.no_grad():
        out = model(audio, output_hidden_states=True)
    assert not torch.allclose(out.last_hidden_state, out.hidden_states[0])


def test_feature_gradient_scale():
    features = torch.randn(3, requires_grad=True)
    scale_gradient(features, 0.1).sum().backward()
    torch.testing.assert_close(features.grad, torch.full((3,), 0.1))


def test_save_and_load_round_trip_as_safetensors(tmp_path):
    torch.manual_seed(0)
    model = SpeechEncoderForCTC(tiny()).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = SpeechEncoderForCTC.from_pretrained(tmp_path).eval()
    audio = torch.randn(1, 5000)
    with torch.no_grad():
        torch.testing.assert_close(loaded(audio).logits, model(audio).logits, atol=0, rtol=0)


@pytest.mark.parametrize(
    "audio,mask,message",
    [
        (torch.randn(1, 2, 8000), None, "shape"),
        (torch.zeros(1, 8000, dtype=torch.int16), None, "floating point"),
        (torch.randn(1, 300), None, "receptive field"),
        (torch.randn(2, 8000), torch.tensor([[1] * 8000, [1] * 200 + [0] * 7800]), "receptive field"),
    ],
)
def test_bad_input_is_explained(audio, mask, message):
    model = SpeechEncoderModel(tiny()).eval()
    with pytest.raises(ValueError, match=message):
        model(audio, attention_mask=mask)


def test_feature_projection_and_positional_conv_get_fairseqs_initialisation():
    """transformers skips modules without parameters of their own for custom code, so these two are
    initialised from the backbone's branch: U(+-1/sqrt(C)) projection, N(0, 4/(k*H)) positional conv."""
    import math

    config = SpeechEncoderConfig.from_preset("tiny", hidden_size=64, num_attention_heads=2, conv_dim=[256] * 7,
                                             num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=2)
    torch.manual_seed(0)
    model = SpeechEncoderForCTC(config).speech_encoder.requires_grad_(False)
    projection = model.feature_projection.projection
    bound = 1 / math.sqrt(256)
    assert projection.weight.abs().max() <= bound
    assert float(projection.weight.std()) == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert projection.bias.abs().max() <= bound and projection.bias.abs().max() > 0.5 * bound
    conv = model.encoder.pos_conv.conv
    direction = conv.parametrizations.weight.original1
    assert float(direction.std()) == pytest.approx(2 * math.sqrt(1 / (32 * 64)), rel=0.05)
    torch.testing.assert_close(conv.weight, direction)  # weight norm starts at the drawn weights
    assert torch.count_nonzero(conv.bias) == 0

"""`Linear`: oneDNN products for wide fp32 CPU layers, equal to ``F.linear`` forward and backward."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import transformers

from hfspeech.modeling.fast_cpu import linear as linear_module
from hfspeech.modeling.fast_cpu.linear import MIN_FEATURES
from hfspeech.modeling.linear import Linear

pytestmark = pytest.mark.skipif(not linear_module.onednn_linear_enabled(), reason="oneDNN not available")


def _grads(layer: torch.nn.Linear, input: torch.Tensor, grad: torch.Tensor, forward) -> list[torch.Tensor]:
    input = input.clone().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    output = forward(input)
    output.backward(grad)
    return [output.detach(), input.grad] + [p.grad for p in layer.parameters()]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(3, 37, 256), (50, 256)])
def test_wide_layers_run_on_onednn_and_equal_f_linear(bias, shape):
    torch.manual_seed(0)
    layer = Linear(256, 384, bias=bias)
    input = torch.randn(*shape)
    assert layer._use_onednn(input)
    grad = torch.randn(*shape[:-1], 384)
    ours = _grads(layer, input, grad, layer)
    reference = _grads(layer, input, grad, lambda x: F.linear(x, layer.weight, layer.bias))
    assert len(ours) == len(reference) == (4 if bias else 3)
    for got, expected in zip(ours, reference):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_gradient_only_for_what_needs_it():
    layer = Linear(256, 256)
    layer.weight.requires_grad_(False)
    input = torch.randn(4, 256, requires_grad=True)
    layer(input).sum().backward()
    assert layer.weight.grad is None and layer.bias.grad is not None and input.grad is not None
    with torch.no_grad():  # inference
        torch.testing.assert_close(layer(input), F.linear(input, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


def test_narrow_low_precision_and_autocast_calls_take_f_linear():
    assert not Linear(MIN_FEATURES - 1, 512)._use_onednn(torch.randn(2, MIN_FEATURES - 1))
    wide = Linear(256, 256)
    assert not wide._use_onednn(torch.randn(2, 256, dtype=torch.bfloat16))
    assert not wide._use_onednn(torch.randn(0, 256))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not wide._use_onednn(torch.randn(2, 256))
        assert wide(torch.randn(2, 256)).dtype == torch.bfloat16  # autocast still applies
    assert not Linear(256, 256).to(torch.bfloat16)._use_onednn(torch.randn(2, 256))


def test_state_dict_is_nn_linear_s():
    torch.manual_seed(0)
    reference = torch.nn.Linear(256, 300)
    ours = Linear(256, 300)
    ours.load_state_dict(reference.state_dict())
    assert list(ours.state_dict()) == list(reference.state_dict())
    torch.testing.assert_close(ours(torch.ones(1, 256)), reference(torch.ones(1, 256)), rtol=1e-5, atol=1e-5)


def test_environment_switch_turns_it_off():
    code = "from hfspeech.modeling.linear import Linear; import torch; print(Linear(256, 256)._use_onednn(torch.ones(1, 256)))"
    for value, expected in (("0", "False"), ("1", "True")):
        env = {**os.environ, linear_module.ONEDNN_LINEAR_ENV: value}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
        assert out.strip() == expected


def test_a_wide_model_trains_like_transformers(tmp_path, single_thread):
    """CTC loss and every gradient of a 256-wide model (all its Transformer products on oneDNN)
    equal those of transformers' Wav2Vec2ForCTC with the same weights (its products on MKL)."""
    from hfspeech.modeling.convert import convert_transformers_checkpoint, transformers_to_hfspeech_state_dict
    from hfspeech.modeling.models import SpeechEncoderForCTC

    config = transformers.Wav2Vec2Config(
        hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
        conv_dim=(32,) * 6 + (256,), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, vocab_size=12,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0, final_dropout=0.0,
        layerdrop=0.0, mask_time_prob=0.0, ctc_loss_reduction="sum",
    )
    torch.manual_seed(0)
    reference = transformers.Wav2Vec2ForCTC(config)
    reference.save_pretrained(tmp_path / "source")
    convert_transformers_checkpoint(tmp_path / "source", tmp_path / "converted")
    ours = SpeechEncoderForCTC.from_pretrained(tmp_path / "converted")
    assert isinstance(ours.speech_encoder.encoder.layers[0].feed_forward.intermediate, Linear)
    generator = torch.Generator().manual_seed(1)
    audio = torch.randn(2, 16000, generator=generator)
    labels = torch.randint(1, 12, (2, 6), generator=generator)
    reference.train()
    ours.train()
    expected = reference(audio, labels=labels).loss
    got = ours(audio, labels=labels).loss
    expected.backward()
    got.backward()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    reference_grads = transformers_to_hfspeech_state_dict({name: p.grad for name, p in reference.named_parameters() if p.grad is not None},
                              "wav2vec2", True)
    our_grads = {name: p.grad for name, p in ours.named_parameters() if p.grad is not None}
    assert reference_grads.keys() == our_grads.keys()
    # (the key bias gets only rounding noise: softmax ignores a constant added to every score of a row)
    floor = 1e-3 * max(grad.abs().max() for grad in reference_grads.values())
    for name, grad in our_grads.items():
        scale = torch.maximum(reference_grads[name].abs().max(), floor)
        torch.testing.assert_close(grad / scale, reference_grads[name] / scale, rtol=1e-3, atol=1e-4, msg=name)

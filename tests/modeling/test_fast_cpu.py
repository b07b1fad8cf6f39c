"""The fast CPU backend (`hfspeech.modeling.fast_cpu`) equals the plain modules, and HFSPEECH_FAST_CPU=0 selects them.

Conv stack, linear and attention without dropout: values and gradients equal to float32
rounding. Dropout masks are drawn differently (``torch.rand(shape) >= p`` here, ``bernoulli_``
in torch), so dropout is compared by its definition with the backend's own mask, and with
the plain path statistically (kept fraction, scale, gradient = mask * scale, mean output).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hfspeech.configuration import SpeechEncoderConfig, conv_output_lengths
from hfspeech.modeling import fast_cpu
from hfspeech.modeling.dropout import Dropout, attention, dropout
from hfspeech.modeling.fast_cpu import conv as fast_conv
from hfspeech.modeling.fast_cpu import dropout as fast_dropout
from hfspeech.modeling.fast_cpu import linear as fast_linear
from hfspeech.modeling.feature_encoder import FeatureEncoder
from hfspeech.modeling.linear import Linear


def _values_and_grads(function, inputs: list[torch.Tensor], upstream: torch.Tensor):
    output = function()
    return output.detach(), torch.autograd.grad((output * upstream).sum(), inputs)


def _assert_relative_close(got, expected, tolerance=1e-4, name=""):
    scale = expected.abs().max().clamp(min=1e-6)
    assert (got - expected).abs().max() / scale < tolerance, name


@pytest.mark.parametrize("norm", ["group", "layer"])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("conv_dim,channels_last", [((32,) * 7, True), ((32,) * 7, False), ((160, 48, 48), None)])
def test_conv_stack_equals_plain_values_and_gradients(monkeypatch, norm, padded, conv_dim, channels_last):
    """``channels_last=None``: the backend's own layout rule (channels-first for this 160-wide stack)."""
    torch.manual_seed(0)
    kernels, strides = ((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)) if len(conv_dim) == 7 else ((10, 3, 2), (5, 2, 2))
    config = SpeechEncoderConfig.from_preset("tiny", feat_extract_norm=norm, conv_bias=norm == "layer",
                                             conv_dim=conv_dim, conv_kernel=kernels, conv_stride=strides)
    encoder = FeatureEncoder(config)
    with torch.no_grad():  # non-trivial norm parameters
        for parameter in encoder.parameters():
            if parameter.dim() == 1:
                parameter.add_(0.3 * torch.randn_like(parameter))
    audio = torch.randn(3, 6000, requires_grad=True)
    lengths = torch.tensor([6000, 4700, 3003]) if padded else None
    inputs = [audio] + list(encoder.parameters())
    assert fast_conv.applies(audio)
    fast = fast_conv.feature_encoder(encoder, audio, lengths, channels_last=channels_last)
    monkeypatch.setenv(fast_cpu.FAST_CPU_ENV, "0")
    assert not fast_conv.applies(audio)
    reference = encoder(audio, lengths)  # the plain blocks
    assert fast.shape == reference.shape
    frames = conv_output_lengths(lengths if padded else torch.tensor([6000] * 3), kernels, strides)
    valid = (torch.arange(fast.shape[1])[None] < frames[:, None])[..., None]
    torch.testing.assert_close(fast * valid, reference * valid, atol=1e-5, rtol=1e-4)
    upstream = torch.randn_like(fast) * valid
    fast_grads = torch.autograd.grad((fast * upstream).sum(), inputs)
    plain_grads = torch.autograd.grad((reference * upstream).sum(), inputs)
    names = ["audio"] + [name for name, _ in encoder.named_parameters()]
    for name, got, expected in zip(names, fast_grads, plain_grads):
        _assert_relative_close(got, expected, name=name)


def test_padding_never_changes_a_valid_frame_on_either_path(monkeypatch):
    torch.manual_seed(0)
    encoder = FeatureEncoder(SpeechEncoderConfig.from_preset("tiny"))
    audio = torch.randn(1, 5000)
    padded = torch.cat([audio, torch.randn(1, 3000)], dim=1)
    for switch in ("1", "0"):
        monkeypatch.setenv(fast_cpu.FAST_CPU_ENV, switch)
        alone = encoder(audio)
        together = encoder(torch.cat([padded, padded]), torch.tensor([5000, 8000]))
        torch.testing.assert_close(together[0, : alone.shape[1]], alone[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_equals_f_linear_values_and_gradients(monkeypatch, bias):
    torch.manual_seed(0)
    layer = Linear(256, 320, bias=bias)
    input = torch.randn(3, 17, 256, requires_grad=True)
    inputs = [input] + list(layer.parameters())
    upstream = torch.randn(3, 17, 320)
    assert layer._use_onednn(input) == fast_linear.onednn_linear_enabled()
    got, got_grads = _values_and_grads(lambda: layer(input), inputs, upstream)
    expected, expected_grads = _values_and_grads(lambda: F.linear(input, layer.weight, layer.bias), inputs, upstream)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for a, b in zip(got_grads, expected_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    monkeypatch.setenv(fast_cpu.FAST_CPU_ENV, "0")
    assert not layer._use_onednn(input)
    assert torch.equal(layer(input), F.linear(input, layer.weight, layer.bias))  # the plain path, bit for bit


def test_dropout_backend_mask_is_torch_rand_and_plain_path_is_f_dropout(monkeypatch):
    x = torch.randn(6, 50, requires_grad=True)
    torch.manual_seed(5)
    got = dropout(x, 0.3)
    torch.manual_seed(5)
    keep = torch.rand(x.shape) >= 0.3
    torch.testing.assert_close(got, x * keep / 0.7)  # the backend's mask: torch.rand(shape) >= p
    monkeypatch.setenv(fast_cpu.FAST_CPU_ENV, "0")
    assert not fast_dropout.applies(x)
    torch.manual_seed(5)
    plain = Dropout(0.3).train()(x)
    torch.manual_seed(5)
    assert torch.equal(plain, F.dropout(x, 0.3, training=True))  # same seed -> torch's own mask


@pytest.mark.parametrize("switch", ["1", "0"])
def test_dropout_distribution_and_gradient_on_both_paths(monkeypatch, switch):
    """Statistical: kept fraction 1 - p within 4.5 sigma, kept values scaled by 1 / (1 - p), grad = mask / (1 - p)."""
    monkeypatch.setenv(fast_cpu.FAST_CPU_ENV, switch)
    torch.manual_seed(0)
    n, p = 200_000, 0.3
    x = torch.ones(n, requires_grad=True)
    out = dropout(x, p)
    kept = out != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 4.5 * (p * (1 - p) / n) ** 0.5
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / (1 - p)))
    weights = torch.arange(4.0).repeat(n // 4)
    (out * weights).sum().backward()
    torch.testing.assert_close(x.grad, torch.where(kept, weights / (1 - p), torch.zeros(())))


@pytest.mark.parametrize("masked", [False, True])
def test_attention_backend_equals_sdpa(monkeypatch, masked):
    """No dropout: both paths are SDPA. With dropout: equal in expectation (the mean over many
    independent masks tends to the undropped attention), gradients included."""
    generator = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 9, 8, generator=generator, requires_grad=True) for _ in range(3))
    key_mask = (torch.arange(9) < 6)[None, None, None, :] if masked else None
    undropped = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
    upstream = torch.randn_like(undropped)
    expected_grads = torch.autograd.grad((undropped * upstream).sum(), (q, k, v))
    draws = 4000
    for switch in ("1", "0"):
        monkeypatch.setenv(fast_cpu.FAST_CPU_ENV, switch)
        torch.testing.assert_close(attention(q, k, v, key_mask, 0.0), undropped)
        torch.manual_seed(2)
        many = [t.expand(draws, -1, -1, -1) for t in (q, k, v)]
        dropped = attention(*many, key_mask, 0.2)  # (draws, 2, 9, 8): one mask per draw
        mean = dropped.mean(0, keepdim=True)
        scale = undropped.abs().max()
        assert (mean - undropped).abs().max() / scale < 0.05, switch
        grads = torch.autograd.grad((mean * upstream).sum(), (q, k, v))
        for got, expected in zip(grads, expected_grads):
            assert (got - expected).abs().max() / expected.abs().max() < 0.08, switch


def test_switch_off_selects_the_plain_path_in_a_training_model(monkeypatch):
    """HFSPEECH_FAST_CPU=0: no backend function is called in a training step; on, each one is."""
    from hfspeech.modeling.models import SpeechEncoderForCTC

    config = SpeechEncoderConfig.from_preset("tiny", vocab_size=8, hidden_size=256, intermediate_size=256,
                                             num_attention_heads=4, num_conv_pos_embeddings=16,
                                             num_conv_pos_embedding_groups=4, attention_dropout=0.1,
                                             hidden_dropout=0.1, layerdrop=0.0, mask_time_prob=0.0)
    torch.manual_seed(0)
    model = SpeechEncoderForCTC(config).train()
    audio, labels = torch.randn(2, 4000), torch.randint(1, 8, (2, 3))
    calls: dict[str, int] = {}
    for module, name in ((fast_conv, "feature_encoder"), (fast_linear, "linear"), (fast_dropout, "dropout"),
                         (fast_dropout, "attention")):
        function = getattr(module, name)

        def counted(*args, _function=function, _name=name, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _function(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)
    assert fast_cpu.enabled()
    model(audio, labels=labels).loss.backward()
    assert set(calls) == {"feature_encoder", "linear", "dropout", "attention"}
    calls.clear()
    monkeypatch.setenv(fast_cpu.FAST_CPU_ENV, "0")
    assert not fast_cpu.enabled()
    model(audio, labels=labels).loss.backward()
    assert calls == {}


@pytest.mark.parametrize("value,expected", [("0", False), ("off", False), ("false", False), ("1", True), ("", True)])
def test_environment_values(monkeypatch, value, expected):
    monkeypatch.setenv(fast_cpu.FAST_CPU_ENV, value)
    assert fast_cpu.enabled() is expected


def test_allocator_setting_is_off_with_the_switch(monkeypatch):
    from hfspeech.training.acceleration import reuse_freed_memory

    monkeypatch.setenv(fast_cpu.FAST_CPU_ENV, "0")
    assert reuse_freed_memory() is False

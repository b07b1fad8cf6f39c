"""The Gumbel product quantizer against transformers' and hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2GumbelVectorQuantizer

from hfspeech.configuration import SpeechEncoderConfig
from hfspeech.modeling.quantizer import GumbelProductQuantizer


def tiny(**overrides) -> SpeechEncoderConfig:
    return SpeechEncoderConfig.from_preset("tiny", **overrides)


def test_quantizer_eval_matches_transformers():
    config = tiny(codevector_dim=16, num_codevectors_per_group=8)
    torch.manual_seed(0)
    ours = GumbelProductQuantizer(config).eval()
    reference = Wav2Vec2GumbelVectorQuantizer(config).eval()
    reference.load_state_dict(ours.state_dict())
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(3, 40, config.conv_dim[-1], generator=generator)
    mask = torch.rand(3, 40, generator=generator) < 0.5
    with torch.no_grad():
        expected, expected_perplexity = reference(features, mask_time_indices=mask)
        output = ours(features, mask=mask)
    torch.testing.assert_close(output.codevectors.view(3, 40, -1), expected, rtol=0, atol=0)
    torch.testing.assert_close(output.perplexity, expected_perplexity, rtol=1e-6, atol=0)
    assert output.codevector_indices.shape == (3 * 40, 2)


def test_gumbel_choices_follow_softmax_and_are_hard():
    """Gumbel-max: P(entry c) = softmax(logits)_c at any temperature; forward values are codebook rows."""
    config = tiny(codevector_dim=8, num_codevectors_per_group=5)
    torch.manual_seed(1)
    quantizer = GumbelProductQuantizer(config).train()
    quantizer.set_num_updates(0)
    frame = torch.randn(1, config.conv_dim[-1]) * 0.05
    features = frame.expand(20000, -1)
    output = quantizer(features, generator=torch.Generator().manual_seed(1))
    probabilities = torch.softmax(quantizer.weight_proj(frame).view(2, 5), dim=-1).detach()
    for group in range(2):
        frequency = torch.bincount(output.codevector_indices[:, group], minlength=5).double() / 20000
        torch.testing.assert_close(frequency.float(), probabilities[group], atol=0.012, rtol=0)
    codebook = quantizer.codevectors.detach().view(2, 5, 4)
    expected = torch.cat([codebook[0, output.codevector_indices[:, 0]], codebook[1, output.codevector_indices[:, 1]]], dim=-1)
    torch.testing.assert_close(output.codevectors.detach(), expected, rtol=0, atol=1e-6)


def test_straight_through_gradients():
    config = tiny(codevector_dim=8, num_codevectors_per_group=6)
    torch.manual_seed(2)
    quantizer = GumbelProductQuantizer(config).train()
    features = torch.randn(50, config.conv_dim[-1])
    output = quantizer(features, generator=torch.Generator().manual_seed(2))
    upstream = torch.randn_like(output.codevectors)
    (output.codevectors * upstream).sum().backward()
    # The codebook sees the hard choice: entry c of group g gets the sum of the upstream
    # gradients of the frames that picked it, unchosen entries get nothing.
    expected = torch.zeros(2, 6, 4)
    for group in range(2):
        expected[group].index_add_(0, output.codevector_indices[:, group], upstream[:, group * 4 : (group + 1) * 4])
    torch.testing.assert_close(quantizer.codevectors.grad.view(2, 6, 4), expected, rtol=1e-5, atol=1e-6)
    assert quantizer.weight_proj.weight.grad.abs().sum() > 0  # through the soft sample


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op produces (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for value in tree_flatten(result)[0]:
            if isinstance(value, torch.Tensor):
                self.largest = max(self.largest, value.numel())
        return result


@pytest.mark.parametrize("training", [True, False])
def test_quantizer_never_builds_one_hot_times_codebook(training):
    """transformers' quantizer makes an (N, G*V, D/G) tensor; ours stays at the (N, G, V) selection."""
    config = tiny(codevector_dim=64, num_codevectors_per_group=40)
    frames, selection = 200, 200 * 2 * 40
    features = torch.randn(frames, config.conv_dim[-1], requires_grad=True)
    sizes = {}
    for name, module in (("ours", GumbelProductQuantizer(config)), ("transformers", Wav2Vec2GumbelVectorQuantizer(config))):
        module.train(training)
        with LargestTensor() as recorder:
            output = module(features) if name == "ours" else module(features[None])
            codevectors = output.codevectors if name == "ours" else output[0]
            if training:
                codevectors.sum().backward()
        sizes[name] = recorder.largest
    assert sizes["transformers"] >= selection * 32  # the one-hot x codebook product (D/G = 32)
    assert sizes["ours"] <= selection, sizes


def test_temperature_schedule():
    config = tiny()
    quantizer = GumbelProductQuantizer(config)
    assert quantizer.temperature == 2.0
    quantizer.set_num_updates(100_000)
    assert math.isclose(quantizer.temperature, 2.0 * 0.999995**100_000)  # 1.213
    quantizer.set_num_updates(400_000)
    assert quantizer.temperature == 0.5  # floor reached (2 * 0.999995**400000 = 0.27)

"""The fused conv feature encoder (`fast_cpu.conv`) equals the plain conv -> norm -> GELU chain, values and gradients."""

from __future__ import annotations

import pytest
import torch

from hfspeech.configuration import SpeechEncoderConfig
from hfspeech.modeling.fast_cpu import conv as fast_conv
from hfspeech.modeling.feature_encoder import FeatureEncoder


def reference(encoder: FeatureEncoder, audio: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """The definition: every block's plain forward (channels-first conv1d, norm, GELU)."""
    hidden = audio[:, None, :]
    for layer in encoder.conv_layers:
        hidden, lengths = layer(hidden, lengths)
    return hidden.transpose(1, 2)


@pytest.mark.parametrize("norm", ["group", "layer"])
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("padded", [False, True])
def test_fused_encoder_matches_plain_blocks(norm, channels_last, padded):
    torch.manual_seed(0)
    config = SpeechEncoderConfig.from_preset("tiny", feat_extract_norm=norm, conv_bias=norm == "layer")
    encoder = FeatureEncoder(config)
    with torch.no_grad():  # non-trivial norm parameters
        for parameter in encoder.parameters():
            if parameter.dim() == 1:
                parameter.add_(0.3 * torch.randn_like(parameter))
    audio = torch.randn(3, 8000, requires_grad=True)
    lengths = torch.tensor([8000, 6100, 4003]) if padded else None
    fused = fast_conv.feature_encoder(encoder, audio, lengths, channels_last=channels_last)
    plain = reference(encoder, audio, lengths)
    valid = torch.ones(fused.shape[:2], dtype=torch.bool)
    if padded:
        frames = encoder.conv_layers[0].output_lengths(lengths)
        for layer in encoder.conv_layers[1:]:
            frames = layer.output_lengths(frames)
        valid = torch.arange(fused.shape[1])[None] < frames[:, None]
    torch.testing.assert_close(fused[valid], plain[valid], atol=1e-5, rtol=1e-4)
    upstream = torch.randn_like(fused) * valid[..., None]
    parameters = [audio] + list(encoder.parameters())
    fused_grads = torch.autograd.grad((fused * upstream).sum(), parameters)
    plain_grads = torch.autograd.grad((plain * upstream).sum(), parameters)
    for (name, _), got, expected in zip([("audio", None)] + list(encoder.named_parameters()), fused_grads, plain_grads):
        scale = expected.abs().max().clamp(min=1e-6)
        assert (got - expected).abs().max() / scale < 1e-4, name


def test_encoder_saves_one_tensor_per_block():
    """Autograd keeps the pre-activations only: less saved memory than plain conv -> GELU blocks."""
    config = SpeechEncoderConfig.from_preset("tiny")
    encoder = FeatureEncoder(config)
    audio = torch.randn(2, 16000)

    def saved_bytes(function) -> int:
        seen: dict[int, int] = {}

        def pack(tensor: torch.Tensor):
            if tensor.requires_grad or tensor.grad_fn is not None or tensor.numel() > 1000:
                seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            function().sum().backward()
        return sum(seen.values())

    fused = saved_bytes(lambda: encoder(audio))
    plain = saved_bytes(lambda: reference(encoder, audio, None))
    layer0 = 2 * config.conv_dim[0] * ((16000 - 10) // 5 + 1) * 4  # one (B, C, T0) float tensor
    assert fused <= plain - 2 * layer0

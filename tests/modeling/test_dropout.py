"""`hfspeech.modeling.dropout`: same distribution and gradients as torch's dropout, SDPA without dropout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hfspeech.modeling.dropout import Dropout, attention, dropout


def test_dropout_keeps_the_right_fraction_and_scales():
    torch.manual_seed(0)
    x = torch.ones(400_000, requires_grad=True)
    out = dropout(x, 0.3)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / 0.7))
    (out * torch.arange(4.0).repeat(100_000)).sum().backward()
    expected = torch.where(kept, torch.arange(4.0).repeat(100_000) / 0.7, torch.zeros(()))
    torch.testing.assert_close(x.grad, expected)


def test_dropout_is_identity_in_eval_and_for_zero():
    x = torch.randn(5, 7)
    assert dropout(x, 0.5, training=False) is x and dropout(x, 0.0) is x
    module = Dropout(0.5).eval()
    assert module(x) is x and module.state_dict() == {}
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dropout(x, 1.0)


@pytest.mark.parametrize("masked", [False, True])
def test_attention_without_dropout_is_sdpa_and_with_dropout_matches_its_definition(masked):
    generator = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 11, 8, generator=generator, requires_grad=True) for _ in range(3))
    key_mask = (torch.arange(11)[None] < torch.tensor([[11], [7]]))[:, None, None, :] if masked else None
    torch.testing.assert_close(attention(q, k, v, key_mask, 0.0),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask))
    torch.manual_seed(3)
    got = attention(q, k, v, key_mask, 0.25)
    torch.manual_seed(3)  # the definition: softmax, then dropout with the same torch.rand mask
    scores = q @ k.transpose(-1, -2) / 8**0.5
    if masked:
        scores = scores.masked_fill(~key_mask, float("-inf"))
    probs = scores.softmax(-1)
    drop = torch.rand(probs.shape) < 0.25
    expected = probs.masked_fill(drop, 0.0) / 0.75 @ v
    torch.testing.assert_close(got, expected)
    upstream = torch.randn_like(got)
    grads = torch.autograd.grad((got * upstream).sum(), (q, k, v))
    expected_grads = torch.autograd.grad((expected * upstream).sum(), (q, k, v))
    for a, b in zip(grads, expected_grads):
        torch.testing.assert_close(a, b)

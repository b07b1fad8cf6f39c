"""Span/channel masks and negative sampling against transformers' NumPy references and fairseq rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

from hfspeech.modeling.masking import compute_channel_mask, compute_span_mask, sample_negative_indices


def runs_of(mask_row: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of the maximal runs of True."""
    padded = np.concatenate([[False], mask_row, [False]]).astype(np.int8)
    edges = np.diff(padded)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return list(zip(starts.tolist(), (ends - starts).tolist()))


@pytest.mark.parametrize("mask_prob, expected", [(0.65, 0.49), (0.8, 0.57)])
def test_masked_fraction_and_runs_match_transformers(mask_prob, expected):
    """Long utterances: masked fraction and mean run length agree with transformers' NumPy sampler."""
    generator = torch.Generator().manual_seed(0)
    ours = compute_span_mask(400, 1000, mask_prob, 10, min_masks=2, generator=generator).numpy()
    np.random.seed(0)
    reference = np.concatenate([_compute_mask_indices((8, 1000), mask_prob, 10, min_masks=2) for _ in range(50)])
    assert abs(ours.mean() - expected) < 0.01
    assert abs(ours.mean() - reference.mean()) < 0.006, (ours.mean(), reference.mean())
    our_runs = [length for row in ours for _, length in runs_of(row)]
    reference_runs = [length for row in reference for _, length in runs_of(row)]
    assert min(our_runs) >= 10  # overlapping spans merge, never shorten
    assert abs(np.mean(our_runs) / np.mean(reference_runs) - 1) < 0.03, (np.mean(our_runs), np.mean(reference_runs))


def test_number_of_spans_uses_probabilistic_rounding():
    """mask_length=1 makes every span one distinct frame: count = floor(p*n + U[0,1))."""
    generator = torch.Generator().manual_seed(1)
    mask = compute_span_mask(4000, 1000, 0.3345, 1, generator=generator)
    counts = mask.sum(dim=1)
    assert set(counts.unique().tolist()) == {334, 335}
    assert abs(counts.double().mean().item() - 334.5) < 0.03  # E[floor(334.5 + U)] = 334.5


def test_min_masks_is_enforced():
    generator = torch.Generator().manual_seed(2)
    mask = compute_span_mask(500, 1000, 0.001, 1, min_masks=5, generator=generator)
    assert (mask.sum(dim=1) == 5).all()
    # With 10-frame spans 3 spans cover between 10 (all overlap) and 30 frames.
    wide = compute_span_mask(500, 1000, 0.0, 10, min_masks=3, generator=generator).sum(dim=1)
    assert wide.min() >= 10 and wide.max() == 30


def test_padding_is_never_masked_and_spans_fit():
    generator = torch.Generator().manual_seed(3)
    lengths = torch.tensor([1000, 613, 250, 40] * 100)
    mask = compute_span_mask(len(lengths), 1000, 0.65, 10, min_masks=2, frame_lengths=lengths, generator=generator)
    positions = torch.arange(1000)
    assert not (mask & (positions[None, :] >= lengths[:, None])).any()
    fractions = mask.sum(1).double() / lengths
    for length in (1000, 613, 250):
        rows = lengths == length
        # fairseq draws starts from [0, n - mask_length): the last valid frame is never covered,
        # the one before it is.
        assert not mask[rows, length - 1].any() and mask[rows, length - 2].any()
        assert abs(fractions[rows].mean().item() - 0.49) < 0.03
    # per-utterance rounding: the masked fraction does not depend on the padded length
    alone = compute_span_mask(400, 250, 0.65, 10, min_masks=2, generator=generator)
    assert abs(alone.double().mean().item() - fractions[lengths == 250].mean().item()) < 0.02


def test_short_utterances_follow_fairseq():
    """n <= mask_length + num spans: starts come from [0, num], spans are cut at n."""
    generator = torch.Generator().manual_seed(4)
    lengths = torch.tensor([5, 0, 1, 12] * 300)
    mask = compute_span_mask(len(lengths), 20, 0.65, 10, min_masks=2, frame_lengths=lengths, generator=generator)
    # n = 5, 2 spans: 2 distinct starts of {0, 1, 2}, so frames 2..4 are always covered
    assert mask[lengths == 5, 2:5].all() and not mask[lengths == 5, 5:].any()
    assert abs(mask[lengths == 5, 0].double().mean().item() - 2 / 3) < 0.06
    assert not mask[lengths == 0].any()
    # n = 1: 2 distinct starts of {0, 1, 2}; the frame is masked iff start 0 is one of them (p = 2/3)
    single = mask[lengths == 1, 0].double().mean().item()
    assert abs(single - 2 / 3) < 0.06
    # n = 12, 2 spans: n - 10 = 2 <= 2 -> starts in {0, 1, 2}, so frames 2..9 are always masked
    assert mask[lengths == 12, 2:10].all()


def test_determinism_and_device():
    def draw(seed):
        generator = torch.Generator().manual_seed(seed)
        return compute_span_mask(4, 300, 0.65, 10, min_masks=2, frame_lengths=torch.tensor([300, 200, 100, 50]),
                                 generator=generator)

    torch.testing.assert_close(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))
    assert draw(7).dtype == torch.bool and draw(7).shape == (4, 300)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_runs_on_gpu():
    generator = torch.Generator(device="cuda").manual_seed(0)
    mask = compute_span_mask(8, 1500, 0.65, 10, min_masks=2, generator=generator, device="cuda")
    assert mask.device.type == "cuda"
    negatives = sample_negative_indices(mask, 100, generator)
    assert negatives.device.type == "cuda" and (mask.flatten()[negatives[mask]]).all()


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="frame_lengths must have shape"):
        compute_span_mask(2, 10, 0.5, 2, frame_lengths=torch.tensor([10]))
    with pytest.raises(ValueError, match=r"frame_lengths must lie in \[0, num_frames=10\]"):
        compute_span_mask(2, 10, 0.5, 2, frame_lengths=torch.tensor([10, 11]))
    with pytest.raises(ValueError, match="mask_length must be an integer >= 1"):
        compute_span_mask(2, 10, 0.5, 0)
    with pytest.raises(ValueError, match="mask_prob must be >= 0"):
        compute_span_mask(2, 10, -0.1, 2)


def test_channel_mask_matches_transformers_statistics():
    generator = torch.Generator().manual_seed(5)
    ours = compute_channel_mask(3000, 768, 0.25, 64, min_masks=0, generator=generator)
    np.random.seed(5)
    reference = np.concatenate([_compute_mask_indices((30, 768), 0.25, 64, min_masks=0) for _ in range(100)])
    assert ours.shape == (3000, 768)
    # transformers rounds once per batch, fairseq/us once per row: the means agree, not the spreads.
    assert abs(ours.double().mean().item() - reference.mean()) < 0.01, (ours.double().mean().item(), reference.mean())


def test_negatives_are_other_masked_steps_of_the_same_utterance():
    generator = torch.Generator().manual_seed(6)
    lengths = torch.tensor([300, 180, 60])
    mask = compute_span_mask(3, 300, 0.65, 10, min_masks=2, frame_lengths=lengths, generator=generator)
    negatives = sample_negative_indices(mask, 100, generator)
    assert negatives.shape == (3, 300, 100) and negatives.dtype == torch.long
    batch_index, step = mask.nonzero(as_tuple=True)
    chosen = negatives[mask]  # (N, K)
    assert (chosen // 300 == batch_index[:, None]).all()  # same utterance
    assert mask.flatten()[chosen].all()  # masked steps only
    assert not (chosen == (batch_index * 300 + step)[:, None]).any()  # never the positive


def test_negatives_are_uniform_like_transformers():
    """5 masked steps: each step's distractors spread evenly over the 4 others (as the reference)."""
    mask = torch.zeros(1, 12, dtype=torch.bool)
    mask[0, [1, 2, 5, 9, 10]] = True
    generator = torch.Generator().manual_seed(7)
    ours = sample_negative_indices(mask, 20000, generator)[0, mask[0]]  # (5, K)
    np.random.seed(7)
    reference = torch.from_numpy(
        _sample_negative_indices((1, 12), 20000, mask_time_indices=mask.numpy())[0][mask[0].numpy()]
    ).long()
    positions = mask[0].nonzero().flatten()
    for row, positive in enumerate(positions.tolist()):
        for other in positions.tolist():
            ours_share = (ours[row] == other).double().mean().item()
            reference_share = (reference[row] == other).double().mean().item()
            expected = 0.0 if other == positive else 0.25
            assert abs(ours_share - expected) < 0.015 and abs(reference_share - expected) < 0.015


def test_negatives_errors_and_determinism():
    lonely = torch.zeros(2, 10, dtype=torch.bool)
    lonely[0, :4] = True
    lonely[1, 3] = True
    with pytest.raises(ValueError, match=r"batch index \[1\] have exactly one masked step"):
        sample_negative_indices(lonely, 3)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, :4] = True  # utterance 1 has no masked step: allowed
    first = sample_negative_indices(mask, 3, torch.Generator().manual_seed(0))
    again = sample_negative_indices(mask, 3, torch.Generator().manual_seed(0))
    assert torch.equal(first, again)
    assert (first[1] == 10).all()  # unused rows hold b * T, as in transformers

"""wav2vec 2.0 and HuBERT objectives against transformers and hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining

from hfspeech.configuration import SpeechEncoderConfig
from hfspeech.modeling.masking import compute_span_mask, sample_negative_indices
from hfspeech.modeling.objectives import HubertObjective, Wav2Vec2Objective, align_labels_to_frames
from hfspeech.modeling.objectives.wav2vec2 import contrastive_accuracy


def tiny(**overrides) -> SpeechEncoderConfig:
    return SpeechEncoderConfig.from_preset("tiny", **overrides)


# --------------------------------------------------------------------------- wav2vec 2.0


def transformers_pretraining(num_codevectors_per_group: int):
    hf_config = Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, codevector_dim=16, proj_codevector_dim=12,
        num_codevectors_per_group=num_codevectors_per_group, num_negatives=10, feat_extract_norm="layer",
        do_stable_layer_norm=True,
    )
    ours = tiny(codevector_dim=16, proj_codevector_dim=12, num_codevectors_per_group=num_codevectors_per_group,
                num_negatives=10)
    return Wav2Vec2ForPreTraining(hf_config).eval(), ours


@pytest.mark.parametrize("num_codevectors_per_group", [4, 32])
@pytest.mark.parametrize("negatives_from", ["masked", "all_valid"])
def test_wav2vec2_objective_matches_transformers(num_codevectors_per_group, negatives_from):
    """Same weights, masks and negatives: contrastive and diversity sums equal transformers' in eval."""
    torch.manual_seed(0)
    model, config = transformers_pretraining(num_codevectors_per_group)
    generator = torch.Generator().manual_seed(0)
    waves = torch.randn(2, 16000, generator=generator)
    attention_mask = torch.ones(2, 16000, dtype=torch.long)
    attention_mask[1, 11000:] = 0
    waves[1, 11000:] = 0
    num_frames = int(model._get_feat_extract_output_lengths(16000))
    frame_lengths = model._get_feat_extract_output_lengths(attention_mask.sum(-1))
    frame_mask = torch.arange(num_frames)[None] < frame_lengths[:, None]
    mask = compute_span_mask(2, num_frames, 0.65, 5, min_masks=2, frame_lengths=frame_lengths, generator=generator)
    negatives = sample_negative_indices(mask if negatives_from == "masked" else frame_mask, 10, generator)
    captured = {}
    model.wav2vec2.register_forward_hook(lambda module, args, output: captured.update(output=output))
    with torch.no_grad():
        reference = model(waves, attention_mask=attention_mask, mask_time_indices=mask,
                          sampled_negative_indices=negatives)
    objective = Wav2Vec2Objective(config).eval()
    heads = ("quantizer", "project_hid", "project_q")
    objective.load_state_dict({k: v for k, v in model.state_dict().items() if k.split(".")[0] in heads})
    penalty = torch.tensor(0.25)
    with torch.no_grad():
        output = objective(captured["output"].last_hidden_state, captured["output"].extract_features, mask,
                           frame_mask, feature_penalty=penalty, sampled_negative_indices=negatives)
    torch.testing.assert_close(output.contrastive_loss, reference.contrastive_loss, rtol=1e-4, atol=0)
    torch.testing.assert_close(output.diversity_loss, reference.diversity_loss, rtol=1e-4, atol=0)
    torch.testing.assert_close(output.codevector_perplexity, reference.codevector_perplexity, rtol=1e-5, atol=0)
    assert output.num_masked == mask.sum()
    expected_loss = reference.loss + 10.0 * 0.25 * mask.sum()  # fairseq: beta * penalty * sample_size
    torch.testing.assert_close(output.loss, expected_loss, rtol=1e-4, atol=0)
    if num_codevectors_per_group == 4:  # 16 codes for ~40 steps: distractors equal to the positive
        assert torch.isinf(output.logits).any()
    # accuracy from transformers' own projections, recomputed by hand
    projected = reference.projected_states[mask]
    candidates = reference.projected_quantized_states.view(-1, 12)[negatives[mask]]
    positives = reference.projected_quantized_states[mask]
    logits = torch.cat([F.cosine_similarity(projected, positives, dim=-1)[:, None],
                        F.cosine_similarity(projected[:, None], candidates, dim=-1)], dim=1) / 0.1
    logits[:, 1:][(candidates == positives[:, None]).all(-1)] = float("-inf")
    assert torch.isclose(output.accuracy, (logits.argmax(-1) == 0).float().mean())


def test_contrastive_accuracy_by_hand():
    logits = torch.tensor([[3.0, 1.0, 2.0], [1.0, 3.0, 2.0], [2.0, 2.0, 2.0], [5.0, -math.inf, 4.0]])
    # rows 0 and 3 rank the positive first; row 2 (all equal) counts as wrong as in fairseq
    assert contrastive_accuracy(logits).item() == 0.5


def test_wav2vec2_training_step_is_seeded_and_reaches_all_heads():
    config = tiny(num_negatives=6, diversity_loss_weight=0.1, feature_penalty_weight=10.0)
    torch.manual_seed(3)
    objective = Wav2Vec2Objective(config).train()
    objective.set_num_updates(1000)
    assert math.isclose(objective.quantizer.temperature, 2.0 * 0.999995**1000)
    inputs = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 60, 32, generator=inputs, requires_grad=True)
    features = torch.randn(2, 60, 32, generator=inputs)
    frame_mask = torch.arange(60)[None] < torch.tensor([[60], [45]])
    mask = compute_span_mask(2, 60, 0.65, 10, min_masks=2, frame_lengths=frame_mask.sum(-1), generator=inputs)

    def step(seed):
        return objective(hidden, features, mask, frame_mask, torch.tensor(0.5),
                         generator=torch.Generator().manual_seed(seed))

    first, again, other = step(0), step(0), step(1)
    torch.testing.assert_close(first.loss, again.loss, rtol=0, atol=0)
    assert not torch.equal(first.loss, other.loss)
    # soft perplexity in training: between 1 per group and G * V
    assert 2.0 <= first.codevector_perplexity.item() <= config.num_codevector_groups * config.num_codevectors_per_group
    expected = first.contrastive_loss + 0.1 * first.diversity_loss + 10.0 * 0.5 * mask.sum()
    torch.testing.assert_close(first.loss, expected)
    first.loss.backward()
    for name, parameter in objective.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert hidden.grad[~mask].abs().sum() == 0  # only masked steps enter the loss


def test_wav2vec2_bad_negatives_raise():
    config = tiny(num_negatives=3)
    objective = Wav2Vec2Objective(config).eval()
    hidden, features = torch.randn(1, 10, 32), torch.randn(1, 10, 32)
    mask = torch.zeros(1, 10, dtype=torch.bool)
    mask[0, 2:6] = True
    with pytest.raises(ValueError, match=r"must be \(B, T, K\)"):
        objective(hidden, features, mask, sampled_negative_indices=torch.zeros(1, 9, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="must index the B\\*T = 10 steps"):
        objective(hidden, features, mask, sampled_negative_indices=torch.full((1, 10, 3), 10))


# --------------------------------------------------------------------------- HuBERT


def hubert_config(**overrides) -> SpeechEncoderConfig:
    fields = dict(objective="hubert", hidden_size=2, num_attention_heads=1, hubert_final_dim=2,
                  hubert_num_clusters=[3], hubert_untie_final_proj=False, hubert_logit_temperature=0.5,
                  feature_penalty_weight=10.0)
    fields.update(overrides)
    return tiny(**fields)


def test_hubert_loss_by_hand():
    """final_proj = identity, codewords on the axes: logits = cos(angle) / tau, CE summed over masked frames."""
    objective = HubertObjective(hubert_config())
    with torch.no_grad():
        objective.final_proj.weight.copy_(torch.eye(2))
        objective.final_proj.bias.zero_()
        objective.label_embeddings.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]]))
    hidden = torch.tensor([[[3.0, 0.0], [1.0, 1.2], [0.0, -5.0], [2.0, 2.0]]])
    mask = torch.tensor([[True, True, False, True]])
    labels = torch.tensor([[0, 1, 2, -100]])  # the last frame has no label
    output = objective(hidden, mask, torch.ones_like(mask), [labels], feature_penalty=torch.tensor(0.1))
    norm = math.hypot(1.0, 1.2)
    cosines = [[1.0, 0.0, -1.0], [1.0 / norm, 1.2 / norm, -1.0 / norm]]  # masked frames 0 and 1
    expected = 0.0
    for row, target in zip(cosines, (0, 1)):
        scaled = [c / 0.5 for c in row]
        expected += -scaled[target] + math.log(sum(math.exp(s) for s in scaled))
    assert output.num_masked == 2 and output.num_unmasked == 1 and output.sample_size == 2
    assert math.isclose(output.masked_loss.item(), expected, rel_tol=1e-6)
    assert math.isclose(output.loss.item(), expected + 10.0 * 0.1 * 2, rel_tol=1e-6)
    torch.testing.assert_close(output.logits_masked[0][0], torch.tensor([2.0, 0.0, -2.0]))
    assert output.masked_accuracy.tolist() == [1.0]  # both masked frames closest to their codeword
    unmasked_scaled = [0.0, -2.0, 0.0]  # frame 2: (0, -5) vs the three codewords, target 2
    unmasked_expected = -unmasked_scaled[2] + math.log(sum(math.exp(s) for s in unmasked_scaled))
    assert math.isclose(output.unmasked_loss.item(), unmasked_expected, rel_tol=1e-6)


def test_hubert_masked_and_unmasked_weighting():
    generator = torch.Generator().manual_seed(4)
    hidden = torch.randn(2, 30, 32, generator=generator)
    mask = torch.rand(2, 30, generator=generator) < 0.5
    frame_mask = torch.arange(30)[None] < torch.tensor([[30], [21]])
    labels = torch.randint(0, 7, (2, 30), generator=generator).masked_fill(~frame_mask, -100)
    penalty = torch.tensor(0.2)
    base = dict(objective="hubert", hubert_num_clusters=[7], hubert_final_dim=16, feature_penalty_weight=10.0)
    torch.manual_seed(4)
    masked_only = HubertObjective(tiny(**base, hubert_pred_nomask_weight=0.0))
    both = HubertObjective(tiny(**base, hubert_pred_nomask_weight=0.5))
    both.load_state_dict(masked_only.state_dict())
    first = masked_only(hidden, mask, frame_mask, [labels], penalty)
    second = both(hidden, mask, frame_mask, [labels], penalty)
    # independent reference: cosine logits with torch.cosine_similarity, CE per frame
    projected = masked_only.final_proj(hidden)
    logits = F.cosine_similarity(projected[:, :, None], masked_only.label_embeddings[None, None], dim=-1) / 0.1
    per_frame = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none", ignore_index=-100)
    masked_sum, unmasked_sum = per_frame[mask & frame_mask].sum(), per_frame[~mask & frame_mask].sum()
    num_masked, num_unmasked = (mask & frame_mask).sum(), (~mask & frame_mask).sum()
    torch.testing.assert_close(first.loss, masked_sum + 10.0 * 0.2 * num_masked)
    torch.testing.assert_close(second.loss, masked_sum + 0.5 * unmasked_sum + 10.0 * 0.2 * (num_masked + num_unmasked))
    torch.testing.assert_close(second.unmasked_loss, unmasked_sum)
    predicted = logits.argmax(-1)
    torch.testing.assert_close(first.masked_accuracy[0], (predicted == labels)[mask & frame_mask].float().mean())
    torch.testing.assert_close(first.unmasked_accuracy[0], (predicted == labels)[~mask & frame_mask].float().mean())
    first.loss.backward()
    assert masked_only.final_proj.weight.grad.abs().sum() > 0


def test_hubert_two_label_sets_equal_two_single_objectives():
    """Untied ensemble = sum of two single-set objectives using the matching slices of the weights."""
    base = dict(objective="hubert", hubert_final_dim=8, hubert_untie_final_proj=True)
    torch.manual_seed(5)
    ensemble = HubertObjective(tiny(**base, hubert_num_clusters=[5, 9]))
    assert ensemble.final_proj.out_features == 16 and ensemble.label_embeddings.shape == (14, 8)
    singles = [HubertObjective(tiny(**base, hubert_num_clusters=[k])) for k in (5, 9)]
    with torch.no_grad():
        for i, (single, rows) in enumerate(zip(singles, (slice(0, 5), slice(5, 14)))):
            single.final_proj.weight.copy_(ensemble.final_proj.weight[8 * i : 8 * (i + 1)])
            single.final_proj.bias.copy_(ensemble.final_proj.bias[8 * i : 8 * (i + 1)])
            single.label_embeddings.copy_(ensemble.label_embeddings[rows])
    generator = torch.Generator().manual_seed(5)
    hidden = torch.randn(2, 25, 32, generator=generator)
    mask = torch.rand(2, 25, generator=generator) < 0.6
    frame_mask = torch.ones(2, 25, dtype=torch.bool)
    labels = [torch.randint(0, 5, (2, 25), generator=generator), torch.randint(0, 9, (2, 25), generator=generator)]
    together = ensemble(hidden, mask, frame_mask, labels)
    apart = [single(hidden, mask, frame_mask, [label_set]) for single, label_set in zip(singles, labels)]
    torch.testing.assert_close(together.loss, apart[0].loss + apart[1].loss)
    torch.testing.assert_close(together.masked_accuracy, torch.cat([a.masked_accuracy for a in apart]))
    # tied projection: one final_dim projection shared by both sets
    tied = HubertObjective(tiny(**{**base, "hubert_untie_final_proj": False}, hubert_num_clusters=[5, 9]))
    assert tied.final_proj.out_features == 8
    with pytest.raises(ValueError, match="Got 1 label sets"):
        ensemble(hidden, mask, frame_mask, labels[:1])
    with pytest.raises(ValueError, match=r"outside \[0, 5\)"):
        ensemble(hidden, mask, frame_mask, [labels[1], labels[1]])


def test_align_labels_100hz_and_50hz():
    labels = torch.arange(20)[None].repeat(2, 1)
    labels[1, 14:] = -100  # second utterance: 14 labels = 0.14 s at 100 Hz
    aligned = align_labels_to_frames(labels, 100, 10, torch.tensor([10, 7]))
    assert aligned[0].tolist() == list(range(0, 20, 2))
    assert aligned[1].tolist() == [0, 2, 4, 6, 8, 10, 12, -100, -100, -100]
    same_rate = align_labels_to_frames(torch.arange(10)[None], 50, 12, torch.tensor([10]))
    assert same_rate[0].tolist() == list(range(10)) + [-100, -100]
    # within the tolerance: 3 frames (0.06 s) of audio without labels stay unlabelled, never invented
    short = align_labels_to_frames(torch.arange(14)[None], 100, 10, torch.tensor([10]), tolerance_s=0.1)
    assert short[0].tolist() == [0, 2, 4, 6, 8, 10, 12, -100, -100, -100]


def test_align_labels_onto_40ms_frames():
    """25 Hz frames take every 4th MFCC label; the duration check uses the model's frame rate."""
    aligned = align_labels_to_frames(torch.arange(20)[None], 100, 6, torch.tensor([5]), frame_rate=25.0)
    assert aligned[0].tolist() == [0, 4, 8, 12, 16, -100]
    with pytest.raises(ValueError, match="10 frames at 25 Hz"):  # 0.4 s of audio, 0.2 s of labels
        align_labels_to_frames(torch.arange(20)[None], 100, 10, torch.tensor([10]), frame_rate=25.0)
    with pytest.raises(ValueError, match="multiple or divisor of the 25 Hz frame rate"):
        align_labels_to_frames(torch.arange(20)[None], 30, 6, torch.tensor([5]), frame_rate=25.0)


def test_subframe_labels_predict_every_mfcc_label_of_a_40ms_frame():
    """``hubert_subframe_labels``: a 25 Hz frame predicts all four 100 Hz labels it spans, label j of
    frame t being MFCC label 4t + j, each with its own projection slice and codewords."""
    from hfspeech.modeling.pretraining import SpeechEncoderForPreTraining

    for offset in range(4):
        aligned = align_labels_to_frames(torch.arange(19)[None], 100, 6, torch.tensor([5]), frame_rate=25.0,
                                         offset=offset)
        assert aligned[0].tolist() == [offset, 4 + offset, 8 + offset, 12 + offset] + [16 + offset if offset < 3
                                                                                        else -100] + [-100]
    base = dict(objective="hubert", hubert_num_clusters=[10], label_rate=100, conv_stride=[5, 2, 2, 2, 2, 2, 4],
                mask_time_length=2, hubert_final_dim=8)
    assert HubertObjective(tiny(**base)).num_clusters == [10]  # fairseq: the first label only
    torch.manual_seed(7)
    model = SpeechEncoderForPreTraining(tiny(**base, hubert_subframe_labels=True)).train()
    assert model.objective.num_clusters == [10] * 4 and model.objective.final_proj.out_features == 32
    generator = torch.Generator().manual_seed(7)
    labels = torch.randint(0, 10, (2, 100), generator=generator)  # 1 s at 100 Hz
    seen = {}
    forward = model.objective.forward
    model.objective.forward = lambda **kwargs: seen.setdefault("out", (kwargs["labels"], forward(**kwargs)))[1]
    output = model(torch.randn(2, 16000, generator=generator), labels=labels, generator=generator)
    aligned, _ = seen["out"]
    frames = aligned[0].shape[1]
    for offset, label_set in enumerate(aligned):
        torch.testing.assert_close(label_set, labels[:, offset::4][:, :frames])
    assert output.masked_accuracy.shape == (4,) and torch.isfinite(output.loss)
    output.loss.backward()
    assert model.objective.label_embeddings.grad[30:].abs().sum() > 0  # the fourth label's codewords learn


def test_align_labels_mismatch_raises_with_names_and_lengths():
    labels = torch.zeros(2, 200, dtype=torch.long)
    labels[1, 150:] = -100  # 150 labels = 1.5 s at 100 Hz vs 100 frames = 2.0 s
    with pytest.raises(ValueError) as error:
        align_labels_to_frames(labels, 100, 100, torch.tensor([100, 100]), utterance_ids=["a.flac", "b.flac"])
    message = str(error.value)
    for fragment in ("b.flac", "150 labels at 100 Hz", "1.500 s", "100 frames at 50 Hz", "2.000 s", "0.1 s"):
        assert fragment in message, fragment
    with pytest.raises(ValueError, match="pad labels on the right only"):
        align_labels_to_frames(torch.tensor([[1, -100, 2]]), 50, 3, torch.tensor([3]))


def test_pretraining_model_runs_both_objectives():
    """End to end through `SpeechEncoderForPreTraining` (backbone by the lead) on a padded batch."""
    from hfspeech.modeling.pretraining import SpeechEncoderForPreTraining

    generator = torch.Generator().manual_seed(6)
    waves = torch.randn(2, 8000, generator=generator)
    attention_mask = torch.ones(2, 8000, dtype=torch.long)
    attention_mask[1, 6000:] = 0
    for objective in ("wav2vec2", "hubert"):
        torch.manual_seed(6)
        config = tiny(objective=objective, num_negatives=5, hubert_num_clusters=[10, 7], label_rate=100,
                      mask_time_length=4)
        model = SpeechEncoderForPreTraining(config).train()
        labels = None
        if objective == "hubert":
            labels = [torch.randint(0, k, (2, 50), generator=generator) for k in (10, 7)]
            for label_set in labels:
                label_set[1, 37:] = -100
        output = model(waves, attention_mask=attention_mask, labels=labels, generator=generator)
        assert torch.isfinite(output.loss) and output.num_masked > 0
        output.loss.backward()
        assert all(p.grad is not None for p in model.objective.parameters())


def test_wav2vec2_batch_without_masked_steps_gives_zero_loss():
    objective = Wav2Vec2Objective(tiny(num_negatives=4))
    hidden = torch.randn(2, 10, 32, requires_grad=True)
    nothing = torch.zeros(2, 10, dtype=torch.bool)
    for training in (True, False):
        output = objective.train(training)(hidden, torch.randn(2, 10, 32), nothing, None, torch.tensor(1.0))
        assert output.loss.item() == 0.0 and output.num_masked == 0 and output.accuracy == 0
        output.loss.backward()

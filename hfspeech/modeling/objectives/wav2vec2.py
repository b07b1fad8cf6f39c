"""wav2vec 2.0's objective: contrastive InfoNCE over quantized targets + diversity + feature penalty.

For every masked step t, the context vector c_t = ``project_hid(h_t)`` must pick its quantized
target q_t = ``project_q(quantize(z_t))`` among 1 + K candidates (q_t and K distractors drawn
from other masked steps of the same utterance):

    L_m = sum_t -log( exp(cos(c_t, q_t) / kappa) / sum_{q in {q_t} + Q_t} exp(cos(c_t, q) / kappa) )

Reductions follow fairseq's ``wav2vec`` criterion (every term is a SUM over the N masked
steps, the criterion's ``sample_size``; divide ``loss`` by ``num_masked`` for a per-step value):

* ``contrastive_loss`` = sum over masked steps of the cross-entropy above;
* ``diversity_loss`` = ``(G*V - perplexity) / (G*V) * N`` (transformers reports the same);
* ``loss`` = contrastive + ``diversity_loss_weight`` * diversity
  + ``feature_penalty_weight`` * ``feature_penalty`` * N.

Every step is projected and quantized and the loss is a sum over the masked ones, so all
shapes follow from the padded batch (B, T) alone: no boolean selection, no host
synchronisation on a GPU, no graph break under ``torch.compile``. The logits are
one (B*T, B*T) product of unit context vectors and unit targets, gathered at each step's
1 + K candidates: no (N, 1 + K, P) candidate tensor is built. A distractor is "the same as
the positive" (logit -inf, as in fairseq) when it has the positive's codebook entries.
The diversity term uses the softmax perplexity in training (fairseq's ``prob_perplexity``)
and, as transformers does, the argmax perplexity in evaluation (fairseq keeps the softmax
one there too), so evaluation losses equal transformers' ``Wav2Vec2ForPreTraining``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from ..host_reads import host_reads_allowed
from ..masking import sample_negative_indices
from ..linear import Linear
from ..quantizer import GumbelProductQuantizer

__all__ = ["Wav2Vec2Objective", "Wav2Vec2ObjectiveOutput", "contrastive_accuracy"]


@dataclass
class Wav2Vec2ObjectiveOutput(ModelOutput):
    """Loss terms and metrics of `Wav2Vec2Objective` (scalars unless noted).

    Attributes:
        loss: contrastive + alpha * diversity + beta * feature_penalty * num_masked (sums).
        contrastive_loss: InfoNCE summed over masked steps.
        diversity_loss: ``(G*V - codevector_perplexity) / (G*V)`` times num_masked.
        feature_penalty: the input mean squared conv feature (before weighting).
        codevector_perplexity: perplexity used by the diversity term (soft in training,
            hard in evaluation; over masked frames).
        code_perplexity: perplexity of the hard codebook choices over masked frames.
        accuracy: fraction of masked steps whose positive has the strictly highest logit.
        num_masked: number of masked steps N (long).
        step_logits: (B*T, 1 + K) logits of every step; column 0 = positive. Only the masked
            rows (``masked_steps``) enter the loss; `logits` selects them.
        masked_steps: (B*T,) bool, the steps the loss sums over.
        hidden_states: filled by the pretraining model when asked for hidden states.
        gumbel_temperature: the quantizer's temperature (training only).
    """

    loss: torch.Tensor | None = None
    contrastive_loss: torch.Tensor | None = None
    diversity_loss: torch.Tensor | None = None
    feature_penalty: torch.Tensor | None = None
    codevector_perplexity: torch.Tensor | None = None
    code_perplexity: torch.Tensor | None = None
    accuracy: torch.Tensor | None = None
    num_masked: torch.Tensor | None = None
    step_logits: torch.Tensor | None = None
    masked_steps: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    gumbel_temperature: torch.Tensor | None = None

    @property
    def logits(self) -> torch.Tensor:
        """(N, 1 + K) logits of the masked steps in (b, t) order (a boolean selection: reads the mask)."""
        return self.step_logits[self.masked_steps]

    @property
    def sample_size(self) -> torch.Tensor:
        """What ``loss`` sums over: the masked steps (fairseq's sample size)."""
        return self.num_masked

    def metrics(self) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """``name -> (sum, weight)`` for the training loop: per masked step, and the masked-step count."""
        steps = self.num_masked
        metrics = {"contrastive_loss": (self.contrastive_loss, steps), "diversity_loss": (self.diversity_loss, steps),
                   "accuracy": (self.accuracy * steps, steps),
                   "codevector_perplexity": (self.codevector_perplexity * steps, steps), "masked_frames": (steps, None)}
        if self.gumbel_temperature is not None:
            metrics["gumbel_temperature"] = (self.gumbel_temperature, torch.ones_like(self.gumbel_temperature))
        return metrics


def contrastive_accuracy(logits: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """fairseq's accuracy: column 0 is the argmax and not also the argmin (all-equal rows fail).

    Args:
        logits: (N, 1 + K) with the positive in column 0.
        weights: (N,) 1 on the rows to average over, 0 elsewhere; None = all rows.

    Returns:
        scalar float tensor; 0 when no row counts.
    """
    hits = ((logits.argmax(dim=-1) == 0) & (logits.argmin(dim=-1) != 0)).float()
    weights = torch.ones_like(hits) if weights is None else weights.float()
    return (hits * weights).sum() / weights.sum().clamp_min(1.0)


class Wav2Vec2Objective(nn.Module):
    """Holds the quantizer and the two projections; turns backbone outputs into the loss."""

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.quantizer = GumbelProductQuantizer(config)
        self.project_hid = Linear(config.hidden_size, config.proj_codevector_dim)
        self.project_q = Linear(config.codevector_dim, config.proj_codevector_dim)

    def set_num_updates(self, num_updates: int) -> None:
        """Anneal the Gumbel temperature; call once per optimizer update."""
        self.quantizer.set_num_updates(num_updates)

    def _check_inputs(
        self, hidden_states: torch.Tensor, extract_features: torch.Tensor, mask_time_indices: torch.Tensor,
        frame_mask: torch.Tensor | None,
    ) -> None:
        if hidden_states.dim() != 3 or extract_features.dim() != 3:
            raise ValueError(
                f"hidden_states and extract_features must be (B, T, H) and (B, T, C), got "
                f"{tuple(hidden_states.shape)} and {tuple(extract_features.shape)}."
            )
        shape = hidden_states.shape[:2]
        if extract_features.shape[:2] != shape or mask_time_indices.shape != shape:
            raise ValueError(
                f"hidden_states {tuple(hidden_states.shape)}, extract_features {tuple(extract_features.shape)} "
                f"and mask_time_indices {tuple(mask_time_indices.shape)} must share (B, T)."
            )
        if frame_mask is not None and frame_mask.shape != shape:
            raise ValueError(f"frame_mask must have shape {tuple(shape)}, got {tuple(frame_mask.shape)}.")

    def forward(
        self,
        hidden_states: torch.Tensor,
        extract_features: torch.Tensor,
        mask_time_indices: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        feature_penalty: torch.Tensor | None = None,
        sampled_negative_indices: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Wav2Vec2ObjectiveOutput:
        """Compute the wav2vec 2.0 loss.

        Args:
            hidden_states: (B, T, H) transformer output (computed from masked inputs).
            extract_features: (B, T, C) layer-normed conv features before masking (targets).
            mask_time_indices: (B, T) bool masked steps (the loss is computed on these only).
            frame_mask: (B, T) bool valid frames; masked steps outside it are ignored.
            feature_penalty: scalar mean squared conv feature; None = no penalty term.
            sampled_negative_indices: (B, T, K) flat indices into the B*T steps (transformers'
                layout, see `sample_negative_indices`); drawn here when None.
            generator: seeds negative sampling and the Gumbel noise.
        """
        mask = mask_time_indices.to(torch.bool)
        self._check_inputs(hidden_states, extract_features, mask, frame_mask)
        if frame_mask is not None:
            mask = mask & frame_mask.to(torch.bool)
        batch_size, num_frames, _ = hidden_states.shape
        if sampled_negative_indices is None:
            sampled_negative_indices = sample_negative_indices(mask, self.config.num_negatives, generator)
        elif sampled_negative_indices.shape[:2] != (batch_size, num_frames) or sampled_negative_indices.dim() != 3:
            raise ValueError(
                f"sampled_negative_indices must be (B, T, K) = ({batch_size}, {num_frames}, K), got "
                f"{tuple(sampled_negative_indices.shape)}."
            )
        steps = batch_size * num_frames
        flat_mask = mask.flatten()
        negatives = sampled_negative_indices.reshape(steps, -1).long()  # (B*T, K) flat step indices
        if host_reads_allowed(negatives) and negatives.numel():
            used = negatives[flat_mask]
            if used.numel() and (int(used.min()) < 0 or int(used.max()) >= steps):
                raise ValueError(
                    f"sampled_negative_indices must index the B*T = {steps} steps; got values in "
                    f"[{int(used.min())}, {int(used.max())}]."
                )
        quantized = self.quantizer(extract_features.reshape(steps, -1), mask=flat_mask, generator=generator)
        targets = self.project_q(quantized.codevectors.to(self.project_q.weight.dtype))  # (B*T, P)
        predictions = self.project_hid(hidden_states.reshape(steps, -1))  # (B*T, P)
        # Candidate j of step i is step candidates[i, j] (column 0 = the positive, the step itself).
        # (Unmasked rows take no part in the loss; clamping keeps any values they hold in range.)
        candidates = torch.cat([torch.arange(steps, device=negatives.device)[:, None], negatives.clamp(0, steps - 1)],
                               dim=1)
        # cos(c, q) = unit(c) . unit(q) (F.cosine_similarity's definition), in fp32.
        unit_predictions = F.normalize(predictions.float(), dim=-1, eps=1e-8)
        unit_targets = F.normalize(targets.float(), dim=-1, eps=1e-8)
        logits = (unit_predictions @ unit_targets.T).gather(1, candidates)
        logits = logits / self.config.contrastive_logits_temperature
        # A distractor with the positive's codebook entries has its target vector: -inf (fairseq).
        codes = quantized.codevector_indices.detach()
        code_ids = (codes * self.quantizer.num_vars ** torch.arange(codes.shape[1], device=codes.device)).sum(-1)
        candidate_ids = code_ids[candidates]
        same_as_positive = candidate_ids[:, 1:] == candidate_ids[:, :1]  # (B*T, K)
        logits = torch.cat([logits[:, :1], logits[:, 1:].masked_fill(same_as_positive, float("-inf"))], dim=1)
        target = torch.zeros(steps, dtype=torch.long, device=logits.device)
        per_step = F.cross_entropy(logits, target, reduction="none")
        contrastive_loss = (per_step * flat_mask).sum()

        num_masked = flat_mask.sum()
        num_codevectors = self.quantizer.num_groups * self.quantizer.num_vars
        diversity_loss = (num_codevectors - quantized.perplexity) / num_codevectors * num_masked
        loss = contrastive_loss + self.config.diversity_loss_weight * diversity_loss
        if feature_penalty is not None:
            loss = loss + self.config.feature_penalty_weight * feature_penalty.float() * num_masked
        return Wav2Vec2ObjectiveOutput(
            loss=loss,
            contrastive_loss=contrastive_loss,
            diversity_loss=diversity_loss,
            feature_penalty=feature_penalty,
            codevector_perplexity=quantized.perplexity,
            code_perplexity=quantized.code_perplexity,
            accuracy=contrastive_accuracy(logits.detach(), flat_mask),
            num_masked=num_masked,
            step_logits=logits,
            masked_steps=flat_mask,
            gumbel_temperature=torch.tensor(self.quantizer.temperature, device=logits.device) if self.training else None,
        )

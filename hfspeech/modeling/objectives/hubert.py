"""HuBERT's objective: predict frame cluster ids (one or several label sets) from masked inputs.

For label set i with K_i clusters and codeword embeddings e_{i,c}, the logits of frame t are
``cos(P_i h_t, e_{i,c}) / tau`` (P_i = slice i of ``final_proj`` when untied). Reductions follow
fairseq's ``hubert`` criterion (SUMS, not means):

    loss = w_m * sum_i sum_{t masked} CE_i(t) + w_u * sum_i sum_{t unmasked} CE_i(t)
           + feature_penalty_weight * feature_penalty * sample_size,

with ``sample_size`` = number of masked frames if w_m > 0 plus unmasked frames if w_u > 0.
fairseq scores the positive against all K_i codewords and sets the duplicate positive to
-inf, which is the plain K_i-way cross-entropy used here.

With ``config.hubert_subframe_labels`` and labels faster than the frames (100 Hz MFCC labels,
40 ms frames: r = 4), each label set is predicted r times, the j-th set being label ``r t + j`` of
frame t, with its own projection slice and codewords; fairseq predicts only the first (j = 0).

Frames whose aligned label is -100 (the tolerated tail where the audio outlasts the labels)
take part in no term; fairseq instead crops the batch to the shortest label sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.utils import ModelOutput

from ..host_reads import host_reads_allowed
from ..linear import Linear

__all__ = ["HubertObjective", "HubertObjectiveOutput", "align_labels_to_frames", "labels_per_frame", "FRAME_RATE_HZ"]

FRAME_RATE_HZ = 50  # the papers' 20 ms frames (``config.frame_rate``)
IGNORE_INDEX = -100


def align_labels_to_frames(
    labels: torch.Tensor,
    label_rate: int,
    num_frames: int,
    frame_lengths: torch.Tensor,
    utterance_ids: list[str] | None = None,
    tolerance_s: float = 0.1,
    frame_rate: float = FRAME_RATE_HZ,
    offset: int = 0,
) -> torch.Tensor:
    """Map labels at ``label_rate`` Hz onto frames at ``frame_rate`` Hz: frame t takes label
    ``floor(t * label_rate / frame_rate) + offset``.

    Args:
        labels: (B, T_label) long cluster ids, right-padded with -100.
        label_rate: Hz of the labels (100 for MFCC-based labels, 50 for frame-based ones).
        num_frames: T, padded frames of the batch.
        frame_lengths: (B,) valid frames per utterance.
        utterance_ids: names used in error messages (default: batch indices).
        tolerance_s: largest accepted |label duration - audio duration| in seconds (fairseq 0.1).
        frame_rate: frames per second of the model (``config.frame_rate``; 50 for 20 ms frames).
        offset: which of the ``label_rate / frame_rate`` labels a frame spans it takes (0: the first,
            fairseq; see `labels_per_frame`).

    Returns:
        (B, T) long labels, -100 on padding frames and on valid frames past the last label.

    Raises:
        ValueError: labels and audio durations differ by more than ``tolerance_s`` (naming the
            utterance, both lengths and durations), labels not right-padded, or bad shapes.
    """
    if labels.dim() != 2 or labels.dtype not in (torch.long, torch.int32, torch.int64):
        raise ValueError(f"labels must be a (B, T_label) integer tensor, got {tuple(labels.shape)} {labels.dtype}.")
    if label_rate <= 0 or label_rate % frame_rate and frame_rate % label_rate:
        raise ValueError(f"label_rate must be a positive multiple or divisor of the {frame_rate:g} Hz frame rate, "
                         f"got {label_rate}.")
    batch_size = labels.shape[0]
    if frame_lengths.shape != (batch_size,):
        raise ValueError(f"frame_lengths must have shape ({batch_size},), got {tuple(frame_lengths.shape)}.")
    names = utterance_ids if utterance_ids is not None else [f"#{b} of the batch" for b in range(batch_size)]
    if len(names) != batch_size:
        raise ValueError(f"Got {len(names)} utterance_ids for a batch of {batch_size}.")
    labels = labels.long()
    frame_lengths = frame_lengths.to(labels.device).long()
    label_lengths = (labels != IGNORE_INDEX).sum(dim=1)
    if host_reads_allowed(labels):  # these checks read values (see `host_reads`)
        _check_label_lengths(labels, label_lengths, label_rate, frame_lengths, frame_rate, names, tolerance_s)
    frame_index = torch.arange(num_frames, device=labels.device)
    source = torch.div(frame_index * label_rate, frame_rate, rounding_mode="floor").long() + offset  # (T,)
    present = (frame_index[None, :] < frame_lengths[:, None]) & (source[None, :] < label_lengths[:, None])
    gathered = labels.gather(1, source.clamp_max(max(labels.shape[1] - 1, 0)).expand(batch_size, -1)) \
        if labels.shape[1] else torch.full((batch_size, num_frames), IGNORE_INDEX, device=labels.device)
    return torch.where(present, gathered, torch.full_like(gathered, IGNORE_INDEX))


def labels_per_frame(config) -> int:
    """How many labels each frame predicts per label set: ``label_rate / frame_rate`` with
    ``config.hubert_subframe_labels`` and labels faster than the frames, else 1 (the first, fairseq)."""
    ratio = config.label_rate / config.frame_rate
    return int(round(ratio)) if getattr(config, "hubert_subframe_labels", False) and ratio > 1 else 1


def _check_label_lengths(labels: torch.Tensor, label_lengths: torch.Tensor, label_rate: int,
                         frame_lengths: torch.Tensor, frame_rate: float, names: list[str], tolerance_s: float) -> None:
    """Right padding only, no negative ids, label and audio durations within the tolerance."""
    valid = labels != IGNORE_INDEX
    positions = torch.arange(labels.shape[1], device=labels.device)
    not_right_padded = (valid != (positions[None, :] < label_lengths[:, None])).any(dim=1)
    negative = (valid & (labels < 0)).any(dim=1)
    for problem, message in (
        (not_right_padded, "has -100 padding before its last label; pad labels on the right only"),
        (negative, "has negative cluster ids other than the -100 padding"),
    ):
        if problem.any():
            row = int(problem.nonzero()[0, 0])
            raise ValueError(f"Labels of utterance {names[row]} {message}.")
    label_seconds = label_lengths.double() / label_rate
    audio_seconds = frame_lengths.double() / frame_rate
    off = (label_seconds - audio_seconds).abs() > tolerance_s + 1e-9
    if off.any():
        row = int(off.nonzero()[0, 0])
        raise ValueError(
            f"Utterance {names[row]}: {int(label_lengths[row])} labels at {label_rate} Hz "
            f"({float(label_seconds[row]):.3f} s) but {int(frame_lengths[row])} frames at {frame_rate:g} Hz "
            f"({float(audio_seconds[row]):.3f} s) of audio, a difference above the tolerance of {tolerance_s} s "
            "(config.hubert_label_rate_tolerance_s). Recompute the labels from this audio or check that the "
            "label file and the manifest list utterances in the same order."
        )


@dataclass
class HubertObjectiveOutput(ModelOutput):
    """Loss terms and metrics of `HubertObjective` (sums over frames, see the module docstring).

    Attributes:
        loss: weighted masked + unmasked cross-entropy + feature penalty term.
        masked_loss: cross-entropy summed over masked frames and label sets (unweighted).
        unmasked_loss: same over unmasked valid frames (computed even when its weight is 0).
        feature_penalty: the input mean squared conv feature (before weighting).
        masked_accuracy: (num_label_sets,) accuracy of the argmax on masked frames.
        unmasked_accuracy: (num_label_sets,) same on unmasked frames.
        num_masked: masked frames with labels; num_unmasked: unmasked valid frames with labels.
        sample_size: fairseq's sample size (the frames whose loss has non-zero weight).
        frame_logits: list, per label set, of (B*T, K_i) logits of every frame.
        masked_frames: (B*T,) bool, the masked frames with labels; `logits_masked` selects them.
        hidden_states: filled by the pretraining model when asked for hidden states.
    """

    loss: torch.Tensor | None = None
    masked_loss: torch.Tensor | None = None
    unmasked_loss: torch.Tensor | None = None
    feature_penalty: torch.Tensor | None = None
    masked_accuracy: torch.Tensor | None = None
    unmasked_accuracy: torch.Tensor | None = None
    num_masked: torch.Tensor | None = None
    num_unmasked: torch.Tensor | None = None
    sample_size: torch.Tensor | None = None
    frame_logits: list[torch.Tensor] = field(default=None)
    masked_frames: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None

    @property
    def logits_masked(self) -> list[torch.Tensor]:
        """Per label set, (num_masked, K_i) logits of the masked frames (a boolean selection: reads the mask)."""
        return [logits[self.masked_frames] for logits in self.frame_logits]

    def metrics(self) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """``name -> (sum, weight)`` for the training loop: losses per scored frame, one accuracy per
        label set over the masked (unmasked) frames, and the masked-frame count."""
        metrics = {"masked_loss": (self.masked_loss, self.sample_size),
                   "unmasked_loss": (self.unmasked_loss, self.sample_size), "masked_frames": (self.num_masked, None)}
        for index, accuracy in enumerate(self.masked_accuracy):
            metrics[f"masked_accuracy_{index}"] = (accuracy * self.num_masked, self.num_masked)
        for index, accuracy in enumerate(self.unmasked_accuracy):
            metrics[f"unmasked_accuracy_{index}"] = (accuracy * self.num_unmasked, self.num_unmasked)
        return metrics


def _accuracy(hits: torch.Tensor, selection: torch.Tensor) -> torch.Tensor:
    """Fraction of the selected frames whose argmax is the label; 0 when none is selected."""
    return (hits & selection).sum().float() / selection.sum().clamp_min(1).float()


class HubertObjective(nn.Module):
    """``final_proj`` + codeword embeddings (fairseq's ``label_embs_concat`` layout)."""

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        clusters = [int(k) for k in config.hubert_num_clusters]
        if not clusters or min(clusters) < 2:
            raise ValueError(
                f"config.hubert_num_clusters must list one cluster count >= 2 per label set, got "
                f"{config.hubert_num_clusters}."
            )
        # With sub-frame labels each label set becomes r predicted sets, one per label of a frame.
        self.num_clusters = [k for k in clusters for _ in range(labels_per_frame(config))]
        final_dim = config.hubert_final_dim
        self.untie_final_proj = bool(config.hubert_untie_final_proj)
        num_sets = len(self.num_clusters) if self.untie_final_proj else 1
        self.final_proj = Linear(config.hidden_size, final_dim * num_sets)
        self.label_embeddings = nn.Parameter(torch.empty(sum(self.num_clusters), final_dim))
        self.init_weights_()

    @torch.no_grad()
    def init_weights_(self) -> None:
        """fairseq init of the codeword embeddings: U[0, 1)."""
        init.uniform_(self.label_embeddings)

    def label_logits(self, hidden_states: torch.Tensor) -> list[torch.Tensor]:
        """(N, H) frames -> per label set i, (N, K_i) logits ``cos(P_i h, e_{i,c}) / tau``."""
        projected = self.final_proj(hidden_states)
        if self.untie_final_proj:
            projections = projected.chunk(len(self.num_clusters), dim=-1)
        else:
            projections = [projected] * len(self.num_clusters)
        embeddings = self.label_embeddings.split(self.num_clusters, dim=0)
        logits = []
        for projection, codewords in zip(projections, embeddings):
            cosine = F.normalize(projection.float(), dim=-1, eps=1e-8) @ F.normalize(codewords.float(), dim=-1, eps=1e-8).T
            logits.append(cosine / self.config.hubert_logit_temperature)
        return logits

    def forward(
        self,
        hidden_states: torch.Tensor,
        mask_time_indices: torch.Tensor,
        frame_mask: torch.Tensor | None,
        labels: list[torch.Tensor],
        feature_penalty: torch.Tensor | None = None,
    ) -> HubertObjectiveOutput:
        """Compute the HuBERT loss.

        Args:
            hidden_states: (B, T, H) transformer output (from masked inputs).
            mask_time_indices: (B, T) bool masked frames.
            frame_mask: (B, T) bool valid frames (None = all valid).
            labels: one (B, T) long tensor per label set, aligned to frames (see
                `align_labels_to_frames`), -100 where there is no label.
            feature_penalty: scalar mean squared conv feature; None = no penalty term.
        """
        batch_size, num_frames, _ = hidden_states.shape
        if len(labels) != len(self.num_clusters):
            raise ValueError(
                f"Got {len(labels)} label sets but config.hubert_num_clusters={self.num_clusters} "
                "expects one per entry."
            )
        for i, (label_set, clusters) in enumerate(zip(labels, self.num_clusters)):
            if label_set.shape != (batch_size, num_frames):
                raise ValueError(
                    f"Label set {i} has shape {tuple(label_set.shape)}; expected (B, T) = ({batch_size}, "
                    f"{num_frames}); align it with align_labels_to_frames first."
                )
            if not host_reads_allowed(label_set):
                continue
            bad = (label_set != IGNORE_INDEX) & ((label_set < 0) | (label_set >= clusters))
            if bad.any():
                raise ValueError(
                    f"Label set {i} holds cluster ids outside [0, {clusters}) (e.g. {int(label_set[bad][0])}); "
                    "check config.hubert_num_clusters against the k-means model that made the labels."
                )
        mask = mask_time_indices.to(torch.bool)
        valid = frame_mask.to(torch.bool) if frame_mask is not None else torch.ones_like(mask)
        for label_set in labels:
            valid = valid & (label_set != IGNORE_INDEX)
        # Logits for every frame and sums weighted by the masked / unmasked selections: shapes
        # follow from the padded batch alone (no boolean selection, no host synchronisation).
        masked, unmasked = (valid & mask).flatten(), (valid & ~mask).flatten()
        config = self.config
        weight_m, weight_u = config.hubert_pred_masked_weight, config.hubert_pred_nomask_weight
        with torch.set_grad_enabled(torch.is_grad_enabled() and (weight_m > 0 or weight_u > 0)):
            frame_logits = self.label_logits(hidden_states.reshape(batch_size * num_frames, -1))
        masked_loss = unmasked_loss = hidden_states.new_zeros((), dtype=torch.float32)
        masked_accuracy, unmasked_accuracy = [], []
        for logits, label_set in zip(frame_logits, labels):
            targets = label_set.flatten().long().clamp_min(0)
            cross_entropy = F.cross_entropy(logits, targets, reduction="none")
            masked_loss = masked_loss + (cross_entropy * masked).sum()
            unmasked_loss = unmasked_loss + (cross_entropy * unmasked).sum()
            hits = logits.detach().argmax(dim=-1) == targets
            masked_accuracy.append(_accuracy(hits, masked))
            unmasked_accuracy.append(_accuracy(hits, unmasked))
        num_masked, num_unmasked = masked.sum(), unmasked.sum()
        loss = hidden_states.new_zeros((), dtype=torch.float32)
        sample_size = torch.zeros_like(num_masked)
        if weight_m > 0:
            loss = loss + weight_m * masked_loss
            sample_size = sample_size + num_masked
        if weight_u > 0:
            loss = loss + weight_u * unmasked_loss
            sample_size = sample_size + num_unmasked
        if feature_penalty is not None:
            loss = loss + config.feature_penalty_weight * feature_penalty.float() * sample_size
        return HubertObjectiveOutput(
            loss=loss,
            masked_loss=masked_loss,
            unmasked_loss=unmasked_loss,
            feature_penalty=feature_penalty,
            masked_accuracy=torch.stack(masked_accuracy),
            unmasked_accuracy=torch.stack(unmasked_accuracy),
            num_masked=num_masked,
            num_unmasked=num_unmasked,
            sample_size=sample_size,
            frame_logits=frame_logits,
            masked_frames=masked,
        )

"""`GumbelProductQuantizer`: wav2vec 2.0's product quantizer with Gumbel-softmax selection.

Parameter layout equals transformers' ``Wav2Vec2GumbelVectorQuantizer`` (``codevectors``
(1, G*V, D/G) and ``weight_proj`` Linear(C, G*V)), so checkpoints convert by renaming only.

Unlike transformers, the codebook lookup never builds the (N, G*V, D/G) one-hot x codebook
product: evaluation gathers the chosen entries, training multiplies the (N, G, V)
straight-through selection by the (G, V, D/G) codebook with one batched matmul per group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.utils import ModelOutput

from .linear import Linear

__all__ = ["GumbelProductQuantizer", "QuantizerOutput", "gumbel_temperature"]


def gumbel_temperature(num_updates: int, maximum: float, minimum: float, decay: float) -> float:
    """fairseq's schedule: ``max(maximum * decay ** num_updates, minimum)``."""
    if num_updates < 0:
        raise ValueError(f"num_updates must be >= 0, got {num_updates}.")
    return max(maximum * decay**num_updates, minimum)


def perplexity_of(probs: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over groups of ``exp(entropy)`` of the mean distribution.

    Args:
        probs: (N, G, V) per-frame distributions over each group's V entries (N may be 0).
        weights: (N,) 1 on the frames to average over, 0 elsewhere; None = all frames. A mask
            as weights keeps the shapes fixed (no boolean selection, no host synchronisation).

    Returns:
        scalar tensor; G * V for a uniform codebook use, G when one entry per group is used
        (also when no frame is weighted).
    """
    probs = probs.float()
    if weights is None:
        weights = probs.new_ones(probs.shape[0])
    weights = weights.float()
    marginal = (probs * weights[:, None, None]).sum(dim=0) / weights.sum().clamp_min(1.0)
    return torch.exp(-torch.xlogy(marginal, marginal).sum(dim=-1)).sum()


def perplexity_of_indices(indices: torch.Tensor, num_vars: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """`perplexity_of` the one-hot choices (N, G) without building the (N, G, V) one-hot tensor."""
    num_frames, num_groups = indices.shape
    weights = torch.ones(num_frames, device=indices.device) if weights is None else weights.float()
    offsets = torch.arange(num_groups, device=indices.device) * num_vars
    counts = torch.zeros(num_groups * num_vars, device=indices.device).scatter_add_(
        0, (indices + offsets).flatten(), weights[:, None].expand(-1, num_groups).flatten())
    marginal = counts.view(num_groups, num_vars) / weights.sum().clamp_min(1.0)
    return torch.exp(-torch.xlogy(marginal, marginal).sum(dim=-1)).sum()


@dataclass
class QuantizerOutput(ModelOutput):
    """Outputs of `GumbelProductQuantizer`.

    Attributes:
        codevectors: (N, D) concatenation of the G selected entries (D = ``codevector_dim``).
        codevector_indices: (N, G) long, the entry chosen in each group.
        perplexity: scalar, perplexity of the *soft* (softmax) distribution in training and of
            the hard (argmax) choice in evaluation, averaged over the frames in ``mask``
            (transformers' convention; fairseq's ``prob_perplexity`` in training).
        code_perplexity: scalar, perplexity of the hard choices over the same frames
            (fairseq's ``code_perplexity``), for logging codebook use.
    """

    codevectors: torch.Tensor | None = None
    codevector_indices: torch.Tensor | None = None
    perplexity: torch.Tensor | None = None
    code_perplexity: torch.Tensor | None = None


class GumbelProductQuantizer(nn.Module):
    """G codebooks of V entries; each frame picks one entry per group and concatenates them.

    Training: straight-through hard Gumbel-softmax at ``self.temperature`` (forward value is
    the one-hot choice, gradients flow through the soft sample). Evaluation: argmax.
    Call `set_num_updates` once per optimizer update to anneal the temperature.
    """

    def __init__(self, config) -> None:
        super().__init__()
        self.num_groups = int(config.num_codevector_groups)
        self.num_vars = int(config.num_codevectors_per_group)
        if config.codevector_dim % self.num_groups:
            raise ValueError(
                f"config.codevector_dim ({config.codevector_dim}) must be divisible by "
                f"config.num_codevector_groups ({self.num_groups}): each group holds codevector_dim / G dims."
            )
        self.codevectors = nn.Parameter(
            torch.empty(1, self.num_groups * self.num_vars, config.codevector_dim // self.num_groups)
        )
        self.weight_proj = Linear(config.feature_dim, self.num_groups * self.num_vars)
        self.temperature_max = float(config.gumbel_temperature_max)
        self.temperature_min = float(config.gumbel_temperature_min)
        self.temperature_decay = float(config.gumbel_temperature_decay)
        self.temperature = self.temperature_max
        self.init_weights_()

    @torch.no_grad()
    def init_weights_(self) -> None:
        """fairseq / transformers init: codebook U[0, 1), projection N(0, 1), zero bias."""
        init.uniform_(self.codevectors)
        init.normal_(self.weight_proj.weight, mean=0.0, std=1.0)
        init.zeros_(self.weight_proj.bias)

    def set_num_updates(self, num_updates: int) -> None:
        """Set the Gumbel temperature to ``max(max_t * decay ** num_updates, min_t)``."""
        self.temperature = gumbel_temperature(
            num_updates, self.temperature_max, self.temperature_min, self.temperature_decay
        )

    def _sample_gumbel_selection(
        self, logits: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Straight-through hard Gumbel-softmax over the last axis of (N, G, V) float logits."""
        noise = torch.empty_like(logits).exponential_(generator=generator).log().neg()
        soft = torch.softmax((logits + noise) / self.temperature, dim=-1)
        indices = soft.argmax(dim=-1)  # (N, G)
        hard = torch.zeros_like(soft).scatter_(-1, indices[..., None], 1.0)
        return hard - soft.detach() + soft, indices

    def forward(
        self,
        features: torch.Tensor,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> QuantizerOutput:
        """Quantize frames.

        Args:
            features: (N, C) frames, or (B, T, C) which is flattened to N = B*T.
            mask: (N,) or (B, T) bool frames over which perplexities are averaged; None = all.
            generator: torch.Generator on the features' device for the Gumbel noise.

        Returns:
            `QuantizerOutput` with (N, D) codevectors and (N, G) indices (flattened frames).
        """
        channels = self.weight_proj.in_features
        if features.shape[-1] != channels:
            raise ValueError(
                f"features must end with config.feature_dim = {channels} channels, got shape {tuple(features.shape)}."
            )
        features = features.reshape(-1, channels)
        num_frames = features.shape[0]
        if mask is not None:
            mask = mask.reshape(-1)
            if mask.shape[0] != num_frames or mask.dtype != torch.bool:
                raise ValueError(
                    f"mask must be a bool tensor with one entry per frame ({num_frames}), got "
                    f"{mask.dtype} with {mask.shape[0]} entries."
                )
        logits = self.weight_proj(features).view(num_frames, self.num_groups, self.num_vars).float()
        codebook = self.codevectors.view(self.num_groups, self.num_vars, -1)
        if self.training:
            selection, indices = self._sample_gumbel_selection(logits, generator)
            # (G, N, V) @ (G, V, D/G) -> (G, N, D/G): the straight-through selection times the codebook.
            grouped = torch.bmm(selection.to(codebook.dtype).transpose(0, 1), codebook).transpose(0, 1)
            perplexity = perplexity_of(torch.softmax(logits, dim=-1), mask)
        else:
            indices = logits.argmax(dim=-1)  # (N, G)
            offsets = torch.arange(self.num_groups, device=indices.device) * self.num_vars
            grouped = self.codevectors[0, indices + offsets]  # (N, G, D/G)
            perplexity = None
        code_perplexity = perplexity_of_indices(indices, self.num_vars, mask)
        return QuantizerOutput(
            codevectors=grouped.reshape(num_frames, self.codevectors.shape[-1] * self.num_groups),
            codevector_indices=indices,
            perplexity=code_perplexity if perplexity is None else perplexity,
            code_perplexity=code_perplexity,
        )

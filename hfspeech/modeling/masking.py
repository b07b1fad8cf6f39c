"""Span masks, channel masks and negative sampling for pretraining, in torch on the input's device.

All functions are vectorised over the batch (no Python loop over utterances, no NumPy) and
draw their randomness from an optional ``torch.Generator`` that must live on ``device``.

Semantics follow fairseq's ``compute_mask_indices`` (``mask_type="static"``,
``no_overlap=False``, ``require_same_masks=False``) for each utterance of valid length ``n``:

* number of spans ``num = max(int(mask_prob * n / mask_length + u), min_masks)`` with
  ``u ~ U[0, 1)`` drawn per utterance (probabilistic rounding);
* ``num`` distinct span starts are drawn uniformly without replacement from
  ``[0, n - mask_length)`` so every span fits inside the valid frames (as in fairseq, the
  start ``n - mask_length`` is excluded, so the last valid frame of a long utterance is never
  masked; transformers allows that start); when the utterance is too short for that
  (``n - mask_length <= num``) the starts come from ``[0, num]`` instead and spans are cut
  at ``n`` (fairseq's short-utterance rule; transformers masks nothing when ``n < mask_length``);
* spans may overlap, so the masked fraction is below ``mask_prob`` (about 49% for
  ``0.65 / 10`` and 57% for ``0.8 / 10`` on long utterances);
* padding frames (``t >= n``) are never masked.

fairseq additionally subsamples every utterance down to the batch's smallest mask
(``require_same_masks``) so negatives can be drawn with one ``randint``; the vectorised
negative sampler below does not need that, so masks are left as drawn (as in transformers).
"""

from __future__ import annotations

import torch

from .host_reads import host_reads_allowed

__all__ = ["compute_span_mask", "compute_channel_mask", "sample_negative_indices"]


def _uniform(size: tuple, generator: torch.Generator | None, device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``torch.rand(size)`` from ``generator`` when one is given. Without one the ``generator``
    argument is left out: torch.compile (torch 2.13) fails on ``generator=None`` once a size is dynamic."""
    if generator is None:
        return torch.rand(size, device=device, dtype=dtype)
    return torch.rand(size, generator=generator, device=device, dtype=dtype)


def _check_mask_arguments(mask_prob: float, mask_length: int, min_masks: int) -> None:
    if not 0.0 <= mask_prob:
        raise ValueError(
            f"mask_prob must be >= 0 (fairseq notation: fraction of frames starting a span times "
            f"mask_length, e.g. 0.65 for wav2vec 2.0 base), got {mask_prob}."
        )
    if int(mask_length) != mask_length or mask_length < 1:
        raise ValueError(f"mask_length must be an integer >= 1 (frames per span), got {mask_length}.")
    if int(min_masks) != min_masks or min_masks < 0:
        raise ValueError(f"min_masks must be an integer >= 0, got {min_masks}.")


def compute_span_mask(
    batch_size: int,
    num_frames: int,
    mask_prob: float,
    mask_length: int,
    min_masks: int = 0,
    frame_lengths: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw overlapping spans of ``mask_length`` frames per utterance (fairseq semantics).

    Args:
        batch_size: B.
        num_frames: T, the padded number of frames.
        mask_prob: fairseq's mask probability (expected span starts per frame x mask_length).
        mask_length: frames per span (M).
        min_masks: at least this many spans per utterance (fairseq's wav2vec 2.0 uses 2).
        frame_lengths: (B,) integer valid frames per utterance (right padding); None = all T.
        generator: torch.Generator on ``device`` for reproducible draws.
        device: where the mask is built; defaults to ``frame_lengths``' device, else CPU.

    Returns:
        (B, T) bool tensor, True on masked frames; always False on padding frames.
    """
    _check_mask_arguments(mask_prob, mask_length, min_masks)
    if batch_size < 0 or num_frames < 0:
        raise ValueError(f"batch_size and num_frames must be >= 0, got {batch_size} and {num_frames}.")
    if device is None:
        device = frame_lengths.device if frame_lengths is not None else torch.device("cpu")
    device = torch.device(device)
    if frame_lengths is None:
        lengths = torch.full((batch_size,), num_frames, dtype=torch.long, device=device)
    else:
        if frame_lengths.shape != (batch_size,):
            raise ValueError(
                f"frame_lengths must have shape (batch_size,) = ({batch_size},), got "
                f"{tuple(frame_lengths.shape)}; pass one valid-frame count per utterance."
            )
        if torch.is_floating_point(frame_lengths) or frame_lengths.dtype == torch.bool:
            raise ValueError(f"frame_lengths must be an integer tensor, got {frame_lengths.dtype}.")
        lengths = frame_lengths.to(device=device, dtype=torch.long)
        if batch_size and host_reads_allowed(lengths) and (int(lengths.min()) < 0 or int(lengths.max()) > num_frames):
            raise ValueError(
                f"frame_lengths must lie in [0, num_frames={num_frames}], got min {int(lengths.min())} "
                f"and max {int(lengths.max())}; compute them from the attention mask of this batch."
            )
    if batch_size == 0 or num_frames == 0:
        return torch.zeros(batch_size, num_frames, dtype=torch.bool, device=device)

    rounding = _uniform((batch_size,), generator, device, torch.float64)
    num_spans = (mask_prob * lengths.to(torch.float64) / mask_length + rounding).floor().long()
    num_spans = num_spans.clamp_min(min_masks)
    # Starts come from [0, num_starts): n - mask_length normally, num + 1 for short utterances.
    short = lengths - mask_length <= num_spans
    num_starts = torch.where(short, num_spans + 1, lengths - mask_length)
    # Shapes come from bounds known without reading the lengths (no host synchronisation on a
    # GPU, no graph break under torch.compile): n <= T spans at most
    # floor(p T / M) + 1 (or min_masks), and at most max(T - M, spans + 1) starts.
    max_spans = max(int(mask_prob * num_frames / mask_length) + 1, min_masks)
    max_starts = max(num_frames - mask_length, max_spans + 1)
    # Uniform subset without replacement: the `num_spans` smallest of i.i.d. uniform keys among
    # the allowed start positions (num_spans < num_starts, so they are all allowed ones).
    keys = _uniform((batch_size, max_starts), generator, device)
    positions = torch.arange(max_starts, device=device)
    keys = keys.masked_fill(positions[None, :] >= num_starts[:, None], 2.0)
    chosen = keys.topk(min(max_spans, max_starts), dim=1, largest=False).indices  # (B, S), ascending keys
    keep = torch.arange(chosen.shape[1], device=device)[None, :] < num_spans[:, None]
    starts = torch.zeros(batch_size, max_starts + 1, dtype=torch.int32, device=device)
    starts.scatter_add_(1, torch.where(keep, chosen, max_starts), keep.to(torch.int32))
    starts = starts[:, :max_starts]
    # Frame t is masked when a span starts in (t - mask_length, t]: a running count of starts.
    width = max(num_frames, max_starts)
    counts = torch.zeros(batch_size, width + 1, dtype=torch.int32, device=device)
    counts[:, 1 : max_starts + 1] = starts
    counts = counts.cumsum(dim=1)
    frame_index = torch.arange(num_frames, device=device)
    upper = counts[:, 1 : num_frames + 1]
    lower = counts.gather(1, (frame_index - mask_length + 1).clamp_min(0).expand(batch_size, -1))
    mask = (upper - lower) > 0
    return mask & (frame_index[None, :] < lengths[:, None])


def compute_channel_mask(
    batch_size: int,
    num_channels: int,
    mask_prob: float,
    mask_length: int,
    min_masks: int = 0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """SpecAugment-style channel (feature) mask: spans of ``mask_length`` channels per utterance.

    Same span rule as `compute_span_mask` over the channel axis (all C channels valid); the
    caller broadcasts it over time, i.e. ``hidden.masked_fill(mask[:, None, :], 0)``.

    Args:
        batch_size: B.
        num_channels: C, e.g. ``hidden_size``.
        mask_prob, mask_length, min_masks: as in `compute_span_mask` (fairseq's
            ``mask_channel_prob`` / ``mask_channel_length``).
        generator, device: as in `compute_span_mask`.

    Returns:
        (B, C) bool tensor, True on masked channels.
    """
    return compute_span_mask(
        batch_size, num_channels, mask_prob, mask_length, min_masks=min_masks,
        frame_lengths=None, generator=generator, device=device,
    )


def sample_negative_indices(
    mask: torch.Tensor,
    num_negatives: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw ``num_negatives`` distractors for every masked step from the other masked steps.

    For a masked step of utterance b, each distractor is drawn uniformly (with replacement)
    from the *other* masked steps of utterance b, so it is never the positive step itself
    (fairseq's ``sample_negatives`` with ``cross_sample_negatives=0``).

    Layout (transformers' ``_sample_negative_indices`` convention, usable with
    ``Wav2Vec2ForPreTraining``): values are flat indices into the (B*T) steps, i.e.
    ``b * T + t``. Rows of unmasked steps are not used by the loss and hold ``b * T``.

    Args:
        mask: (B, T) bool, True on masked (and valid) steps.
        num_negatives: K distractors per masked step.
        generator: torch.Generator on ``mask.device``.

    Returns:
        (B, T, K) long tensor of flat step indices.

    Raises:
        ValueError: if an utterance has exactly one masked step (it has no distractor to
            draw; checked on CPU, see `host_reads`; elsewhere its distractor is an unmasked
            step of the same utterance); utterances without masked steps are fine.
    """
    if mask.dim() != 2 or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a (B, T) bool tensor, got shape {tuple(mask.shape)} and {mask.dtype}.")
    if int(num_negatives) != num_negatives or num_negatives < 1:
        raise ValueError(f"num_negatives must be an integer >= 1, got {num_negatives}.")
    batch_size, num_frames = mask.shape
    device = mask.device
    if batch_size == 0 or num_frames == 0:
        return torch.zeros(batch_size, num_frames, num_negatives, dtype=torch.long, device=device)
    num_masked = mask.sum(dim=1)  # (B,)
    if host_reads_allowed(mask) and bool((num_masked == 1).any()):
        lonely = (num_masked == 1).nonzero().flatten()
        raise ValueError(
            f"Utterance(s) at batch index {lonely.tolist()} have exactly one masked step, so no "
            "distractor can be drawn for the contrastive loss; raise mask_time_min_masks / "
            "mask_time_length or drop utterances shorter than mask_time_length frames."
        )
    # Fixed shapes, no host synchronisation: a draw for every (b, t), kept where t is masked.
    # Row b of `order` lists utterance b's masked steps first, in time order (as flat indices
    # b * T + t); the masked step t is entry rank[b, t] of it, and each distractor is a uniform
    # pick among the other m_b - 1. int32 throughout: half the memory traffic of int64.
    offsets = (torch.arange(batch_size, device=device, dtype=torch.int32) * num_frames)[:, None]
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True).to(torch.int32) + offsets  # (B, T)
    rank = mask.cumsum(dim=1, dtype=torch.int32) - 1  # (B, T)
    choices = (num_masked.to(torch.int32) - 1).clamp_min(1)[:, None, None]  # (B, 1, 1)
    uniform = _uniform((batch_size, num_frames, num_negatives), generator, device)
    # floor(U * (m - 1)) is uniform on [0, m - 2]; the minimum only catches float32 rounding up.
    drawn = uniform.mul_(choices).to(torch.int32)
    torch.minimum(drawn, choices - 1, out=drawn)
    drawn += drawn >= rank[..., None]  # skip the positive's own entry: uniform over the others
    drawn.clamp_(max=num_frames - 1)  # (only rows without masked steps can point past the end)
    steps = order.gather(1, drawn.view(batch_size, -1)).view_as(drawn)
    return torch.where(mask[..., None], steps, offsets[..., None]).long()

"""Regression deltas of frame features (Kaldi / torchaudio ``compute_deltas``), batched over utterances.

``sum_{k=1..n} k (x[t+k] - x[t-k]) / (2 sum_k k^2)`` with each utterance's edge frames
replicated; the MFCC pipeline applies it twice (delta, delta-delta) to the 13 cepstra.
"""

from __future__ import annotations

import numpy as np
import torch

from .scratch import scratch


def deltas_within_utterances(
    features: torch.Tensor, counts: np.ndarray, window: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Deltas (N, D) of (N, D) concatenated utterances of ``counts`` frames; each replicates its own edges.

    Interior frames come from shifted slices of the flattened array (contiguous, so each term
    is one vectorised pass); only the frames within ``(window - 1) / 2`` of an utterance edge
    (4 per utterance for window 5) are recomputed with clamped indices. ``out``: a contiguous
    (N, D) tensor to write into (the temporaries come from the thread's scratch then).
    """
    n = (window - 1) // 2
    denominator = n * (n + 1) * (2 * n + 1) / 3
    features = features.contiguous()
    length, dim = features.shape
    delta = torch.empty_like(features) if out is None else out
    source, interior = features.view(-1), delta.view(-1)[n * dim : (length - n) * dim]
    if length > 2 * n:  # rows [n, length - n); the first/last n rows are utterance edges, written below
        term = None if out is None else scratch("delta term", (interior.shape[0],), features.device)
        for offset in range(1, n + 1):
            ahead = source[(n + offset) * dim : (length - n + offset) * dim]
            behind = source[(n - offset) * dim : (length - n - offset) * dim]
            if offset == 1:
                torch.sub(ahead, behind, out=interior)
            else:
                interior.add_(ahead - behind if term is None else torch.sub(ahead, behind, out=term), alpha=offset)
    ends = np.cumsum(counts)
    starts = ends - counts
    near = np.arange(n)
    rows = np.concatenate([(starts[:, None] + near).ravel(), (ends[:, None] - 1 - near).ravel()])
    owner = np.concatenate([np.repeat(np.arange(len(counts)), n)] * 2)
    inside = (rows >= starts[owner]) & (rows < ends[owner])
    rows, owner = rows[inside], owner[inside]
    if len(rows):
        row_index = torch.from_numpy(rows).to(features.device)
        first = torch.from_numpy(starts[owner]).to(features.device)
        last = torch.from_numpy(ends[owner] - 1).to(features.device)
        edge = torch.zeros(len(rows), dim, device=features.device, dtype=features.dtype)
        for offset in range(1, n + 1):
            ahead = torch.minimum(row_index + offset, last)
            behind = torch.maximum(row_index - offset, first)
            edge.add_(features[ahead] - features[behind], alpha=offset)
        delta[row_index] = edge
    return delta.div_(denominator)


def compute_deltas(features: torch.Tensor, window: int = 5) -> torch.Tensor:
    """Regression deltas along time, edges replicated (torchaudio.functional.compute_deltas).

    Args:
        features: (T, D) frames of one utterance.
        window: odd regression window (5 -> offsets -2..2, denominator 10).
    Returns:
        (T, D) deltas ``sum_k k (x[t+k] - x[t-k]) / (2 sum_k k^2)``.
    """
    if window < 3 or window % 2 == 0:
        raise ValueError(f"delta window must be an odd integer >= 3, got {window}")
    return deltas_within_utterances(features, np.array([features.shape[0]]), window)

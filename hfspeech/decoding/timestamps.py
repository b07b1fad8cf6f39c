"""Frame paths -> text with word and character timestamps, and CTC forced alignment.

Every decoder ends with a frame path: one token index per frame over the *compact*
labels (index 0 = blank, see :meth:`CTCVocabulary.fold_specials`). Greedy decoding and
flashlight produce it directly; for pyctcdecode, which returns text only, the path is the
Viterbi (forced) alignment of its text to the emissions. The tokenizer's character and word
offsets (``return_timestamps`` in the ASR pipeline) come from the same two steps:
:func:`collapse_runs` and :func:`words_from_characters` (`hfspeech.processing.token_spans`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..processing.token_spans import TokenSpan, collapse_runs, words_from_characters

__all__ = ["TokenSpan", "Transcription", "collapse_runs", "forced_align", "spans_from_path", "words_from_characters"]


@dataclass
class Transcription:
    """One decoded utterance.

    Attributes:
        text: words separated by single spaces.
        score: the backend's total log score of the hypothesis (acoustic + LM terms).
        words: one span per word of ``text``.
        chars: one span per character of ``text`` (spaces excluded).
    """

    text: str
    score: float
    words: list[TokenSpan] = field(default_factory=list)
    chars: list[TokenSpan] = field(default_factory=list)


def spans_from_path(
    path: Sequence[int] | np.ndarray, labels: Sequence[str], seconds_per_frame: float
) -> tuple[str, list[TokenSpan], list[TokenSpan]]:
    """Collapse a CTC frame path into text, word spans and character spans.

    Args:
        path: (T,) compact token index per frame; 0 is the blank.
        labels: compact labels (``""`` blank, ``" "`` delimiter, characters).
        seconds_per_frame: frame stride of the acoustic model (0.02 for wav2vec 2.0).

    Returns:
        ``(text, words, chars)``.
    """
    printed = [TokenSpan(labels[token], start, end, seconds_per_frame)
               for token, start, end in collapse_runs(path) if labels[token] != ""]
    words = words_from_characters(printed)
    chars = [span for span in printed if span.text != " "]
    return " ".join(word.text for word in words), words, chars


def forced_align(log_probs: np.ndarray, targets: Sequence[int], blank: int = 0) -> np.ndarray:
    """Viterbi CTC alignment of a token sequence to emissions.

    Args:
        log_probs: (T, V) log-probabilities.
        targets: (L,) token indices (no blanks).
        blank: blank index.

    Returns:
        (T,) int64 frame path: the most likely CTC path that collapses to ``targets``.

    Raises:
        ValueError: if ``targets`` needs more frames than there are (L + repeats > T).
    """
    targets = list(targets)
    num_frames = log_probs.shape[0]
    if not targets:
        return np.full(num_frames, blank, dtype=np.int64)
    states = np.full(2 * len(targets) + 1, blank, dtype=np.int64)
    states[1::2] = targets
    num_states = len(states)
    # A state may skip the blank before it when its token differs from the one two back.
    can_skip = np.zeros(num_states, dtype=bool)
    can_skip[3::2] = states[3::2] != states[1:-2:2]
    score = np.full(num_states, -np.inf)
    score[0] = log_probs[0, states[0]]
    score[1] = log_probs[0, states[1]]
    choices = np.zeros((num_frames, num_states), dtype=np.int8)  # 0 stay, 1 from s-1, 2 from s-2
    for frame in range(1, num_frames):
        from_previous = np.concatenate([[-np.inf], score[:-1]])
        from_skip = np.where(can_skip, np.concatenate([[-np.inf, -np.inf], score[:-2]]), -np.inf)
        candidates = np.stack([score, from_previous, from_skip])
        choice = candidates.argmax(axis=0)
        score = candidates[choice, np.arange(num_states)] + log_probs[frame, states]
        choices[frame] = choice
    final = num_states - 1 if score[-1] >= score[-2] else num_states - 2
    if not np.isfinite(score[final]):
        raise ValueError(
            f"forced_align: {len(targets)} tokens cannot be aligned to {num_frames} frames "
            "(too many tokens or repeats for the audio length)."
        )
    path = np.empty(num_frames, dtype=np.int64)
    state = final
    for frame in range(num_frames - 1, -1, -1):
        path[frame] = states[state]
        state -= int(choices[frame, state])
    return path

"""Frame paths -> text with word and character timestamps, and CTC forced alignment.

Every decoder ends with a frame path: one token index per frame over the *compact*
labels (index 0 = blank, see :meth:`CTCVocabulary.fold_specials`). Greedy decoding and
flashlight produce it directly; for pyctcdecode, which returns text only, the path is the
Viterbi (forced) alignment of its text to the emissions. The tokenizer's character and word
offsets (``return_timestamps`` in the ASR pipeline) come from the same two steps:
:func:`collapse_runs` and :func:`words_from_characters`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TokenSpan:
    """A character or word and the frames it covers: ``[start_frame, end_frame)``."""

    text: str
    start_frame: int
    end_frame: int
    seconds_per_frame: float = 0.02

    @property
    def start_time(self) -> float:
        """Start in seconds."""
        return self.start_frame * self.seconds_per_frame

    @property
    def end_time(self) -> float:
        """End in seconds (exclusive)."""
        return self.end_frame * self.seconds_per_frame


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


def collapse_runs(
    tokens: Sequence[int] | np.ndarray, frames: Sequence[int] | np.ndarray | None = None
) -> list[tuple[int, int, int]]:
    """Runs of equal consecutive tokens, as CTC collapses them: ``(token, start_frame, end_frame)``.

    Args:
        tokens: (N,) token indices.
        frames: (N,) the frame of each token (default ``0..N-1``); pass it when some frames were
            dropped before grouping (special tokens), so that runs keep their times.

    Returns:
        One ``(token, start, end)`` per run, ``end`` exclusive (the frame after the run's last).
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    if len(tokens) == 0:
        return []
    frames = np.arange(len(tokens)) if frames is None else np.asarray(frames, dtype=np.int64)
    boundaries = np.flatnonzero(np.diff(tokens)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(tokens)]])
    return [(int(tokens[start]), int(frames[start]), int(frames[end - 1]) + 1)
            for start, end in zip(starts.tolist(), ends.tolist())]


def words_from_characters(characters: Sequence[TokenSpan], delimiter: str = " ") -> list[TokenSpan]:
    """Join each run of characters between ``delimiter`` spans into a word (first start, last end)."""
    words: list[TokenSpan] = []
    current: list[TokenSpan] = []
    for span in [*characters, None]:
        if span is not None and span.text != delimiter:
            current.append(span)
            continue
        if current:
            words.append(TokenSpan("".join(c.text for c in current), current[0].start_frame, current[-1].end_frame,
                                   current[0].seconds_per_frame))
            current = []
    return words


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

"""Token spans of a CTC frame path: runs of equal tokens and the words they spell, with their frames.

The tokenizer's character and word offsets (``output_char_offsets``/``output_word_offsets``, the
ASR pipeline's ``return_timestamps``) and every decoder's timestamps (`hfspeech.decoding.timestamps`)
come from these two steps: `collapse_runs`, then `words_from_characters`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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

"""Word and character error rates with their error types, worst utterances, and speed (RTF).

Alignments come from jiwer (Levenshtein). Totals are sums over utterances, so the corpus
WER is ``(S + D + I) / N`` with N the number of reference words, not a mean of rates.
CER counts spaces between words as characters (jiwer's convention).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import jiwer

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


@dataclass
class ErrorCounts:
    """Edit operations between references and hypotheses."""

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    hits: int = 0

    @property
    def reference_length(self) -> int:
        """Reference units (words or characters): hits + substitutions + deletions."""
        return self.hits + self.substitutions + self.deletions

    @property
    def errors(self) -> int:
        """S + D + I."""
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """(S + D + I) / N."""
        return self.errors / self.reference_length if self.reference_length else float("nan")

    def __add__(self, other: "ErrorCounts") -> "ErrorCounts":
        return ErrorCounts(self.substitutions + other.substitutions, self.deletions + other.deletions,
                           self.insertions + other.insertions, self.hits + other.hits)

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "reference_length": self.reference_length, "rate": self.rate}


@dataclass
class UtteranceErrors:
    """Word and character errors of one utterance."""

    index: int
    utterance_id: str
    reference: str
    hypothesis: str
    words: ErrorCounts
    chars: ErrorCounts


@dataclass
class ErrorReport:
    """Corpus WER/CER with per-utterance details."""

    words: ErrorCounts
    chars: ErrorCounts
    utterances: list[UtteranceErrors] = field(default_factory=list)

    @property
    def wer(self) -> float:
        return self.words.rate

    @property
    def cer(self) -> float:
        return self.chars.rate

    def worst(self, count: int = 10) -> list[UtteranceErrors]:
        """Utterances with the most word errors (ties: higher utterance WER first)."""
        return sorted(self.utterances, key=lambda u: (-u.words.errors, -u.words.rate, u.index))[:count]

    def to_dict(self, worst: int = 10) -> dict[str, Any]:
        return {
            "wer": self.wer,
            "cer": self.cer,
            "words": self.words.to_dict(),
            "chars": self.chars.to_dict(),
            "worst": [
                {"utterance_id": u.utterance_id, "reference": u.reference, "hypothesis": u.hypothesis,
                 "word_errors": u.words.errors, "wer": u.words.rate}
                for u in self.worst(worst)
            ],
        }

    def summary(self) -> str:
        """One line: WER and CER with their error types."""
        w, c = self.words, self.chars
        return (f"WER {100 * self.wer:.2f}% (S {w.substitutions}, D {w.deletions}, I {w.insertions}, "
                f"N {w.reference_length})  CER {100 * self.cer:.2f}% (S {c.substitutions}, "
                f"D {c.deletions}, I {c.insertions}, N {c.reference_length})")


def _counts(output: Any) -> ErrorCounts:
    return ErrorCounts(int(output.substitutions), int(output.deletions), int(output.insertions), int(output.hits))


def error_report(
    references: Sequence[str], hypotheses: Sequence[str], utterance_ids: Sequence[str] | None = None
) -> ErrorReport:
    """Align every hypothesis to its reference and count word and character errors.

    Raises:
        ValueError: different list lengths, no utterances, or an empty reference (WER is
            undefined for it: drop silent utterances from the evaluation set).
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"error_report: {len(references)} references but {len(hypotheses)} hypotheses; "
                         "give one hypothesis per reference.")
    if not references:
        raise ValueError("error_report: no utterances to score.")
    ids = list(utterance_ids) if utterance_ids is not None else [str(i) for i in range(len(references))]
    empty = [ids[i] for i, reference in enumerate(references) if not reference.strip()]
    if empty:
        raise ValueError(f"error_report: empty references for utterances {empty[:10]}; WER is undefined "
                         "for them. Remove those utterances or provide their transcripts.")
    total_words, total_chars = ErrorCounts(), ErrorCounts()
    utterances = []
    for index, (reference, hypothesis) in enumerate(zip(references, hypotheses)):
        reference = " ".join(reference.split())
        hypothesis = " ".join(hypothesis.split())
        words = _counts(jiwer.process_words(reference, hypothesis))
        chars = _counts(jiwer.process_characters(reference, hypothesis))
        total_words += words
        total_chars += chars
        utterances.append(UtteranceErrors(index, ids[index], reference, hypothesis, words, chars))
    return ErrorReport(total_words, total_chars, utterances)


@dataclass
class DecodingSpeed:
    """Throughput of a decoding run."""

    utterances: int
    audio_seconds: float
    decode_seconds: float

    @property
    def real_time_factor(self) -> float:
        """Decoding time / audio time (below 1: faster than real time)."""
        return self.decode_seconds / self.audio_seconds

    @property
    def utterances_per_second(self) -> float:
        return self.utterances / self.decode_seconds


def measure_decoding_speed(
    decode: Callable[[list[ItemT]], list[ResultT]], items: list[ItemT], audio_seconds: float
) -> tuple[list[ResultT], DecodingSpeed]:
    """Time ``decode(items)`` (wall clock) and relate it to the audio duration."""
    if audio_seconds <= 0:
        raise ValueError(f"measure_decoding_speed: audio_seconds={audio_seconds}; it must be > 0.")
    start = time.perf_counter()
    results = decode(items)
    elapsed = time.perf_counter() - start
    return results, DecodingSpeed(len(items), audio_seconds, elapsed)

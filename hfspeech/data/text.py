"""Transcript normalisation to the CTC character vocabulary, with an out-of-vocabulary report.

The default vocabulary is LibriSpeech's: upper-case ``A``-``Z``, the apostrophe and the
space (the word delimiter). Case is folded; whitespace runs collapse to one space.
Spelling out numbers, expanding abbreviations or mapping punctuation is a language
decision left to the caller through ``hook`` (a ``str -> str`` applied first).

Characters still outside the vocabulary are handled by ``on_unknown``:
``"error"`` (default: raise, naming the utterance), ``"remove"`` or ``"space"`` (replace
by a space). Either way :func:`out_of_vocabulary_report` tells which characters occur and
how many utterances they touch, so nothing is dropped unseen.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

CTC_VOCABULARY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ' ")
_WHITESPACE = re.compile(r"\s+")
UNKNOWN_POLICIES = ("error", "remove", "space")


@dataclass
class OutOfVocabularyReport:
    """Characters outside the vocabulary: occurrences and number of utterances touched."""

    occurrences: Counter = field(default_factory=Counter)
    utterances: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    total_utterances: int = 0
    #: utterances with at least one out-of-vocabulary character
    affected_utterances: int = 0

    def as_dict(self) -> dict[str, dict[str, object]]:
        """``{char: {"occurrences", "utterances", "example_id"}}``, most frequent first."""
        return {
            char: {"occurrences": count, "utterances": self.utterances[char], "example_id": self.examples[char]}
            for char, count in self.occurrences.most_common()
        }

    def __str__(self) -> str:
        if not self.occurrences:
            return f"no out-of-vocabulary characters in {self.total_utterances} utterances"
        parts = [f"{char!r}: {count} times in {self.utterances[char]} utterances"
                 for char, count in self.occurrences.most_common()]
        return (f"{self.affected_utterances} of {self.total_utterances} utterances have out-of-vocabulary "
                f"characters: " + "; ".join(parts))


class TextNormalizer:
    """Map raw transcripts onto a CTC character vocabulary.

    Args:
        vocabulary: allowed characters after upper-casing (default: A-Z, apostrophe, space).
        hook: optional ``str -> str`` applied to the raw text first (numbers, punctuation ...).
        on_unknown: ``"error"``, ``"remove"`` or ``"space"`` for characters still outside.
        lowercase: fold to lower case instead of upper case (for lower-case vocabularies).
    """

    def __init__(
        self,
        vocabulary: Iterable[str] = CTC_VOCABULARY,
        hook: Callable[[str], str] | None = None,
        on_unknown: str = "error",
        lowercase: bool = False,
    ) -> None:
        if on_unknown not in UNKNOWN_POLICIES:
            raise ValueError(f"on_unknown={on_unknown!r}; choose one of {UNKNOWN_POLICIES}")
        self.vocabulary = frozenset(vocabulary)
        if " " not in self.vocabulary:
            raise ValueError("vocabulary must contain the space (the word delimiter)")
        self.hook = hook
        self.on_unknown = on_unknown
        self.lowercase = lowercase

    def _fold(self, text: str) -> str:
        if self.hook is not None:
            text = self.hook(text)
            if not isinstance(text, str):
                raise ValueError(f"text hook returned {type(text).__name__}, expected str")
        text = unicodedata.normalize("NFC", text)
        text = text.lower() if self.lowercase else text.upper()
        text = text.replace("\u2019", "'")  # typographic apostrophe -> ASCII apostrophe
        return _WHITESPACE.sub(" ", text).strip()

    def unknown_characters(self, text: str) -> list[str]:
        """Characters of the folded ``text`` outside the vocabulary (with repeats)."""
        return [char for char in self._fold(text) if char not in self.vocabulary]

    def __call__(self, text: str, utterance_id: str | None = None) -> str:
        """Normalise one transcript; raises ``ValueError`` on unknown characters when ``on_unknown="error"``."""
        folded = self._fold(text)
        unknown = sorted({char for char in folded if char not in self.vocabulary})
        if not unknown:
            return folded
        if self.on_unknown == "error":
            where = f"utterance {utterance_id}" if utterance_id else "transcript"
            raise ValueError(
                f"{where}: characters {unknown} are outside the CTC vocabulary in {text!r}; map them with "
                "hook=..., or pass on_unknown='remove'/'space'"
            )
        replacement = "" if self.on_unknown == "remove" else " "
        cleaned = "".join(char if char in self.vocabulary else replacement for char in folded)
        return _WHITESPACE.sub(" ", cleaned).strip()

    def report(self, texts: Iterable[str], ids: Iterable[str] | None = None) -> OutOfVocabularyReport:
        """Count out-of-vocabulary characters over ``texts`` (after hook and case folding)."""
        report = OutOfVocabularyReport()
        id_iter = iter(ids) if ids is not None else None
        for index, text in enumerate(texts):
            utterance_id = next(id_iter) if id_iter is not None else str(index)
            report.total_utterances += 1
            unknown = self.unknown_characters(text)
            if not unknown:
                continue
            report.affected_utterances += 1
            report.occurrences.update(unknown)
            for char in set(unknown):
                report.utterances[char] += 1
                report.examples.setdefault(char, utterance_id)
        return report


def out_of_vocabulary_report(
    texts: Iterable[str], ids: Iterable[str] | None = None, normalizer: TextNormalizer | None = None
) -> OutOfVocabularyReport:
    """Report characters of ``texts`` outside ``normalizer``'s vocabulary (default: A-Z ' space)."""
    return (normalizer or TextNormalizer()).report(texts, ids)

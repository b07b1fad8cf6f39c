"""Text normalisation to a CTC character vocabulary: the one set of rules and the one alphabet.

Every text that meets a character CTC model goes through :class:`TextNormalizer`: the
transcripts the tokenizer is built from and the CTC collator encodes, the LM corpus of
``hfspeech lm build``, the references of ``hfspeech lm tune``/``evaluate`` and of the demo. So
an LM word and a CTC transcript of the same text are the same characters.

The default vocabulary is LibriSpeech's (:data:`CTC_ALPHABET` plus the space, the word
delimiter): the apostrophe and upper-case ``A``-``Z``. The rules, in the order applied:

1. ``hook`` (a user ``str -> str``) runs first: spelling out numbers, expanding
   abbreviations or mapping punctuation is a language decision left to it.
2. Unicode NFC composition.
3. Case follows the vocabulary: upper-case letters only -> text is upper-cased, lower-case
   only -> lower-cased (or ``lowercase=True``), mixed -> left as is.
4. Characters of the vocabulary are kept; for the others, in turn:
   apostrophe variants (``’ ‘ ‛ ʼ ` ´ ＇``) become ``'``; whitespace, hyphens and dashes
   (``- ‐ ‑ ‒ – — ― −``), ``_`` and ``/`` separate words; an accented letter becomes its
   base letters when the vocabulary has them (``é`` -> ``E``, ``ﬁ`` -> ``FI``).
5. Whitespace runs collapse to one space.
6. What is still outside the vocabulary (digits, other punctuation) is handled by
   ``on_unknown``: ``"error"`` (raise, naming the utterance), ``"remove"`` or ``"space"``
   (replace by a space); :meth:`TextNormalizer.report` and the ``Counter`` of
   :meth:`TextNormalizer.normalize` tell which characters and how often, so nothing is
   dropped unseen. Digits are never guessed at: they are reported, or spelled by the hook.
7. An apostrophe at the start or end of a word is a quotation mark and is dropped
   (``'TWAS`` -> ``TWAS``; ``DON'T`` keeps it).
"""

from __future__ import annotations

import logging
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

#: Characters a word can contain in the default (LibriSpeech) vocabulary, in tokenizer order.
CTC_ALPHABET = "'" + string.ascii_uppercase
#: The default vocabulary: the alphabet and the space (the word delimiter).
CTC_VOCABULARY = frozenset(CTC_ALPHABET + " ")
#: Typographic and look-alike apostrophes, written ``'`` when the vocabulary has it.
APOSTROPHE_VARIANTS = frozenset("\u2019\u2018\u201b\u02bc`\u00b4\uff07")
#: Hyphens, dashes, minus, underscore and slash: they separate words.
WORD_SEPARATORS = frozenset("-\u2010\u2011\u2012\u2013\u2014\u2015\u2212_/")
UNKNOWN_POLICIES = ("error", "remove", "space")
_WHITESPACE = re.compile(r"\s+")


def letter_case(characters: Iterable[str]) -> str:
    """``"upper"``, ``"lower"`` or ``"mixed"``: the case of the letters among ``characters``."""
    letters = [char for char in characters if char.isalpha()]
    if letters and all(char.isupper() for char in letters):
        return "upper"
    if letters and all(char.islower() for char in letters):
        return "lower"
    return "mixed"


def strip_accents(char: str) -> str:
    """``char`` without combining marks after compatibility decomposition (``É`` -> ``E``, ``ﬁ`` -> ``fi``)."""
    return "".join(part for part in unicodedata.normalize("NFKD", char) if not unicodedata.combining(part))


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
    """Map raw text onto a CTC character vocabulary with the rules of this module's docstring.

    Args:
        vocabulary: allowed characters, the space included (default: A-Z, apostrophe, space).
        hook: optional ``str -> str`` applied to the raw text first (numbers, punctuation ...).
        on_unknown: ``"error"``, ``"remove"`` or ``"space"`` for characters still outside.
        lowercase: fold to lower case whatever the vocabulary's letters are.
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
        self.case = "lower" if lowercase else letter_case(self.vocabulary)
        self._alphabet = self.vocabulary - {" "}

    @property
    def alphabet(self) -> str:
        """The characters a word can contain, sorted (the vocabulary without the space)."""
        return "".join(sorted(self._alphabet))

    def _map_character(self, char: str) -> str:
        """Rule 4 for one character: itself, ``'``, a space, its base letters, or itself (unknown)."""
        if char in self.vocabulary:
            return char
        if char in APOSTROPHE_VARIANTS and "'" in self.vocabulary:
            return "'"
        if char.isspace() or char in WORD_SEPARATORS:
            return " "
        base = strip_accents(char)
        if base and all(part in self._alphabet for part in base):
            return base
        return char

    def fold(self, text: str) -> str:
        """Rules 1-5: hook, NFC, case, apostrophes, word separators, accents, whitespace."""
        if self.hook is not None:
            text = self.hook(text)
            if not isinstance(text, str):
                raise ValueError(f"text hook returned {type(text).__name__}, expected str")
        text = unicodedata.normalize("NFC", text)
        if self.case == "upper":
            text = text.upper()
        elif self.case == "lower":
            text = text.lower()
        text = "".join(self._map_character(char) for char in text)
        return _WHITESPACE.sub(" ", text).strip()

    def unknown_characters(self, text: str) -> list[str]:
        """Characters of the folded ``text`` outside the vocabulary (with repeats)."""
        return [char for char in self.fold(text) if char not in self.vocabulary]

    def normalize(self, text: str, utterance_id: str | None = None) -> tuple[str, Counter]:
        """Normalise one text; returns it and a Counter of the characters removed or replaced (rule 6).

        Raises:
            ValueError: naming the utterance, when characters are outside the vocabulary and
                ``on_unknown="error"``.
        """
        folded = self.fold(text)
        unknown = Counter(char for char in folded if char not in self.vocabulary)
        if unknown and self.on_unknown == "error":
            where = f"utterance {utterance_id}" if utterance_id else "transcript"
            raise ValueError(
                f"{where}: characters {sorted(unknown)} are outside the CTC vocabulary in {text!r}; map them with "
                "hook=..., or pass on_unknown='remove'/'space'"
            )
        if unknown:
            replacement = "" if self.on_unknown == "remove" else " "
            folded = "".join(char if char in self.vocabulary else replacement for char in folded)
        words = folded.split()
        if "'" in self.vocabulary:
            words = [word.strip("'") for word in words]
        return " ".join(word for word in words if word), unknown

    def __call__(self, text: str, utterance_id: str | None = None) -> str:
        """Normalise one transcript; raises ``ValueError`` on unknown characters when ``on_unknown="error"``."""
        return self.normalize(text, utterance_id)[0]

    def report(self, texts: Iterable[str], ids: Iterable[str] | None = None) -> OutOfVocabularyReport:
        """Count out-of-vocabulary characters over ``texts`` (after rules 1-5)."""
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


def describe_removed(removed: Counter, what: str) -> str:
    """One line on the characters ``normalize`` removed from ``what`` (empty when none), digits named."""
    if not removed:
        return ""
    digits = sum(count for char, count in removed.items() if char.isdigit())
    line = f"{what}: removed {sum(removed.values())} characters outside the vocabulary " \
           f"(most common: {removed.most_common(10)})"
    if digits:
        line += f"; {digits} of them are digits: numbers are not spelled out, spell them with a text hook " \
                "(TextNormalizer(hook=...))"
    return line


def out_of_vocabulary_report(
    texts: Iterable[str], ids: Iterable[str] | None = None, normalizer: TextNormalizer | None = None
) -> OutOfVocabularyReport:
    """Report characters of ``texts`` outside ``normalizer``'s vocabulary (default: A-Z ' space)."""
    return (normalizer or TextNormalizer()).report(texts, ids)

"""The CTC output vocabulary as the decoders see it, and text normalisation to it.

A vocabulary is a list of labels, one per model output (index -> string): ``""`` for the
CTC blank and for special tokens that never print (``<s>``, ``</s>``, ``<unk>``), ``" "``
for the word delimiter (``|``) and one character for every other token.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from hfspeech.data.text import CTC_ALPHABET, TextNormalizer, letter_case

WORD_DELIMITER_TOKEN = "|"
# Emission rows must sum to 1 in probability; fp16 model outputs are off by ~1e-3 at most.
LOG_PROB_TOLERANCE = 0.02


@dataclass(frozen=True)
class CTCVocabulary:
    """Labels of a character CTC model.

    Attributes:
        labels: index -> printed string: ``""`` (blank or special), ``" "`` (word
            delimiter) or one character.
        blank_index: index of the CTC blank (its label must be ``""``).
    """

    labels: tuple[str, ...]
    blank_index: int = 0

    def __post_init__(self) -> None:
        labels = tuple(self.labels)
        object.__setattr__(self, "labels", labels)
        if not labels:
            raise ValueError("CTCVocabulary: the label list is empty; pass one label per model output.")
        if not 0 <= self.blank_index < len(labels):
            raise ValueError(
                f"CTCVocabulary: blank_index={self.blank_index} is outside the {len(labels)} labels."
            )
        if labels[self.blank_index] != "":
            raise ValueError(
                f"CTCVocabulary: the blank label (index {self.blank_index}) is "
                f"{labels[self.blank_index]!r}; it must be '' (it never prints)."
            )
        too_long = [label for label in labels if len(label) > 1]
        if too_long:
            raise ValueError(
                f"CTCVocabulary: labels must be '', ' ' or one character; got {too_long[:5]}. "
                "Map special tokens to '' and the word delimiter '|' to ' ' "
                "(CTCVocabulary.from_tokenizer does this)."
            )
        printed = [label for label in labels if label]
        duplicates = sorted(label for label, count in Counter(printed).items() if count > 1)
        if duplicates:
            raise ValueError(f"CTCVocabulary: duplicated labels {duplicates}; each character must appear once.")
        if " " not in printed:
            raise ValueError(
                "CTCVocabulary: no word delimiter; one label must be ' ' (the tokenizer's '|')."
            )

    @classmethod
    def from_labels(cls, labels: Sequence[str], blank_index: int = 0) -> "CTCVocabulary":
        """Build from raw token strings, mapping ``|`` to ``" "`` and ``<...>`` specials to ``""``."""
        mapped = []
        for label in labels:
            if label == WORD_DELIMITER_TOKEN:
                mapped.append(" ")
            elif len(label) > 1 and label.startswith("<") and label.endswith(">"):
                mapped.append("")
            else:
                mapped.append(label)
        return cls(tuple(mapped), blank_index)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> "CTCVocabulary":
        """Build from a CTC tokenizer (``get_vocab()``, ``pad_token_id`` = blank, specials)."""
        vocab = tokenizer.get_vocab()
        size = max(vocab.values()) + 1
        tokens = [""] * size
        for token, index in vocab.items():
            tokens[index] = token
        specials = set(getattr(tokenizer, "all_special_tokens", []))
        delimiter = getattr(tokenizer, "word_delimiter_token", WORD_DELIMITER_TOKEN)
        labels = [
            " " if token == delimiter else ("" if token in specials else token) for token in tokens
        ]
        blank = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return cls(tuple(labels), blank)

    @property
    def size(self) -> int:
        """Number of model outputs V."""
        return len(self.labels)

    @property
    def alphabet(self) -> frozenset[str]:
        """Characters a word can contain (every printed label except the delimiter)."""
        return frozenset(label for label in self.labels if label and label != " ")

    @property
    def printed_indices(self) -> tuple[int, ...]:
        """Indices of the labels that print (characters and the delimiter), in model order."""
        return tuple(index for index, label in enumerate(self.labels) if label)

    @property
    def compact_labels(self) -> list[str]:
        """Labels of :meth:`fold_specials` output: ``""`` (blank) then the printed labels."""
        return [""] + [self.labels[index] for index in self.printed_indices]

    @property
    def case(self) -> str:
        """``"upper"``, ``"lower"`` or ``"mixed"``: the case of the alphabet's letters."""
        return letter_case(self.alphabet)

    def check_log_probs(self, log_probs: np.ndarray, name: str = "log_probs") -> np.ndarray:
        """Validate emissions of shape (T, V) against this vocabulary; return float32 (T, V)."""
        array = np.asarray(log_probs, dtype=np.float32)
        if array.ndim != 2:
            raise ValueError(f"{name}: expected shape (frames, {self.size}), got {array.shape}.")
        if array.shape[1] != self.size:
            raise ValueError(
                f"{name}: the last dimension is {array.shape[1]} but the vocabulary has {self.size} "
                "labels; decode with the vocabulary of the model that produced the emissions."
            )
        if array.shape[0] == 0:
            raise ValueError(f"{name}: zero frames; the audio is empty or shorter than one frame.")
        if np.isnan(array).any() or np.isposinf(array).any():
            raise ValueError(f"{name}: contains NaN or +inf; pass log-probabilities (log_softmax output).")
        totals = np.logaddexp.reduce(array.astype(np.float64), axis=1)
        if np.abs(totals).max() > LOG_PROB_TOLERANCE:
            raise ValueError(
                f"{name}: rows are not log-probabilities (log-sum-exp per frame ranges over "
                f"[{totals.min():.3g}, {totals.max():.3g}] instead of 0); apply log_softmax over the "
                "vocabulary to the model's logits first."
            )
        return array

    def fold_specials(self, log_probs: np.ndarray) -> np.ndarray:
        """Merge every non-printing label into the blank.

        Args:
            log_probs: (T, V) log-probabilities.

        Returns:
            (T, 1 + P) log-probabilities: column 0 is the log-sum of the blank and the special
            tokens, then the P printed labels in model order (see :attr:`compact_labels`).
        """
        silent = [index for index, label in enumerate(self.labels) if not label]
        folded_blank = np.logaddexp.reduce(log_probs[:, silent], axis=1, keepdims=True)
        return np.ascontiguousarray(
            np.concatenate([folded_blank, log_probs[:, list(self.printed_indices)]], axis=1),
            dtype=np.float32,
        )

    def text_normalizer(self, on_unknown: str = "remove", hook: Callable[[str], str] | None = None) -> TextNormalizer:
        """The :class:`~hfspeech.data.text.TextNormalizer` of this vocabulary (its alphabet and the space)."""
        return TextNormalizer(self.alphabet | {" "}, hook=hook, on_unknown=on_unknown)

    @cached_property
    def _removing_normalizer(self) -> TextNormalizer:
        return self.text_normalizer()

    def normalize_text(self, text: str) -> tuple[str, Counter]:
        """Normalise one line of text to this vocabulary, removing what it cannot spell.

        The rules are :mod:`hfspeech.data.text`'s (case, apostrophes, accents, hyphens and
        dashes, quotes); every character outside the alphabet is removed and counted.

        Returns:
            The normalised line (words separated by single spaces) and a Counter of the
            removed characters.
        """
        return self._removing_normalizer.normalize(text)

    def unknown_characters(self, words: Iterable[str]) -> dict[str, list[str]]:
        """Characters of ``words`` outside the alphabet -> up to 5 example words each."""
        alphabet = self.alphabet
        found: dict[str, list[str]] = {}
        for word in words:
            for char in set(word) - alphabet:
                examples = found.setdefault(char, [])
                if len(examples) < 5:
                    examples.append(word)
        return found


def check_words_match_vocabulary(words: Iterable[str], vocabulary: CTCVocabulary, source: str) -> None:
    """Raise ValueError listing the characters of ``words`` (an LM's unigrams) the model cannot emit."""
    unknown = vocabulary.unknown_characters(words)
    if unknown:
        details = ", ".join(f"{char!r} (e.g. {examples[:3]})" for char, examples in sorted(unknown.items()))
        raise ValueError(
            f"{source}: the language model's words use characters that are not in the model's "
            f"alphabet: {details}. Alphabet: {''.join(sorted(vocabulary.alphabet))!r}. Rebuild the LM "
            "from text normalised to this vocabulary (`hfspeech lm build`, which upper/lower-cases "
            "and strips punctuation to match)."
        )


# CharacterCTCTokenizer's default (LibriSpeech): four specials, the delimiter, then hfspeech.data.text's alphabet.
DEFAULT_LABELS: tuple[str, ...] = ("", "", "", "", " ", *CTC_ALPHABET)


def load_vocabulary(path: str | Path | None) -> CTCVocabulary:
    """Vocabulary from a ``vocab.json`` (token -> id) or a model directory holding one.

    None gives the default LibriSpeech vocabulary (:data:`DEFAULT_LABELS`). Tokens written
    ``<...>`` are specials (``<pad>``, id 0 by convention, is the blank); ``|`` is the
    word delimiter.
    """
    if path is None:
        return CTCVocabulary(DEFAULT_LABELS, 0)
    path = Path(path)
    vocab_path = path / "vocab.json" if path.is_dir() else path
    if not vocab_path.is_file():
        raise FileNotFoundError(
            f"vocabulary {vocab_path} does not exist; pass a tokenizer's vocab.json or the model "
            "directory that contains it."
        )
    try:
        vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"vocabulary {vocab_path} is not valid JSON ({error}).") from error
    if not isinstance(vocab, dict) or not vocab:
        raise ValueError(f"vocabulary {vocab_path} must be a non-empty JSON object token -> id.")
    ids = sorted(vocab.values())
    if ids != list(range(len(ids))):
        raise ValueError(f"vocabulary {vocab_path}: ids must be 0..{len(ids) - 1} without gaps.")
    tokens = [""] * len(ids)
    for token, index in vocab.items():
        tokens[index] = token
    blank = tokens.index("<pad>") if "<pad>" in tokens else 0
    return CTCVocabulary.from_labels(tokens, blank)

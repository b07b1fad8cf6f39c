"""Loading a KenLM model and its word list for the beam-search decoders, with checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hfspeech.decoding.lm_build import load_kenlm_model, load_unigrams_for, resolve_language_model
from hfspeech.decoding.vocabulary import CTCVocabulary, check_words_match_vocabulary


@dataclass
class LoadedLanguageModel:
    """A KenLM model checked against the acoustic vocabulary."""

    model_path: Path
    unigrams: list[str]
    kenlm_model: Any  # kenlm.Model


def load_language_model(
    lm_path: str | Path, unigrams_path: str | Path | None, vocabulary: CTCVocabulary
) -> LoadedLanguageModel:
    """Load an LM (file or `hfspeech lm build` directory) and check its words' characters.

    Raises:
        FileNotFoundError: the LM or its word list is missing.
        ValueError: kenlm cannot load the file, or the LM's words use characters outside
            the model's alphabet (the message lists them).
    """
    model_path, default_unigrams = resolve_language_model(lm_path)
    unigrams = load_unigrams_for(model_path, Path(unigrams_path) if unigrams_path else default_unigrams)
    check_words_match_vocabulary(unigrams, vocabulary, source=str(model_path))
    return LoadedLanguageModel(model_path, unigrams, load_kenlm_model(model_path))

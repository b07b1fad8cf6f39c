"""Feature extractor and tokenizer files: transformers' Wav2Vec2 classes <-> hfspeech's."""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

_FEATURE_EXTRACTOR_FIELDS = ("sampling_rate", "padding_value", "do_normalize", "return_attention_mask", "padding_side")


def _feature_extractor_fields(source_dir: Path) -> dict | None:
    """Feature-extractor settings from ``preprocessor_config.json`` or, as transformers 5
    processors save them, the ``feature_extractor`` entry of ``processor_config.json``."""
    preprocessor = source_dir / "preprocessor_config.json"
    if preprocessor.exists():
        return json.loads(preprocessor.read_text())
    processor = source_dir / "processor_config.json"
    if processor.exists():
        return json.loads(processor.read_text()).get("feature_extractor")
    return None


def convert_processing_files(source_dir: Path, output_dir: Path, to_transformers: bool = False) -> list[str]:
    """Convert ``preprocessor_config.json`` and ``vocab.json`` found in ``source_dir``.

    Returns the names of what was converted (empty when the source has neither).
    """
    converted = []
    fields = _feature_extractor_fields(source_dir)
    if fields is not None:
        kwargs = {name: fields[name] for name in _FEATURE_EXTRACTOR_FIELDS if name in fields}
        if to_transformers:
            from transformers import Wav2Vec2FeatureExtractor as FeatureExtractor
        else:
            from .feature_extraction import SpeechFeatureExtractor as FeatureExtractor
        FeatureExtractor(**kwargs).save_pretrained(output_dir)
        converted.append("feature extractor")
    vocab = source_dir / "vocab.json"
    if vocab.exists():
        settings = {}
        tokenizer_config = source_dir / "tokenizer_config.json"
        if tokenizer_config.exists():
            stored = json.loads(tokenizer_config.read_text())
            settings = {name: stored[name] for name in ("unk_token", "pad_token", "bos_token", "eos_token",
                                                        "word_delimiter_token", "do_lower_case") if name in stored}
        if to_transformers:
            from transformers import Wav2Vec2CTCTokenizer as Tokenizer
        else:
            from .tokenization import CharacterCTCTokenizer as Tokenizer
        Tokenizer(vocab_file=str(vocab), **settings).save_pretrained(output_dir)
        converted.append("tokenizer")
    if converted:
        logger.info("Converted %s from %s.", " and ".join(converted), source_dir)
    return converted

"""Audio and text in: feature extractor, character CTC tokenizer, and the processor combining them."""

from __future__ import annotations

from transformers import AutoConfig, AutoFeatureExtractor, AutoProcessor, AutoTokenizer, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .feature_extraction import WAV2VEC2_RECEPTIVE_FIELD, SpeechFeatureExtractor
from .processor import SpeechProcessor
from .tokenization import LIBRISPEECH_VOCABULARY, CharacterCTCTokenizer, build_character_vocabulary


def register_auto_classes(config_class: type[PretrainedConfig]) -> None:
    """Register the processing classes with transformers' Auto* factories for ``config_class``.

    Afterwards ``AutoFeatureExtractor``/``AutoTokenizer``/``AutoProcessor.from_pretrained(DIR)``
    return `SpeechFeatureExtractor`/`CharacterCTCTokenizer`/`SpeechProcessor` for a directory
    whose ``config.json`` has ``config_class.model_type``. ``config_class`` is also registered
    with ``AutoConfig`` if its model type is not known yet. Calling it twice is harmless.

    Raises:
        ValueError: ``config_class`` is not a ``PretrainedConfig`` subclass with a ``model_type``,
            or its model type belongs to another configuration class.
    """
    if not (isinstance(config_class, type) and issubclass(config_class, PretrainedConfig)):
        raise ValueError(f"register_auto_classes needs a PretrainedConfig subclass, got {config_class!r}.")
    model_type = getattr(config_class, "model_type", "")
    if not model_type:
        raise ValueError(f"{config_class.__name__} has no model_type: set the class attribute model_type = '...'.")
    try:
        registered = CONFIG_MAPPING[model_type]
    except KeyError:
        AutoConfig.register(model_type, config_class)
    else:
        if registered is not config_class:
            raise ValueError(f"model_type {model_type!r} is already registered for {registered.__name__}, not "
                             f"{config_class.__name__}: give {config_class.__name__} its own model_type.")
    AutoFeatureExtractor.register(config_class, SpeechFeatureExtractor, exist_ok=True)
    AutoTokenizer.register(config_class, tokenizer_class=CharacterCTCTokenizer, exist_ok=True)
    AutoProcessor.register(config_class, SpeechProcessor, exist_ok=True)


__all__ = [
    "LIBRISPEECH_VOCABULARY",
    "WAV2VEC2_RECEPTIVE_FIELD",
    "CharacterCTCTokenizer",
    "SpeechFeatureExtractor",
    "SpeechProcessor",
    "build_character_vocabulary",
    "register_auto_classes",
]

"""hfspeech: wav2vec 2.0 and HuBERT, pretraining to decoding, native to Hugging Face.

Importing the package registers its classes with transformers' Auto* factories, so
``AutoConfig``/``AutoModel``/``AutoModelForCTC``/``AutoModelForPreTraining`` and the
processing factories load saved hfspeech directories.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCTC, AutoModelForPreTraining

from .configuration import PRESET_NAMES, SpeechEncoderConfig
from .modeling.models import SpeechEncoderForCTC, SpeechEncoderModel, SpeechEncoderPreTrainedModel
from .modeling.pretraining import SpeechEncoderForPreTraining
from .processing import CharacterCTCTokenizer, SpeechFeatureExtractor, SpeechProcessor, register_auto_classes
from .decoding.processor_with_lm import SpeechProcessorWithLM  # registers it with AutoProcessor

__version__ = "0.1.0"

AutoConfig.register(SpeechEncoderConfig.model_type, SpeechEncoderConfig, exist_ok=True)
AutoModel.register(SpeechEncoderConfig, SpeechEncoderModel, exist_ok=True)
AutoModelForCTC.register(SpeechEncoderConfig, SpeechEncoderForCTC, exist_ok=True)
AutoModelForPreTraining.register(SpeechEncoderConfig, SpeechEncoderForPreTraining, exist_ok=True)
register_auto_classes(SpeechEncoderConfig)

__all__ = [
    "CharacterCTCTokenizer",
    "PRESET_NAMES",
    "SpeechEncoderConfig",
    "SpeechEncoderForCTC",
    "SpeechEncoderForPreTraining",
    "SpeechEncoderModel",
    "SpeechEncoderPreTrainedModel",
    "SpeechFeatureExtractor",
    "SpeechProcessor",
    "SpeechProcessorWithLM",
]

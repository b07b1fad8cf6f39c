"""CTC decoding: KenLM building, LM-fused beam search backends, LM-weight tuning, WER.

Modules, in the order of the data path:

* :mod:`.vocabulary` — the model's labels (``CTCVocabulary``) and text normalisation to them;
* :mod:`.lm_build` — ``build_language_model``: text -> lm.arpa, lm.bin, unigrams.txt (KenLM);
* :mod:`.decoders` — ``DecoderSpec`` + ``build_decoder``: greedy, pyctcdecode, flashlight;
* :mod:`.beam_pool` — ``DecoderPool``: persistent worker processes (any start method);
* :mod:`.emissions` — ``EmissionsCache``: log-probs + references on disk (.npz);
* :mod:`.inference` — a CTC model directory: ``compute_emissions`` over data, ``transcribe_audio_files``;
* :mod:`.evaluation` — ``evaluate_emissions``: decode an emissions cache and score it (WER/CER, speed);
* :mod:`.processor_with_lm` — ``SpeechProcessorWithLM``: the processor that decodes with the LM;
* :mod:`.simulation` — simulated emissions until real ones exist (label results "simulated");
* :mod:`.tuning` — ``tune_lm_weights``: optuna search of alpha/beta on a dev set;
* :mod:`.wer` — ``error_report`` (WER/CER, S/D/I, worst utterances), decoding speed (RTF);
* :mod:`.saving` — ``save_decoder``/``load_decoder``: the decoder inside a model directory.
"""

from .beam_pool import DecoderPool
from .decoders import BACKENDS, CTCDecoder, DecoderSpec, GreedyCTCDecoder, build_decoder
from .emissions import EmissionsCache, cached_emissions
from .evaluation import EvaluationResult, evaluate_emissions
from .inference import (LoadedCTCModel, compute_emissions, load_ctc_model, model_emissions_cache_path,
                        resolve_decoder_spec, transcribe_audio_files)
from .lm_build import LanguageModelFiles, build_language_model, find_kenlm_binary
from .processor_with_lm import SpeechProcessorWithLM, attach_language_model, load_model_decoder_spec
from .saving import load_decoder, load_decoder_spec, save_decoder
from .simulation import SimulationConfig, simulate_emissions
from .timestamps import TokenSpan, Transcription, forced_align
from .tuning import TuningResult, tune_lm_weights
from .vocabulary import DEFAULT_LABELS, CTCVocabulary, load_vocabulary
from .wer import DecodingSpeed, ErrorCounts, ErrorReport, error_report, measure_decoding_speed

__all__ = [
    "BACKENDS", "CTCDecoder", "CTCVocabulary", "DEFAULT_LABELS", "DecoderPool", "DecoderSpec", "DecodingSpeed",
    "EmissionsCache", "ErrorCounts", "ErrorReport", "EvaluationResult", "GreedyCTCDecoder", "LanguageModelFiles",
    "LoadedCTCModel", "SimulationConfig", "SpeechProcessorWithLM", "TokenSpan", "Transcription", "TuningResult",
    "attach_language_model", "build_decoder", "build_language_model", "cached_emissions", "compute_emissions",
    "error_report", "evaluate_emissions", "find_kenlm_binary", "forced_align", "load_ctc_model", "load_decoder",
    "load_decoder_spec", "load_model_decoder_spec", "load_vocabulary", "measure_decoding_speed",
    "model_emissions_cache_path", "resolve_decoder_spec", "save_decoder", "simulate_emissions",
    "transcribe_audio_files", "tune_lm_weights",
]

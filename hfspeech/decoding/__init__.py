"""CTC decoding: KenLM building, LM-fused beam search backends, LM-weight tuning, WER.

Modules, in the order of the data path:

* :mod:`.vocabulary` — the model's labels (``CTCVocabulary``) and text normalisation to them;
* :mod:`.lm_build` — ``build_language_model``: text -> lm.arpa, lm.bin, unigrams.txt (KenLM);
* :mod:`.decoders` — ``DecoderSpec`` + ``build_decoder``: greedy, pyctcdecode, flashlight;
* :mod:`.beam_pool` — ``DecoderPool``: persistent worker processes (any start method);
* :mod:`.emissions` — ``EmissionsCache``: log-probs + references on disk (.npz);
* :mod:`.simulation` — simulated emissions until real ones exist (label results "simulated");
* :mod:`.tuning` — ``tune_lm_weights``: optuna search of alpha/beta on a dev set;
* :mod:`.wer` — ``error_report`` (WER/CER, S/D/I, worst utterances), decoding speed (RTF);
* :mod:`.saving` — ``save_decoder``/``load_decoder``: the decoder inside a model directory.
"""

from hfspeech.decoding.beam_pool import DecoderPool
from hfspeech.decoding.decoders import BACKENDS, CTCDecoder, DecoderSpec, GreedyCTCDecoder, build_decoder
from hfspeech.decoding.emissions import EmissionsCache, cached_emissions
from hfspeech.decoding.lm_build import LanguageModelFiles, build_language_model, find_kenlm_binary
from hfspeech.decoding.saving import load_decoder, load_decoder_spec, save_decoder
from hfspeech.decoding.simulation import SimulationConfig, simulate_emissions
from hfspeech.decoding.timestamps import TokenSpan, Transcription, forced_align
from hfspeech.decoding.tuning import TuningResult, tune_lm_weights
from hfspeech.decoding.vocabulary import DEFAULT_LABELS, CTCVocabulary, load_vocabulary
from hfspeech.decoding.wer import DecodingSpeed, ErrorCounts, ErrorReport, error_report, measure_decoding_speed

__all__ = [
    "BACKENDS", "CTCDecoder", "CTCVocabulary", "DEFAULT_LABELS", "DecoderPool", "DecoderSpec", "DecodingSpeed",
    "EmissionsCache", "ErrorCounts", "ErrorReport", "GreedyCTCDecoder", "LanguageModelFiles", "SimulationConfig",
    "TokenSpan", "Transcription", "TuningResult", "build_decoder", "build_language_model", "cached_emissions",
    "error_report", "find_kenlm_binary", "forced_align", "load_vocabulary", "measure_decoding_speed",
    "load_decoder", "load_decoder_spec", "save_decoder", "simulate_emissions", "tune_lm_weights",
]

from hfspeech.decoding.model_emissions import (  # noqa: E402
    EvaluationResult, LoadedCTCModel, compute_emissions, evaluate_emissions, load_ctc_model,
    model_emissions_cache_path, resolve_decoder_spec, transcribe_audio_files,
)

__all__ += [
    "EvaluationResult", "LoadedCTCModel", "compute_emissions", "evaluate_emissions", "load_ctc_model",
    "model_emissions_cache_path", "resolve_decoder_spec", "transcribe_audio_files",
]

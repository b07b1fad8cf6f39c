"""`SpeechProcessorWithLM`: a `SpeechProcessor` that also holds an n-gram LM beam-search decoder.

On disk it is a model directory with, next to the processor files::

    decoder_config.json           hfspeech DecoderSpec (backend, alpha, beta, beam settings;
                                  LM paths relative to the directory)
    alphabet.json                 pyctcdecode alphabet: one label per model output
    language_model/lm.bin         the KenLM model (or lm.arpa)
    language_model/unigrams.txt   the LM's word list
    language_model/attrs.json     pyctcdecode's alpha, beta, unk_score_offset, score_boundary

``processor_config.json`` names ``SpeechProcessorWithLM``, so ``AutoProcessor.from_pretrained``
returns this class, and ``transformers.pipeline("automatic-speech-recognition", model=DIR)``
loads ``alphabet.json`` + ``language_model/`` with ``pyctcdecode.BeamSearchDecoderCTC.load_from_dir``
(transformers' ``ctc_with_lm`` path). The pipeline path therefore always uses pyctcdecode,
whatever ``decoder_config.json`` says, and pyctcdecode's own beam settings unless the call passes
``decoder_kwargs=processor.pipeline_decoder_kwargs``. pyctcdecode requires exactly three files in
``language_model/``, which is why the hfspeech spec lives in the directory root (a
``language_model/decoder_config.json`` written by :func:`hfspeech.decoding.saving.save_decoder`
is read as a fallback and replaced when this processor is saved).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
from transformers import AutoProcessor, PretrainedConfig

from ..processing.feature_extraction import SpeechFeatureExtractor
from ..processing.processor import SpeechProcessor
from ..processing.tokenization import CharacterCTCTokenizer
from .decoders import CTCDecoder, DecoderSpec, build_decoder
from .lm_build import UNIGRAMS_NAME, load_unigrams_for, resolve_language_model
from .timestamps import Transcription
from .vocabulary import CTCVocabulary, check_words_match_vocabulary

DECODER_CONFIG_FILE = "decoder_config.json"
ALPHABET_FILE = "alphabet.json"  # pyctcdecode BeamSearchDecoderCTC._ALPHABET_SERIALIZED_FILENAME
LANGUAGE_MODEL_DIRECTORY = "language_model"  # pyctcdecode BeamSearchDecoderCTC._LANGUAGE_MODEL_SERIALIZED_DIRECTORY
PYCTCDECODE_ATTRS_FILE = "attrs.json"


def load_model_decoder_spec(model_dir: str | Path) -> DecoderSpec | None:
    """The decoder saved in a model directory (``decoder_config.json``), or None when it has none.

    Raises:
        ValueError: the file is unreadable or its labels differ from the directory's vocab.json.
    """
    from hfspeech.decoding.saving import load_decoder_spec

    if not (Path(model_dir) / DECODER_CONFIG_FILE).is_file():
        return None
    return load_decoder_spec(model_dir)


def pyctcdecode_labels(vocabulary: CTCVocabulary) -> list[str]:
    """One pyctcdecode label per model output: ``""`` for the blank and the silent specials.

    pyctcdecode treats every ``""`` as a blank, so ``<s>``/``</s>``/``<unk>`` never print (as in
    the hfspeech decoders, which fold them into the blank).
    """
    return list(vocabulary.labels)


class SpeechProcessorWithLM(SpeechProcessor):
    """Feature extractor + tokenizer + an LM beam-search decoder (:class:`DecoderSpec`).

    ``processor(audio=..., sampling_rate=16000)`` prepares inputs as `SpeechProcessor` does;
    ``processor.batch_decode(logits)`` runs the saved decoder (pyctcdecode or flashlight
    KenLM beam search) on ``(batch, frames, vocab)`` logits.
    """

    def __init__(self, feature_extractor: SpeechFeatureExtractor, tokenizer: CharacterCTCTokenizer,
                 decoder_spec: DecoderSpec | None = None) -> None:
        super().__init__(feature_extractor, tokenizer)
        self._decoder_spec: DecoderSpec | None = None
        self._decoder: CTCDecoder | None = None
        if decoder_spec is not None:
            self.decoder_spec = decoder_spec

    # ------------------------------------------------------------------ decoder
    @property
    def vocabulary(self) -> CTCVocabulary:
        """The tokenizer's labels as the decoders see them."""
        return CTCVocabulary.from_tokenizer(self.tokenizer)

    @property
    def decoder_spec(self) -> DecoderSpec:
        if self._decoder_spec is None:
            raise ValueError("SpeechProcessorWithLM has no decoder; set processor.decoder_spec = DecoderSpec(...) "
                             "with lm_path, or load a directory saved with one.")
        return self._decoder_spec

    @decoder_spec.setter
    def decoder_spec(self, spec: DecoderSpec) -> None:
        vocabulary = self.vocabulary
        if tuple(spec.labels) != vocabulary.labels or spec.blank_index != vocabulary.blank_index:
            raise ValueError(
                f"decoder_spec.labels {list(spec.labels)} (blank {spec.blank_index}) differ from the tokenizer's "
                f"{list(vocabulary.labels)} (blank {vocabulary.blank_index}); build the spec with "
                "CTCVocabulary.from_tokenizer(processor.tokenizer).labels."
            )
        if spec.lm_path is not None:
            model_path, default_unigrams = resolve_language_model(spec.lm_path)
            unigrams = load_unigrams_for(model_path, Path(spec.unigrams_path) if spec.unigrams_path else default_unigrams)
            check_words_match_vocabulary(unigrams, vocabulary, source=str(model_path))
        self._decoder_spec = spec
        self._decoder = None

    @property
    def decoder(self) -> CTCDecoder:
        """The decoder built from :attr:`decoder_spec` (built once, LM loaded once)."""
        if self._decoder is None:
            self._decoder = build_decoder(self.decoder_spec)
        return self._decoder

    def set_weights(self, alpha: float, beta: float) -> None:
        """Change the LM weight and word bonus (kept when saving)."""
        self._decoder_spec = self.decoder_spec.with_weights(alpha, beta)
        if self._decoder is not None:
            self._decoder.set_weights(alpha, beta)

    @property
    def pipeline_decoder_kwargs(self) -> dict[str, Any]:
        """``decoder_kwargs`` making the ASR pipeline's pyctcdecode search use this spec's beam settings."""
        spec = self.decoder_spec
        kwargs = {"beam_width": spec.beam_width, "beam_prune_logp": spec.beam_prune_logp,
                  "token_min_logp": spec.token_min_logp}
        if spec.hotwords:
            kwargs.update(hotwords=list(spec.hotwords), hotword_weight=spec.hotword_weight)
        return kwargs

    def batch_decode(self, logits: Any, lengths: Any = None, pool: Any = None,
                     output_transcriptions: bool = False, **kwargs: Any) -> list[str] | list[Transcription]:
        """Decode a batch.

        Args:
            logits: ``(batch, frames, vocab)`` model logits (torch or numpy; log-softmax is applied
                here), or ``(batch, frames)`` integer token ids, which go to the tokenizer (greedy).
            lengths: ``(batch,)`` valid frames per utterance (``model.frame_lengths(attention_mask.sum(-1))``);
                None: every frame is valid.
            pool: a :class:`~hfspeech.decoding.DecoderPool` built from the same spec, to decode in processes.
            output_transcriptions: return :class:`Transcription` objects (text, score, word/char timestamps).

        Returns:
            ``batch`` strings (or Transcriptions).
        """
        array = logits.detach().cpu().numpy() if hasattr(logits, "detach") else np.asarray(logits)
        if array.ndim == 2 and np.issubdtype(array.dtype, np.integer):
            if output_transcriptions:
                raise ValueError("batch_decode: token ids carry no scores; pass logits for Transcriptions.")
            return self.tokenizer.batch_decode(logits, **kwargs)
        if kwargs:
            raise ValueError(f"batch_decode: unexpected argument(s) {sorted(kwargs)} for logits.")
        if array.ndim != 3:
            raise ValueError(f"batch_decode: logits must have shape (batch, frames, vocab), got {array.shape}.")
        array = array.astype(np.float32)
        log_probs = array - np.logaddexp.reduce(array, axis=-1, keepdims=True)
        if pool is not None:
            if pool.spec != self.decoder_spec:
                raise ValueError("batch_decode: the pool was built from another DecoderSpec than this processor's; "
                                 "build it with DecoderPool(processor.decoder_spec, ...).")
            results = pool.decode_batch(log_probs, lengths)
        else:
            results = self.decoder.decode_batch(log_probs, lengths)
        return results if output_transcriptions else [result.text for result in results]

    def decode(self, logits: Any, **kwargs: Any) -> str | Transcription:
        """Decode one utterance: ``(frames, vocab)`` logits, or ``(frames,)`` token ids (greedy)."""
        array = logits.detach().cpu().numpy() if hasattr(logits, "detach") else np.asarray(logits)
        if array.ndim == 1:
            return self.tokenizer.decode(logits, **kwargs)
        return self.batch_decode(array[None], **kwargs)[0]

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> list[str]:
        """Write the processor files, ``decoder_config.json``, ``alphabet.json`` and ``language_model/``."""
        spec = self.decoder_spec
        if spec.lm_path is None:
            raise ValueError("SpeechProcessorWithLM.save_pretrained: the decoder has no LM (lm_path); save a plain "
                             "SpeechProcessor instead.")
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = super().save_pretrained(str(directory), **kwargs)
        # transformers' pipeline looks for "processor_class" ending in "WithLM" in the feature
        # extractor's own settings (the nested dict) before it loads the pyctcdecode decoder.
        config_path = directory / "processor_config.json"
        processor_config = json.loads(config_path.read_text(encoding="utf-8"))
        processor_config["feature_extractor"]["processor_class"] = type(self).__name__
        config_path.write_text(json.dumps(processor_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")

        model_path, default_unigrams = resolve_language_model(spec.lm_path)
        unigrams = load_unigrams_for(model_path, Path(spec.unigrams_path) if spec.unigrams_path else default_unigrams)
        lm_directory = directory / LANGUAGE_MODEL_DIRECTORY
        lm_directory.mkdir(exist_ok=True)
        target = lm_directory / ("lm.arpa" if model_path.suffix == ".arpa" else "lm.bin")
        if model_path.resolve() != target.resolve():
            temporary = target.with_name(target.name + ".partial")
            shutil.copyfile(model_path, temporary)
            os.replace(temporary, target)
        keep = {target.name, UNIGRAMS_NAME, PYCTCDECODE_ATTRS_FILE}
        for stale in lm_directory.iterdir():
            if stale.name in keep or stale.name.startswith("."):
                continue
            if stale.suffix in (".bin", ".arpa", ".binary"):
                stale.unlink()  # replaced by the files written here (pyctcdecode allows exactly three)
            else:
                raise ValueError(f"{stale}: unexpected file in {lm_directory}; pyctcdecode's loader accepts only "
                                 f"{sorted(keep)} there. Move it elsewhere.")
        (lm_directory / UNIGRAMS_NAME).write_text("\n".join(unigrams) + "\n", encoding="utf-8")
        (lm_directory / PYCTCDECODE_ATTRS_FILE).write_text(json.dumps({
            "alpha": spec.alpha, "beta": spec.beta, "unk_score_offset": spec.unk_score_offset,
            "score_boundary": True}), encoding="utf-8")
        (directory / ALPHABET_FILE).write_text(json.dumps(
            {"labels": pyctcdecode_labels(self.vocabulary), "is_bpe": False}), encoding="utf-8")
        saved = replace(spec, lm_path=f"{LANGUAGE_MODEL_DIRECTORY}/{target.name}",
                        unigrams_path=f"{LANGUAGE_MODEL_DIRECTORY}/{UNIGRAMS_NAME}")
        config = asdict(saved)
        config["labels"], config["hotwords"] = list(saved.labels), list(saved.hotwords)
        (directory / DECODER_CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
        return [*files, str(directory / DECODER_CONFIG_FILE), str(directory / ALPHABET_FILE)]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> "SpeechProcessorWithLM":
        """Load the processor and its decoder spec (``decoder_config.json``) from a directory or a Hub repo id
        (its processor files, decoder config and ``language_model/`` are downloaded with ``snapshot_download``).

        Raises:
            FileNotFoundError: the directory has no saved decoder (load ``SpeechProcessor`` instead).
        """
        directory = _local_model_directory(pretrained_model_name_or_path, kwargs)
        spec = load_model_decoder_spec(directory)
        if spec is None:
            raise FileNotFoundError(
                f"{pretrained_model_name_or_path}/{DECODER_CONFIG_FILE} does not exist: this directory has no "
                "saved decoder. Load it with SpeechProcessor/AutoProcessor, or add an LM with "
                "hfspeech.decoding.attach_language_model (or `hfspeech lm tune MODEL DATA --lm LM_DIR`)."
            )
        processor = super().from_pretrained(str(directory), **kwargs)
        processor.decoder_spec = spec
        return processor


# Files of a model repo that a SpeechProcessorWithLM needs (the weights are not downloaded).
PROCESSOR_REPO_PATTERNS = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json", "vocab.json",
                           "special_tokens_map.json", "added_tokens.json", DECODER_CONFIG_FILE, ALPHABET_FILE,
                           f"{LANGUAGE_MODEL_DIRECTORY}/*")


def _local_model_directory(name_or_path: str | os.PathLike, kwargs: dict[str, Any]) -> Path:
    """``name_or_path`` itself when it is a directory, else the Hub snapshot of the processor + LM files."""
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(
        str(name_or_path), allow_patterns=list(PROCESSOR_REPO_PATTERNS), revision=kwargs.get("revision"),
        token=kwargs.get("token"), cache_dir=kwargs.get("cache_dir"),
        local_files_only=bool(kwargs.get("local_files_only", False))))


def attach_language_model(model_dir: str | Path, spec: DecoderSpec) -> SpeechProcessorWithLM:
    """Save ``spec`` (with its LM) into a model directory, turning its processor into a `SpeechProcessorWithLM`.

    Afterwards ``AutoProcessor.from_pretrained(model_dir)`` returns the LM processor and the ASR
    pipeline decodes with the LM.
    """
    base = SpeechProcessor.from_pretrained(str(model_dir))
    processor = SpeechProcessorWithLM(base.feature_extractor, base.tokenizer, spec)
    processor.save_pretrained(model_dir)
    return processor


class _ProcessorWithLMConfig(PretrainedConfig):
    """Registration key only: AutoProcessor resolves the ``processor_class`` named in
    processor_config.json among registered processor classes, one per config class."""

    model_type = "hfspeech_processor_with_lm"


AutoProcessor.register(_ProcessorWithLMConfig, SpeechProcessorWithLM, exist_ok=True)

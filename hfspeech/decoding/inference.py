"""Inference with a CTC model directory: its emissions over a data source (-> :class:`EmissionsCache`),
the decoder it is used with, and transcripts of audio files. Scoring is `hfspeech.decoding.evaluation`.

This is the expensive step of decoding; LM-weight tuning and evaluation reuse its result
(:func:`model_emissions_cache_path` + :func:`hfspeech.decoding.emissions.cached_emissions`).

Utterances are sorted by length and batched up to ``batch_seconds`` of padded audio, so
little compute goes to padding; the cache keeps the data source's order. Every utterance
is run with its attention mask and cut to its valid frames (``model.frame_lengths``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from hfspeech.data.records import plain_column
from hfspeech.decoding.decoders import DecoderSpec, build_decoder
from hfspeech.decoding.emissions import EmissionsCache
from hfspeech.decoding.timestamps import Transcription
from hfspeech.decoding.vocabulary import CTCVocabulary, load_vocabulary

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
EMISSIONS_DIRECTORY = "emissions"


@dataclass
class LoadedCTCModel:
    """A CTC model directory loaded for inference."""

    directory: Path
    model: Any  # hfspeech.SpeechEncoderForCTC, in eval mode
    processor: Any  # hfspeech.SpeechProcessor
    vocabulary: CTCVocabulary
    seconds_per_frame: float


def load_ctc_model(model_dir: str | Path, device: str | torch.device = "cpu") -> LoadedCTCModel:
    """Load model, processor and vocabulary from a directory written by ``run_finetuning``.

    Raises:
        FileNotFoundError: the directory or its config.json / vocab.json is missing.
        ValueError: the model's output size differs from the vocabulary size.
    """
    from hfspeech.modeling.models import SpeechEncoderForCTC
    from hfspeech.processing.processor import SpeechProcessor

    directory = Path(model_dir)
    for name in ("config.json", "vocab.json"):
        if not (directory / name).is_file():
            raise FileNotFoundError(
                f"{directory / name} does not exist: {directory} is not a CTC model directory. Pass the "
                "output of `hfspeech finetune` (e.g. RUN/final), which holds config.json, the weights and vocab.json."
            )
    model = SpeechEncoderForCTC.from_pretrained(str(directory)).to(device).eval()
    processor = SpeechProcessor.from_pretrained(str(directory))
    vocabulary = load_vocabulary(directory)
    if model.config.vocab_size != vocabulary.size:
        raise ValueError(
            f"{directory}: config.json has vocab_size={model.config.vocab_size} but vocab.json has "
            f"{vocabulary.size} tokens; save the model and tokenizer of the same run."
        )
    stride = int(np.prod(model.config.conv_stride))
    return LoadedCTCModel(directory, model, processor, vocabulary, stride / SAMPLE_RATE)


def log_probs_for_audio(loaded: LoadedCTCModel, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run the model on one padded batch.

    Args:
        waveforms: B mono float32 arrays of shape (S_b,) at 16 kHz, each non-empty.

    Returns:
        B arrays of shape (T_b, V): log-softmax outputs cut to each utterance's valid frames.
    """
    inputs = loaded.processor.feature_extractor(
        list(waveforms), sampling_rate=SAMPLE_RATE, padding="longest", return_attention_mask=True,
        return_tensors="pt",
    )
    device = next(loaded.model.parameters()).device
    input_values = inputs["input_values"].to(device)
    attention_mask = inputs["attention_mask"].to(device)
    with torch.inference_mode():
        logits = loaded.model(input_values, attention_mask=attention_mask).logits
        log_probs = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
    frames = loaded.model.frame_lengths(attention_mask.sum(-1)).cpu().tolist()
    return [log_probs[index, : int(count)] for index, count in enumerate(frames)]


def _check_waveform(audio: Any, name: str) -> np.ndarray:
    if isinstance(audio, dict):
        rate = audio.get("sampling_rate", SAMPLE_RATE)
        if rate != SAMPLE_RATE:
            raise ValueError(f"utterance {name!r}: audio at {rate} Hz; the model needs {SAMPLE_RATE} Hz. "
                             "Load the data with hfspeech.data.load_source, which resamples to 16 kHz.")
        audio = audio["array"]
    waveform = np.asarray(audio, dtype=np.float32)
    if waveform.ndim != 1:
        raise ValueError(f"utterance {name!r}: audio has shape {waveform.shape}; expected mono (samples,).")
    if waveform.size == 0:
        raise ValueError(f"utterance {name!r}: the audio is empty (0 samples); remove it from the data.")
    return waveform


def compute_emissions(
    model: str | Path | LoadedCTCModel,
    data: str | Any,
    batch_seconds: float = 60.0,
    max_batch_size: int = 16,
    device: str | torch.device = "cpu",
    require_transcripts: bool = False,
) -> EmissionsCache:
    """Emissions of a CTC model for every utterance of a data source.

    Args:
        model: model directory (see :func:`load_ctc_model`) or an already loaded model.
        data: a ``hfspeech.data.load_source`` spec (directory, manifest, ``librispeech:...``) or a
            map-style dataset with columns ``audio`` (16 kHz float32), ``id`` and optionally ``text``.
        batch_seconds: most padded audio seconds per forward pass.
        max_batch_size: most utterances per forward pass.
        require_transcripts: raise ValueError when an utterance has no transcript (evaluation).

    Returns:
        An :class:`EmissionsCache` in the data's order; ``metadata`` holds the model and data paths
        and ``model_seconds`` (wall-clock time of the forward passes, for end-to-end RTF).
    """
    if batch_seconds <= 0 or max_batch_size < 1:
        raise ValueError(f"compute_emissions: batch_seconds={batch_seconds} must be > 0 and "
                         f"max_batch_size={max_batch_size} >= 1.")
    loaded = model if isinstance(model, LoadedCTCModel) else load_ctc_model(model, device)
    if isinstance(data, (str, Path)):
        from hfspeech.data import load_source

        dataset = load_source(str(data))
        data_name = str(data)
    else:
        dataset, data_name = data, "dataset"
    if len(dataset) == 0:
        raise ValueError(f"{data_name}: the data source holds no utterances.")
    columns = set(dataset.column_names)
    if "audio" not in columns:
        raise ValueError(f"{data_name}: no 'audio' column (found {sorted(columns)}); load it with hfspeech.data.load_source.")
    texts = plain_column(dataset, "text") if "text" in columns else [""] * len(dataset)
    texts = ["" if text is None else str(text) for text in texts]
    ids = [str(name) for name in plain_column(dataset, "id")] if "id" in columns else [str(i) for i in range(len(dataset))]
    if require_transcripts:
        missing = [ids[i] for i, text in enumerate(texts) if not text.strip()]
        if missing:
            raise ValueError(
                f"{data_name}: {len(missing)} of {len(texts)} utterances have no transcript (e.g. {missing[:5]}); "
                "evaluation needs a reference for every utterance: use a source with a 'text' column "
                "(audiofolder metadata.csv, LibriSpeech .trans.txt, a manifest with text)."
            )
    durations = plain_column(dataset, "duration") if "duration" in columns else None
    order = np.argsort(-np.asarray(durations, dtype=np.float64), kind="stable") if durations is not None \
        else np.arange(len(dataset))

    results: list[np.ndarray | None] = [None] * len(dataset)
    model_seconds = 0.0
    audio_samples = 0
    progress = tqdm(total=len(dataset), desc="emissions", unit=" utt")
    batch: list[int] = []
    batch_waveforms: list[np.ndarray] = []

    def flush() -> None:
        nonlocal model_seconds
        start = time.perf_counter()
        outputs = log_probs_for_audio(loaded, batch_waveforms)
        model_seconds += time.perf_counter() - start
        for index, output in zip(batch, outputs):
            results[index] = output
        progress.update(len(batch))
        batch.clear()
        batch_waveforms.clear()

    for index in order.tolist():
        waveform = _check_waveform(dataset[index]["audio"], ids[index])
        audio_samples += waveform.size
        longest = max([len(w) for w in batch_waveforms] + [waveform.size])
        if batch and (longest * (len(batch) + 1) > batch_seconds * SAMPLE_RATE or len(batch) >= max_batch_size):
            flush()
        batch.append(index)
        batch_waveforms.append(waveform)
    if batch:
        flush()
    progress.close()
    audio_seconds = audio_samples / SAMPLE_RATE
    logger.info("emissions of %d utterances (%.1f s of audio) in %.2f s", len(results), audio_seconds, model_seconds)
    return EmissionsCache(
        log_probs=results, references=texts, utterance_ids=ids, vocabulary=loaded.vocabulary,
        seconds_per_frame=loaded.seconds_per_frame,
        metadata={"source": "model", "model": str(loaded.directory), "data": data_name,
                  "model_seconds": model_seconds, "audio_seconds": audio_seconds, "device": str(device)},
    )


def model_emissions_cache_path(model_dir: str | Path, data: str, cache_dir: str | Path | None = None) -> Path:
    """Where the emissions of ``model_dir`` on ``data`` are cached.

    Default: ``MODEL_DIR/emissions/<data name>-<hash>.npz``; the hash covers the data spec and the
    model weights' modification time, so retraining the model in place computes them again.
    """
    directory = Path(cache_dir) if cache_dir is not None else Path(model_dir) / EMISSIONS_DIRECTORY
    weights = [p for p in sorted(Path(model_dir).glob("*.safetensors")) + sorted(Path(model_dir).glob("*.bin"))]
    stamp = ";".join(f"{p.name}:{p.stat().st_mtime_ns}" for p in weights)
    key = hashlib.sha1(f"{Path(data).resolve() if Path(data).exists() else data}|{stamp}".encode()).hexdigest()[:12]
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(str(data)).name)[:40] or "data"
    return directory / f"{name}-{key}.npz"


def resolve_decoder_spec(
    model_dir: str | Path,
    vocabulary: CTCVocabulary,
    seconds_per_frame: float,
    lm: str | Path | None = None,
    backend: str | None = None,
    **overrides: Any,
) -> DecoderSpec:
    """The decoder to use for a model: ``lm`` if given, else the one saved in the model directory, else greedy.

    Args:
        lm: LM directory from ``hfspeech lm build`` (or an lm.bin/lm.arpa); its words are checked
            against the model's alphabet when the decoder is built.
        backend: override the backend ("greedy", "pyctcdecode", "flashlight"); default: the saved
            spec's, "flashlight" for ``lm``, "greedy" without any LM.
        overrides: other :class:`DecoderSpec` fields (alpha, beta, beam_width, ...); None values are ignored.
    """
    from dataclasses import replace

    from hfspeech.decoding.processor_with_lm import load_model_decoder_spec

    overrides = {key: value for key, value in overrides.items() if value is not None}
    saved = load_model_decoder_spec(model_dir)
    if lm is not None:
        spec = DecoderSpec(vocabulary.labels, backend or "flashlight", vocabulary.blank_index, lm_path=str(lm),
                           seconds_per_frame=seconds_per_frame)
    elif saved is not None:
        spec = replace(saved, backend=backend or saved.backend)
    else:
        spec = DecoderSpec(vocabulary.labels, backend or "greedy", vocabulary.blank_index,
                           seconds_per_frame=seconds_per_frame)
    if spec.labels != vocabulary.labels:
        raise ValueError(f"{model_dir}: the saved decoder's labels differ from the model's vocab.json; save it again.")
    return replace(spec, **overrides) if overrides else spec


def transcribe_audio_files(model: str | Path | LoadedCTCModel, paths: Sequence[str | Path], spec: DecoderSpec,
                           device: str | torch.device = "cpu") -> list[Transcription]:
    """Transcribe audio files one by one (no padding effects) with a decoder.

    Files not at 16 kHz are resampled and multi-channel files down-mixed to mono; each of the two
    is reported once for the run (the first file it happens to), as data sources report it.

    Raises:
        FileNotFoundError: a file does not exist.
        ValueError: a file is empty, unreadable, or shorter than one model frame.
    """
    from hfspeech.data.audio import ConversionLog, decode_audio

    loaded = model if isinstance(model, LoadedCTCModel) else load_ctc_model(model, device)
    decoder = build_decoder(spec)
    minimum = loaded.processor.feature_extractor.min_num_samples
    conversions = ConversionLog("transcribe")
    results = []
    for path in tqdm(paths, desc="transcribing", unit=" file", disable=len(paths) < 2):
        waveform, native = decode_audio(str(path))
        conversions.observe(native, str(path))
        if waveform.size < minimum:
            raise ValueError(f"{path}: {waveform.size} samples ({waveform.size / SAMPLE_RATE:.3f} s) is shorter than "
                             f"the model's receptive field ({minimum} samples); the audio is (nearly) empty.")
        log_probs = log_probs_for_audio(loaded, [waveform])[0]
        results.append(decoder.decode(log_probs))
    return results

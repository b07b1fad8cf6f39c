"""What a model directory holds, which of its files get uploaded, and what is missing from it.

A complete hfspeech model directory, as `hfspeech finetune`/`pretrain`, `lm tune`, `labels fit` and
`evaluate --save` leave it::

    config.json                     SpeechEncoderConfig (architectures: SpeechEncoderForCTC / ForPreTraining)
    model.safetensors               weights (or model.safetensors.index.json + its shards)
    processor_config.json           SpeechProcessor / SpeechProcessorWithLM, with the SpeechFeatureExtractor
                                    settings nested (or a separate preprocessor_config.json)
    vocab.json, tokenizer_config.json, special_tokens_map.json   CharacterCTCTokenizer (CTC models)
    decoder_config.json, alphabet.json, language_model/          the LM decoder (hfspeech.decoding.saving)
    kmeans/                         HuBERT k-means: kmeans.json + centroids.safetensors (or k{K}/ sub-dirs)
    evaluation/*.json               results of `hfspeech evaluate --save`
    training_config.json, dev_metrics.json   written by the training loops

Caches and scratch (``emissions/``, ``checkpoints/``, ``runs/``, hidden files, ``*.partial``) are
never uploaded; a local ``README.md`` is replaced by the generated model card.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
FEATURE_EXTRACTOR_FILE = "preprocessor_config.json"  # transformers 5 nests it in processor_config.json
PROCESSOR_FILE = "processor_config.json"
TOKENIZER_FILES = ("vocab.json", "tokenizer_config.json")
DECODER_CONFIG_FILE = "decoder_config.json"
KMEANS_DIRECTORY = "kmeans"
EVALUATION_DIRECTORY = "evaluation"
TRAINING_CONFIG_FILE = "training_config.json"
DEV_METRICS_FILE = "dev_metrics.json"
CARD_FILE = "README.md"
EXCLUDED_DIRECTORIES = frozenset({"emissions", "checkpoints", "runs", "__pycache__"})


class IncompleteModelDirectoryError(FileNotFoundError):
    """A model directory lacks files that a complete upload needs (raised before any network call)."""

    def __init__(self, directory: Path, missing: list[str]) -> None:
        self.directory, self.missing = directory, missing
        lines = "\n".join(f"  - {item}" for item in missing)
        super().__init__(f"{directory} is not a complete model directory; missing:\n{lines}")


@dataclass
class ModelDirectory:
    """The inspected contents of a model directory.

    Attributes:
        path: the directory.
        config: ``config.json`` as a dict.
        files: relative POSIX paths of the files to upload (sorted; README.md excluded).
        is_ctc: the model is a `SpeechEncoderForCTC` (needs a tokenizer).
        decoder: ``decoder_config.json`` as a dict, or None.
        kmeans: ``kmeans.json`` contents of each k-means model (relative directory -> metadata).
        evaluations: the saved ``evaluation/*.json`` results.
        training_config: ``training_config.json``, or None.
        dev_metrics: ``dev_metrics.json``, or None.
    """

    path: Path
    config: dict[str, Any]
    files: list[str]
    is_ctc: bool
    decoder: dict[str, Any] | None = None
    kmeans: dict[str, dict[str, Any]] = field(default_factory=dict)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    training_config: dict[str, Any] | None = None
    dev_metrics: dict[str, Any] | None = None

    @property
    def objective(self) -> str:
        return str(self.config.get("objective", "wav2vec2"))


def _read_json(path: Path, missing: list[str], what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        missing.append(f"{path.name}: unreadable {what} ({error}); write it again")
        return None


def uploadable_files(directory: Path) -> list[str]:
    """Relative paths of the files of ``directory`` that belong in the repo (caches and scratch left out)."""
    files = []
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        if relative.parts[0] in EXCLUDED_DIRECTORIES or path.name.endswith(".partial") or relative.as_posix() == CARD_FILE:
            continue
        if any(part.endswith(".partial") for part in relative.parts[:-1]):
            continue
        files.append(relative.as_posix())
    return files


def _check_weights(directory: Path, files: list[str], missing: list[str]) -> None:
    if WEIGHTS_FILE in files:
        return
    if WEIGHTS_INDEX_FILE in files:
        index = _read_json(directory / WEIGHTS_INDEX_FILE, missing, "weights index") or {}
        shards = sorted(set(index.get("weight_map", {}).values()))
        missing += [f"{shard} (listed in {WEIGHTS_INDEX_FILE})" for shard in shards if shard not in files]
        return
    hint = (" (pytorch_model.bin found: load the model and save it again with save_pretrained, which writes "
            "safetensors)" if (directory / "pytorch_model.bin").is_file() else "")
    missing.append(f"{WEIGHTS_FILE}: the model weights{hint}; save the model with model.save_pretrained(DIR)")


def _check_decoder(directory: Path, files: list[str], missing: list[str]) -> dict[str, Any] | None:
    decoder = _read_json(directory / DECODER_CONFIG_FILE, missing, "decoder config")
    if decoder is None:
        return None
    for key in ("lm_path", "unigrams_path"):
        value = decoder.get(key)
        if not value:
            continue
        if Path(value).is_absolute() or value.startswith(".."):
            missing.append(f"{DECODER_CONFIG_FILE}: {key} {value!r} points outside the model directory; save the "
                           "LM into it with attach_language_model(DIR, spec) or `hfspeech lm tune DIR DATA --lm LM_DIR`")
        elif value not in files:
            missing.append(f"{value} (the LM file named by {key} in {DECODER_CONFIG_FILE}); save the LM again with "
                           "attach_language_model(DIR, spec) or `hfspeech lm tune DIR DATA --lm LM_DIR`")
    return decoder


def _check_kmeans(directory: Path, files: list[str], missing: list[str]) -> dict[str, dict[str, Any]]:
    from hfspeech.labels.kmeans import CENTROIDS_FILE, METADATA_FILE

    models = {}
    for name in files:
        parts = name.split("/")
        if parts[0] != KMEANS_DIRECTORY or parts[-1] != METADATA_FILE:
            continue
        folder = "/".join(parts[:-1])
        if f"{folder}/{CENTROIDS_FILE}" not in files:
            missing.append(f"{folder}/{CENTROIDS_FILE} (the centroids of {name}); copy the whole directory written "
                           "by `hfspeech labels fit`")
        metadata = _read_json(directory / name, missing, "k-means metadata")
        if metadata is not None:
            models[folder] = metadata
    if any(name.startswith(f"{KMEANS_DIRECTORY}/") for name in files) and not models:
        missing.append(f"{KMEANS_DIRECTORY}/kmeans.json: {KMEANS_DIRECTORY}/ holds no k-means model written by "
                       "`hfspeech labels fit`")
    return models


def inspect_model_directory(directory: str | Path) -> ModelDirectory:
    """Inspect ``directory`` and check that it is complete; nothing is sent anywhere.

    Raises:
        FileNotFoundError: the directory does not exist.
        IncompleteModelDirectoryError: (a FileNotFoundError) listing every missing piece — weights,
            config, feature extractor, tokenizer of a CTC model, LM files named by decoder_config.json,
            k-means centroids.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory {directory} does not exist; pass the directory written by "
                                "save_pretrained (e.g. RUN/final)")
    files = uploadable_files(directory)
    missing: list[str] = []
    config: dict[str, Any] = {}
    if CONFIG_FILE not in files:
        missing.append(f"{CONFIG_FILE}: the model configuration; save the model with model.save_pretrained(DIR)")
    else:
        config = _read_json(directory / CONFIG_FILE, missing, "model config") or {}
    _check_weights(directory, files, missing)
    architectures = config.get("architectures") or []
    is_ctc = any(name.endswith("ForCTC") for name in architectures) or "vocab.json" in files
    if is_ctc:
        processor = (_read_json(directory / PROCESSOR_FILE, missing, "processor config") or {}
                     if PROCESSOR_FILE in files else {})
        if FEATURE_EXTRACTOR_FILE not in files and "feature_extractor" not in processor:
            missing.append(f"{PROCESSOR_FILE} (or {FEATURE_EXTRACTOR_FILE}): the feature extractor; save the processor with "
                           "processor.save_pretrained(DIR)")
        missing += [f"{name}: the CTC tokenizer; save the processor with processor.save_pretrained(DIR)"
                    for name in TOKENIZER_FILES if name not in files]
    decoder = _check_decoder(directory, files, missing) if DECODER_CONFIG_FILE in files else None
    kmeans = _check_kmeans(directory, files, missing)
    if missing:
        raise IncompleteModelDirectoryError(directory, missing)
    evaluations = [json.loads((directory / name).read_text(encoding="utf-8")) for name in files
                   if name.startswith(f"{EVALUATION_DIRECTORY}/") and name.endswith(".json")]
    optional = {name: json.loads((directory / name).read_text(encoding="utf-8"))
                for name in (TRAINING_CONFIG_FILE, DEV_METRICS_FILE) if name in files}
    return ModelDirectory(directory, config, files, is_ctc, decoder, kmeans, evaluations,
                          optional.get(TRAINING_CONFIG_FILE), optional.get(DEV_METRICS_FILE))

"""Save a decoder (LM files, alpha/beta, beam settings) inside a model directory, and load it.

Layout added to a model directory::

    MODEL_DIR/decoder_config.json                  DecoderSpec fields (paths relative to MODEL_DIR)
    MODEL_DIR/language_model/lm.bin                the KenLM model (binary or ARPA, copied)
    MODEL_DIR/language_model/unigrams.txt          the word list

The directory can be moved or uploaded as a whole: paths are stored relative to it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, fields
from pathlib import Path

from hfspeech.decoding.decoders import CTCDecoder, DecoderSpec, build_decoder
from hfspeech.decoding.lm_build import UNIGRAMS_NAME, load_unigrams_for, resolve_language_model
from hfspeech.decoding.vocabulary import load_vocabulary

DECODER_DIRECTORY = "language_model"
DECODER_CONFIG_NAME = "decoder_config.json"


def save_decoder(spec: DecoderSpec, model_dir: str | Path) -> Path:
    """Copy the spec's LM and word list into ``model_dir/language_model`` and write its config.

    Returns:
        The ``language_model`` directory.
    """
    directory = Path(model_dir) / DECODER_DIRECTORY
    directory.mkdir(parents=True, exist_ok=True)
    config = asdict(spec)
    config["labels"] = list(spec.labels)
    config["hotwords"] = list(spec.hotwords)
    if spec.lm_path is not None:
        model_path, default_unigrams = resolve_language_model(spec.lm_path)
        unigrams = load_unigrams_for(model_path, Path(spec.unigrams_path) if spec.unigrams_path else default_unigrams)
        target = directory / model_path.name
        if model_path.resolve() != target.resolve():
            shutil.copyfile(model_path, target)
        (directory / UNIGRAMS_NAME).write_text("\n".join(unigrams) + "\n", encoding="utf-8")
        config["lm_path"] = f"{DECODER_DIRECTORY}/{target.name}"
        config["unigrams_path"] = f"{DECODER_DIRECTORY}/{UNIGRAMS_NAME}"
    # The config sits beside the model (not inside language_model/, which pyctcdecode's loader
    # requires to hold only the LM, unigrams.txt and attrs.json), paths relative to model_dir.
    (Path(model_dir) / DECODER_CONFIG_NAME).write_text(json.dumps(config, indent=2), encoding="utf-8")
    return directory


def load_decoder_spec(model_dir: str | Path) -> DecoderSpec:
    """Read the spec saved by :func:`save_decoder`; check it against the model's vocab.json if present."""
    model_dir = Path(model_dir)
    config_path = model_dir / DECODER_CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} does not exist: this model directory has no saved decoder. Save one with "
            "hfspeech.decoding.saving.save_decoder(spec, model_dir)."
        )
    config = json.loads(config_path.read_text(encoding="utf-8"))
    known = {field.name for field in fields(DecoderSpec)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"{config_path}: unknown fields {unknown}; it was written by another hfspeech version.")
    for key in ("lm_path", "unigrams_path"):
        if config.get(key):
            config[key] = str(model_dir / config[key])
    spec = DecoderSpec(**config)
    if (model_dir / "vocab.json").is_file():
        vocabulary = load_vocabulary(model_dir)
        if vocabulary.labels != spec.labels:
            raise ValueError(
                f"{config_path}: the decoder's labels {list(spec.labels)} differ from the model's vocab.json "
                f"{list(vocabulary.labels)}; save the decoder again with the model's vocabulary."
            )
    return spec


def load_decoder(model_dir: str | Path) -> CTCDecoder:
    """Build the decoder saved in ``model_dir``."""
    return build_decoder(load_decoder_spec(model_dir))

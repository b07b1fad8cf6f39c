"""transformers Wav2Vec2 / HuBERT checkpoints <-> hfspeech checkpoints.

Supported sources: ``Wav2Vec2Model``, ``Wav2Vec2ForCTC``, ``Wav2Vec2ForPreTraining``,
``HubertModel``, ``HubertForCTC`` in both layouts (group-norm feature encoder + post-LN
Transformer as in facebook/wav2vec2-base and hubert-base-ls960; layer-norm + pre-LN as in
wav2vec2-large-lv60 and hubert-large-ll60k). The conversion renames parameters (see
``_BACKBONE_RENAMES``) and maps config fields; no weight is changed, so outputs agree to float
precision on unpadded input. (On *padded* input our group-norm models are exact and
transformers' are not: transformers issue 21534.)
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch

from ..configuration import SpeechEncoderConfig

logger = logging.getLogger(__name__)

# (transformers class, hfspeech class, transformers base prefix)
_SUPPORTED_ARCHITECTURES = {
    "Wav2Vec2Model": ("SpeechEncoderModel", "wav2vec2"),
    "Wav2Vec2ForCTC": ("SpeechEncoderForCTC", "wav2vec2"),
    "Wav2Vec2ForPreTraining": ("SpeechEncoderForPreTraining", "wav2vec2"),
    "HubertModel": ("SpeechEncoderModel", "hubert"),
    "HubertForCTC": ("SpeechEncoderForCTC", "hubert"),
}

# Parameter names, transformers (left) <-> hfspeech (right), "{n}" = a layer index.
_BACKBONE_RENAMES: list[tuple[str, str]] = [
    ("feature_extractor.conv_layers.{n}.conv.", "feature_encoder.conv_layers.{n}.conv."),
    ("feature_extractor.conv_layers.{n}.layer_norm.", "feature_encoder.conv_layers.{n}.norm."),
    ("encoder.pos_conv_embed.conv.", "encoder.pos_conv.conv."),
    ("encoder.layers.{n}.layer_norm.", "encoder.layers.{n}.attention_norm."),
    ("encoder.layers.{n}.final_layer_norm.", "encoder.layers.{n}.feed_forward_norm."),
    ("encoder.layers.{n}.feed_forward.intermediate_dense.", "encoder.layers.{n}.feed_forward.intermediate."),
    ("encoder.layers.{n}.feed_forward.output_dense.", "encoder.layers.{n}.feed_forward.output."),
]
_HEAD_RENAMES: list[tuple[str, str]] = [
    ("quantizer.", "objective.quantizer."),
    ("project_hid.", "objective.project_hid."),
    ("project_q.", "objective.project_q."),
]
# Config fields with the same meaning and name on both sides.
_SHARED_CONFIG_FIELDS = (
    "conv_dim", "conv_kernel", "conv_stride", "conv_bias", "feat_extract_norm", "hidden_size",
    "num_hidden_layers", "num_attention_heads", "intermediate_size", "num_conv_pos_embeddings",
    "num_conv_pos_embedding_groups", "hidden_dropout", "attention_dropout", "activation_dropout",
    "feat_proj_dropout", "feat_quantizer_dropout", "layerdrop", "layer_norm_eps", "initializer_range",
    "apply_spec_augment", "mask_time_prob", "mask_time_length", "mask_time_min_masks",
    "mask_feature_prob", "mask_feature_length", "mask_feature_min_masks", "num_codevector_groups",
    "num_codevectors_per_group", "codevector_dim", "proj_codevector_dim", "num_negatives",
    "contrastive_logits_temperature", "diversity_loss_weight", "vocab_size", "final_dropout",
    "ctc_loss_reduction", "ctc_zero_infinity", "pad_token_id", "bos_token_id", "eos_token_id",
)


def _rename(key: str, rules: list[tuple[str, str]], reverse: bool = False) -> str:
    """Apply the first matching prefix rule (transformers -> hfspeech, or back with ``reverse``)."""
    for transformers_name, hfspeech_name in rules:
        source, target = (hfspeech_name, transformers_name) if reverse else (transformers_name, hfspeech_name)
        pattern = "^" + re.escape(source).replace(re.escape("{n}"), r"(\d+)")
        new_key, count = re.subn(pattern, target.replace("{n}", r"\1"), key)
        if count:
            return new_key
    return key


def _normalise_weight_norm_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old checkpoints store the positional conv as ``weight_g``/``weight_v``."""
    out = {}
    for key, value in state.items():
        key = key.replace("pos_conv_embed.conv.weight_g", "pos_conv_embed.conv.parametrizations.weight.original0")
        key = key.replace("pos_conv_embed.conv.weight_v", "pos_conv_embed.conv.parametrizations.weight.original1")
        out[key] = value
    return out


def transformers_to_hfspeech_state_dict(
    state: dict[str, torch.Tensor], base_prefix: str, with_head: bool
) -> dict[str, torch.Tensor]:
    """Rename a transformers state dict (``wav2vec2.``/``hubert.`` prefix) to hfspeech names."""
    state = _normalise_weight_norm_keys(state)
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(base_prefix + "."):
            inner = _rename(key[len(base_prefix) + 1:], _BACKBONE_RENAMES)
            converted[("speech_encoder." + inner) if with_head else inner] = value
        elif not with_head:
            converted[_rename(key, _BACKBONE_RENAMES)] = value
        else:
            converted[_rename(key, _HEAD_RENAMES)] = value
    return converted


def hfspeech_to_transformers_state_dict(
    state: dict[str, torch.Tensor], base_prefix: str, with_head: bool
) -> dict[str, torch.Tensor]:
    """Inverse of `transformers_to_hfspeech_state_dict`."""
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("speech_encoder."):
            converted[base_prefix + "." + _rename(key[len("speech_encoder."):], _BACKBONE_RENAMES, reverse=True)] = value
        elif not with_head:
            converted[_rename(key, _BACKBONE_RENAMES, reverse=True)] = value
        else:
            converted[_rename(key, _HEAD_RENAMES, reverse=True)] = value
    return converted


def config_from_transformers(source: dict[str, Any], **hfspeech_fields: Any) -> SpeechEncoderConfig:
    """Map a transformers Wav2Vec2Config/HubertConfig dict to a `SpeechEncoderConfig`.

    ``hfspeech_fields`` set fields transformers has no name for (the fairseq import uses them).
    Raises ValueError for architecture options hfspeech does not implement.
    """
    # field -> the values hfspeech implements
    implemented = {
        "add_adapter": (False,), "use_weighted_layer_sum": (False,), "conv_pos_batch_norm": (False,),
        "feat_proj_layer_norm": (True,), "hidden_act": ("gelu",), "feat_extract_activation": ("gelu",),
        "position_embeddings_type": (None, "relative"),
    }
    for field, allowed in implemented.items():
        if field in source and source[field] not in allowed:
            raise ValueError(
                f"The checkpoint sets {field}={source[field]!r}, which hfspeech does not implement "
                f"(supported: {' or '.join(map(repr, allowed))}). Use transformers' own class for it."
            )
    fields = {name: source[name] for name in _SHARED_CONFIG_FIELDS if name in source}
    fields["layer_norm_first"] = bool(source.get("do_stable_layer_norm", False))
    fields["objective"] = "hubert" if source.get("model_type") == "hubert" else "wav2vec2"
    return SpeechEncoderConfig(**{**fields, **hfspeech_fields})


def config_to_transformers(config: SpeechEncoderConfig):
    """Build the transformers Wav2Vec2Config / HubertConfig equivalent of ``config``."""
    from transformers import HubertConfig, Wav2Vec2Config

    if config.feature_frontend != "waveform":
        raise ValueError(f"feature_frontend={config.feature_frontend!r}: transformers' Wav2Vec2/HuBERT classes only "
                         "have the conv feature encoder, so this model cannot be converted; use it with hfspeech "
                         "(AutoModelForCTC and pipeline load it after `import hfspeech`).")

    fields = {name: getattr(config, name) for name in _SHARED_CONFIG_FIELDS}
    fields["do_stable_layer_norm"] = config.layer_norm_first
    if config.objective == "hubert":
        for name in ("num_codevector_groups", "num_codevectors_per_group", "codevector_dim",
                     "proj_codevector_dim", "num_negatives", "contrastive_logits_temperature",
                     "diversity_loss_weight", "feat_quantizer_dropout"):
            fields.pop(name)
        return HubertConfig(**fields)
    return Wav2Vec2Config(**fields)


def _load_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    safetensors_file = directory / "model.safetensors"
    if safetensors_file.exists():
        from safetensors.torch import load_file

        return load_file(str(safetensors_file))
    bin_file = directory / "pytorch_model.bin"
    if bin_file.exists():
        # weights_only refuses arbitrary pickled objects: a downloaded .bin cannot run code.
        return torch.load(bin_file, map_location="cpu", weights_only=True)
    raise FileNotFoundError(
        f"No model.safetensors or pytorch_model.bin in {directory}; point SRC at a saved "
        "transformers model directory (save_pretrained output)."
    )


def _hfspeech_class(name: str):
    from . import models, pretraining

    return getattr(models, name, None) or getattr(pretraining, name)


def convert_transformers_checkpoint(source_dir: str | Path, output_dir: str | Path) -> Path:
    """Convert a transformers Wav2Vec2/HuBERT model directory into an hfspeech directory.

    Copies the feature extractor and the tokenizer when the source has them (converted to
    hfspeech's classes). Returns the output directory.
    """
    source_dir, output_dir = Path(source_dir), Path(output_dir)
    config_file = source_dir / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{config_file} not found: SRC must be a transformers model directory.")
    source_config = json.loads(config_file.read_text())
    architectures = source_config.get("architectures") or []
    architecture = architectures[0] if architectures else None
    if architecture not in _SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"{config_file}: architecture {architecture!r} is not supported; hfspeech converts "
            f"{sorted(_SUPPORTED_ARCHITECTURES)}."
        )
    target_name, base_prefix = _SUPPORTED_ARCHITECTURES[architecture]
    config = config_from_transformers(source_config)
    with_head = target_name != "SpeechEncoderModel"
    state = transformers_to_hfspeech_state_dict(_load_state_dict(source_dir), base_prefix, with_head)
    model = _hfspeech_class(target_name)(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # transformers omits masked_spec_embed when no masking is configured; keep our init then.
    missing = [key for key in missing if not key.endswith("masked_spec_embed")]
    if missing or unexpected:
        raise ValueError(
            f"Converting {source_dir} ({architecture}) left parameters unmatched: missing {missing}, "
            f"unexpected {unexpected}. The checkpoint's layout differs from what its config declares."
        )
    model.save_pretrained(output_dir)
    _convert_processing(source_dir, output_dir, config)
    logger.info("Converted %s (%s) to %s (%s).", source_dir, architecture, output_dir, target_name)
    return output_dir


def convert_to_transformers(source_dir: str | Path, output_dir: str | Path) -> Path:
    """Convert an hfspeech directory back to transformers' Wav2Vec2/HuBERT classes."""
    import transformers

    source_dir, output_dir = Path(source_dir), Path(output_dir)
    config = SpeechEncoderConfig.from_pretrained(source_dir)
    architecture = (config.architectures or ["SpeechEncoderModel"])[0]
    family = "Hubert" if config.objective == "hubert" else "Wav2Vec2"
    suffix = {"SpeechEncoderModel": "Model", "SpeechEncoderForCTC": "ForCTC",
              "SpeechEncoderForPreTraining": "ForPreTraining"}[architecture]
    state = _load_state_dict(source_dir)
    if family == "Hubert" and suffix == "ForPreTraining":
        dropped = sorted({key.split(".")[1] for key in state if key.startswith("objective.")})
        logger.warning(
            "transformers has no HubertForPreTraining: writing HubertModel and dropping the HuBERT "
            "objective weights (%s).", ", ".join(dropped))
        state = {key[len("speech_encoder."):]: value for key, value in state.items()
                 if key.startswith("speech_encoder.")}
        suffix = "Model"
    target_class = getattr(transformers, family + suffix)
    base_prefix = "hubert" if family == "Hubert" else "wav2vec2"
    with_head = suffix != "Model"
    converted = hfspeech_to_transformers_state_dict(state, base_prefix, with_head)
    target_config = config_to_transformers(config)
    target_config.architectures = [target_class.__name__]
    model = target_class(target_config)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    missing = [key for key in missing if not key.endswith("masked_spec_embed")]
    if missing or unexpected:
        raise ValueError(f"Converting {source_dir} to {target_class.__name__}: missing {missing}, unexpected {unexpected}.")
    model.save_pretrained(output_dir)
    _convert_processing(source_dir, output_dir, config, to_transformers=True)
    return output_dir


def _convert_processing(source_dir: Path, output_dir: Path, config: SpeechEncoderConfig,
                        to_transformers: bool = False) -> None:
    """Carry the feature extractor and tokenizer across, in the target library's classes."""
    from ..processing.conversion import convert_processing_files

    convert_processing_files(source_dir, output_dir, to_transformers=to_transformers)

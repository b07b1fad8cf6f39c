"""Read the configuration stored in a fairseq wav2vec 2.0 / HuBERT checkpoint.

Two layouts exist: current fairseq saves ``{"cfg": {"model": {...}, "task": {...},
"criterion": {...}, ...}, "model": state_dict}`` (a dict or a pickled omegaconf ``DictConfig``);
older releases save ``{"args": Namespace(arch=..., every option flat), "model": ...}``. A
CTC-fine-tuned model (``wav2vec_ctc`` / ``hubert_ctc``) embeds its pretraining configuration in
``w2v_args`` and overrides its dropouts/masking, exactly as fairseq's ``Wav2VecEncoder`` does.

`read_fairseq_config` returns a `FairseqModelConfig` with the effective options, filled with
fairseq's defaults where the file omits one, and refuses options hfspeech cannot reproduce
(naming them). `transformers_style_fields` then maps it onto transformers' field names, so
`hfspeech.modeling.convert.config_from_transformers` stays the one place that builds configs.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FairseqModelConfig", "SUPPORTED_MODELS", "parse_python_literal", "read_fairseq_config",
           "transformers_style_fields"]

# fairseq model name (cfg.model._name or args.arch) -> (objective, fine-tuned with CTC)
SUPPORTED_MODELS: dict[str, tuple[str, bool]] = {
    "wav2vec2": ("wav2vec2", False), "wav2vec_ctc": ("wav2vec2", True),
    "hubert": ("hubert", False), "hubert_ctc": ("hubert", True),
}

# fairseq's dataclass defaults (Wav2Vec2Config / HubertConfig) for options a file may omit.
FAIRSEQ_DEFAULTS: dict[str, Any] = dict(
    extractor_mode="default", encoder_layers=12, encoder_embed_dim=768, encoder_ffn_embed_dim=3072,
    encoder_attention_heads=12, activation_fn="gelu", dropout=0.1, attention_dropout=0.1, activation_dropout=0.0,
    encoder_layerdrop=0.0, dropout_input=0.0, dropout_features=0.0, final_dim=0, layer_norm_first=False,
    conv_feature_layers="[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2", conv_bias=False, logit_temp=0.1,
    quantize_targets=False, quantize_input=False, target_glu=False, feature_grad_mult=1.0, quantizer_depth=1,
    latent_vars=320, latent_groups=2, latent_dim=0, latent_temp=(2.0, 0.5, 0.999995), mask_length=10,
    mask_prob=0.65, mask_selection="static", no_mask_overlap=False, mask_channel_length=10, mask_channel_prob=0.0,
    mask_channel_selection="static", no_mask_channel_overlap=False, mask_channel_before=False, mask_dropout=0.0,
    num_negatives=100, negatives_from_everywhere=False, cross_sample_negatives=0, codebook_negatives=0,
    conv_pos=128, conv_pos_groups=16, pos_conv_depth=1, layer_type="transformer", crop_seq_to_multiple=1,
    untie_final_proj=False, skip_masked=False, skip_nomask=False,
)
# Options that change the network or its outputs: (option, values hfspeech implements, models it concerns).
_ARCHITECTURE_OPTIONS: list[tuple[str, tuple, tuple[str, ...]]] = [
    ("activation_fn", ("gelu",), ("wav2vec2", "hubert")),
    ("extractor_mode", ("default", "layer_norm"), ("wav2vec2", "hubert")),
    ("layer_type", ("transformer",), ("wav2vec2", "hubert")),
    ("pos_conv_depth", (1,), ("wav2vec2", "hubert")),
    ("crop_seq_to_multiple", (1,), ("wav2vec2", "hubert")),
    ("quantize_input", (False,), ("wav2vec2",)),
    ("target_glu", (False,), ("wav2vec2", "hubert")),
    ("quantize_targets", (True,), ("wav2vec2",)),
    ("quantizer_depth", (1,), ("wav2vec2",)),
    ("negatives_from_everywhere", (False,), ("wav2vec2",)),
    ("cross_sample_negatives", (0,), ("wav2vec2",)),
    ("codebook_negatives", (0,), ("wav2vec2",)),
]
# The options above that a CTC model (its pretraining heads removed) still depends on.
_BACKBONE_OPTIONS = {"activation_fn", "extractor_mode", "layer_type", "pos_conv_depth", "crop_seq_to_multiple",
                     "quantize_input"}
# Masking options that only change training: (option, hfspeech's behaviour, probability it needs > 0).
_TRAINING_OPTIONS: list[tuple[str, Any, str]] = [
    ("mask_selection", "static", "mask_prob"), ("no_mask_overlap", False, "mask_prob"),
    ("mask_dropout", 0.0, "mask_prob"), ("mask_channel_selection", "static", "mask_channel_prob"),
    ("no_mask_channel_overlap", False, "mask_channel_prob"), ("mask_channel_before", False, "mask_channel_prob"),
]
# Options a CTC fine-tuning config overrides in its pretraining config (fairseq's Wav2VecEncoder).
_FINETUNING_OVERRIDES = (
    "dropout", "attention_dropout", "activation_dropout", "dropout_input", "feature_grad_mult", "mask_length",
    "mask_prob", "mask_selection", "mask_other", "no_mask_overlap", "mask_channel_length", "mask_channel_prob",
    "mask_channel_selection", "mask_channel_other", "no_mask_channel_overlap", "mask_channel_before", "mask_dropout",
)
_INTERPOLATION = re.compile(r"^\$\{([\w.]+)\}$")


@dataclass
class FairseqModelConfig:
    """The effective options of a fairseq checkpoint (see the module docstring)."""

    name: str  # fairseq model name: wav2vec2, wav2vec_ctc, hubert, hubert_ctc
    objective: str  # wav2vec2 or hubert
    is_ctc: bool
    model: dict[str, Any]  # pretraining model options (fine-tuning overrides applied), defaults filled
    task: dict[str, Any]  # task options (the fine-tuning task for CTC models)
    criterion: dict[str, Any]  # pretraining criterion options (loss weights)
    finetuning: dict[str, Any] = field(default_factory=dict)  # the CTC model's own options

    def option(self, name: str) -> Any:
        return self.model.get(name, FAIRSEQ_DEFAULTS.get(name))


def parse_python_literal(text: Any, option: str) -> Any:
    """Evaluate fairseq's option strings (``"[(512, 10, 5)] + [(512, 3, 2)] * 4"``, ``"(2, 0.5, 0.999995)"``).

    Only numbers, lists, tuples, ``+`` and ``*`` are accepted (fairseq calls ``eval``; we never do).
    Non-strings are returned unchanged.
    """
    if not isinstance(text, str):
        return text

    def evaluate(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -evaluate(node.operand)
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [evaluate(element) for element in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = evaluate(node.left), evaluate(node.right)
            if isinstance(node.op, ast.Mult) and (isinstance(left, int) or isinstance(right, int)):
                count = left if isinstance(left, int) else right
                if count > 10_000:
                    raise ValueError(f"{option}={text!r}: repetition count {count} is implausible.")
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"{option}={text!r} is not a plain list/tuple expression of numbers.")

    try:
        return evaluate(ast.parse(text.strip(), mode="eval").body)
    except (SyntaxError, TypeError) as error:
        raise ValueError(f"{option}={text!r} cannot be parsed as a list/tuple of numbers ({error}).") from error


def _resolve_interpolations(node: Any, root: dict[str, Any], depth: int = 0) -> Any:
    """Replace omegaconf interpolations ``"${task.label_rate}"`` by the value they point to in ``root``."""
    if isinstance(node, dict):
        # a nested w2v_args is its own configuration root; it is resolved on its own
        return {key: value if key == "w2v_args" else _resolve_interpolations(value, root, depth)
                for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve_interpolations(value, root, depth) for value in node]
    match = _INTERPOLATION.match(node) if isinstance(node, str) else None
    if match is None or depth > 10:
        return node
    target: Any = root
    for part in match.group(1).split("."):
        if not isinstance(target, dict) or part not in target:
            return node
        target = target[part]
    return _resolve_interpolations(target, root, depth + 1)


def _split_config(config: Any, source: str) -> tuple[dict, dict, dict]:
    """(model, task, criterion) options of a ``cfg`` dict or a flat ``args`` Namespace dict."""
    if not isinstance(config, dict):
        raise ValueError(f"{source}: the stored configuration is a {type(config).__name__}, not a mapping.")
    config = _resolve_interpolations(config, config)
    if isinstance(config.get("model"), dict):
        return config["model"], config.get("task") or {}, config.get("criterion") or {}
    return config, config, config  # argparse layout: every option in one namespace


def _model_name(model: dict[str, Any]) -> str | None:
    return model.get("_name") or model.get("arch")


def read_fairseq_config(checkpoint: dict[str, Any], source: str) -> FairseqModelConfig:
    """Find and validate the configuration of a loaded checkpoint (see the module docstring).

    Raises ValueError naming: an unsupported model (its ``_name``/``arch``), a missing
    configuration or missing ``w2v_args``.
    """
    stored = checkpoint.get("cfg") if checkpoint.get("cfg") is not None else checkpoint.get("args")
    if stored is None:
        raise ValueError(f"{source}: no 'cfg' or 'args' entry, so the architecture is unknown; only checkpoints "
                         "saved by fairseq's trainer (or with their configuration) can be converted.")
    model, task, criterion = _split_config(stored, source)
    name = _model_name(model)
    if name not in SUPPORTED_MODELS:
        raise ValueError(f"{source}: fairseq model {name!r} is not supported; hfspeech imports "
                         f"{sorted(SUPPORTED_MODELS)} (wav2vec 2.0 / HuBERT pretraining and their CTC fine-tuning).")
    objective, is_ctc = SUPPORTED_MODELS[name]
    finetuning: dict[str, Any] = {}
    if is_ctc:
        finetuning = model
        if finetuning.get("w2v_args") is None:
            raise ValueError(f"{source}: this {name} checkpoint does not embed its pretraining configuration "
                             f"(w2v_args; it was read from w2v_path={finetuning.get('w2v_path')!r} at training time), "
                             "so its architecture is unknown.")
        model, pretraining_task, criterion = _split_config(finetuning["w2v_args"], source + " (w2v_args)")
        pretrained_name = _model_name(model)
        if pretrained_name is not None and pretrained_name != objective:
            raise ValueError(f"{source}: {name} wraps a {pretrained_name!r} model; hfspeech imports {name} over "
                             f"{objective!r} only.")
        task = {**pretraining_task, **{k: v for k, v in task.items() if v is not None}}
        model = {**model, **{k: finetuning[k] for k in _FINETUNING_OVERRIDES if finetuning.get(k) is not None}}
        if finetuning.get("layerdrop") is not None:
            model["encoder_layerdrop"] = finetuning["layerdrop"]
    return FairseqModelConfig(name=name, objective=objective, is_ctc=is_ctc, model=model, task=task,
                              criterion=criterion, finetuning=finetuning)


def check_options(config: FairseqModelConfig, source: str, ignore_training_options: bool = False) -> None:
    """Refuse options hfspeech cannot reproduce, naming each one and its value."""
    problems = []
    for option, supported, objectives in _ARCHITECTURE_OPTIONS:
        if config.objective not in objectives or (config.is_ctc and option not in _BACKBONE_OPTIONS):
            continue
        value = config.option(option)
        if value not in supported:
            problems.append(f"{option}={value!r} (hfspeech implements {' or '.join(map(repr, supported))})")
    if config.is_ctc and float(config.finetuning.get("blank_weight") or 0.0) != 0.0:
        problems.append(f"blank_weight={config.finetuning['blank_weight']!r} (a decoding-time blank offset; "
                        "hfspeech implements 0)")
    if problems:
        raise ValueError(f"{source}: fairseq {config.name} options hfspeech cannot reproduce: " + "; ".join(problems))
    training = [f"{option}={config.option(option)!r} (hfspeech: {default!r})"
                for option, default, probability in _TRAINING_OPTIONS
                if float(config.option(probability) or 0) > 0 and config.option(option) != default]
    if training and not ignore_training_options:
        raise ValueError(f"{source}: masking options hfspeech does not implement: {'; '.join(training)}. They only "
                         "change how masks are drawn in training; pass ignore_training_options=True "
                         "(--ignore-training-options) to import with hfspeech's masking.")



def conv_layers(config: FairseqModelConfig) -> list[tuple[int, int, int]]:
    """``conv_feature_layers`` as (channels, kernel, stride) triples."""
    layers = parse_python_literal(config.option("conv_feature_layers"), "conv_feature_layers")
    if not isinstance(layers, (list, tuple)) or not layers or any(len(layer) != 3 for layer in layers):
        raise ValueError(f"conv_feature_layers={config.option('conv_feature_layers')!r} is not a list of "
                         "(dim, kernel, stride) triples.")
    return [tuple(int(v) for v in layer) for layer in layers]


def _loss_weights(criterion: dict[str, Any]) -> list[float]:
    weights = parse_python_literal(criterion.get("loss_weights"), "loss_weights")
    return [float(w) if w is not None else 0.0 for w in weights] if isinstance(weights, (list, tuple)) else []


def transformers_style_fields(config: FairseqModelConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Map the options onto (transformers config fields, hfspeech-only `SpeechEncoderConfig` fields)."""
    option = config.option
    layers = conv_layers(config)
    hidden = int(option("encoder_embed_dim"))
    final_dim = int(option("final_dim")) if int(option("final_dim")) > 0 else hidden
    spec_augment = config.finetuning.get("apply_mask", True) if config.is_ctc else True
    source = dict(
        model_type="hubert" if config.objective == "hubert" else "wav2vec2",
        conv_dim=[c for c, _, _ in layers], conv_kernel=[k for _, k, _ in layers],
        conv_stride=[s for _, _, s in layers], conv_bias=bool(option("conv_bias")),
        feat_extract_norm="group" if option("extractor_mode") == "default" else "layer",
        do_stable_layer_norm=bool(option("layer_norm_first")), hidden_act=option("activation_fn"),
        hidden_size=hidden, num_hidden_layers=int(option("encoder_layers")),
        num_attention_heads=int(option("encoder_attention_heads")),
        intermediate_size=int(option("encoder_ffn_embed_dim")), num_conv_pos_embeddings=int(option("conv_pos")),
        num_conv_pos_embedding_groups=int(option("conv_pos_groups")), hidden_dropout=float(option("dropout")),
        attention_dropout=float(option("attention_dropout")),
        activation_dropout=float(option("activation_dropout")), feat_proj_dropout=float(option("dropout_input")),
        feat_quantizer_dropout=float(option("dropout_features")), layerdrop=float(option("encoder_layerdrop")),
        layer_norm_eps=1e-5, apply_spec_augment=bool(spec_augment), mask_time_prob=float(option("mask_prob")),
        mask_time_length=int(option("mask_length")), mask_time_min_masks=2,
        mask_feature_prob=float(option("mask_channel_prob")), mask_feature_length=int(option("mask_channel_length")),
        mask_feature_min_masks=0, final_dropout=float(config.finetuning.get("final_dropout") or 0.0),
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    extra: dict[str, Any] = dict(feature_grad_mult=float(option("feature_grad_mult")))
    weights = _loss_weights(config.criterion)
    if config.objective == "wav2vec2":
        temperatures = parse_python_literal(option("latent_temp"), "latent_temp")
        latent_dim = int(option("latent_dim"))
        source.update(num_codevectors_per_group=int(option("latent_vars")),
                      num_codevector_groups=int(option("latent_groups")),
                      codevector_dim=latent_dim if latent_dim > 0 else final_dim, proj_codevector_dim=final_dim,
                      num_negatives=int(option("num_negatives")),
                      contrastive_logits_temperature=float(option("logit_temp")))
        extra.update(gumbel_temperature_max=float(temperatures[0]), gumbel_temperature_min=float(temperatures[1]),
                     gumbel_temperature_decay=float(temperatures[2]))
        if len(weights) >= 1:
            source["diversity_loss_weight"] = weights[0]
        if len(weights) >= 2:
            extra["feature_penalty_weight"] = weights[1]
    else:
        label_rate = config.model.get("label_rate")
        if not isinstance(label_rate, (int, float)) or label_rate <= 0:
            label_rate = config.task.get("label_rate")
        if config.is_ctc and (not isinstance(label_rate, (int, float)) or float(label_rate) not in (50.0, 100.0)):
            label_rate = 50  # the pretraining label rate does not matter to a CTC model
        if not isinstance(label_rate, (int, float)) or float(label_rate) not in (50.0, 100.0):
            raise ValueError(f"label_rate={label_rate!r}: hfspeech's HuBERT objective takes labels at 50 Hz (frame "
                             "rate) or 100 Hz (MFCC rate).")
        masked = 0.0 if option("skip_masked") else float(config.criterion.get("pred_masked_weight", 1.0) or 0.0)
        unmasked = 0.0 if option("skip_nomask") else float(config.criterion.get("pred_nomask_weight", 0.0) or 0.0)
        extra.update(hubert_final_dim=final_dim, hubert_untie_final_proj=bool(option("untie_final_proj")),
                     hubert_logit_temperature=float(option("logit_temp")), label_rate=int(label_rate),
                     hubert_pred_masked_weight=masked, hubert_pred_nomask_weight=unmasked)
        if weights:
            extra["feature_penalty_weight"] = weights[0]
    sample_rate = config.task.get("sample_rate", 16000)
    if sample_rate not in (None, 16000):
        raise ValueError(f"sample_rate={sample_rate!r}: hfspeech models take 16 kHz audio.")
    return source, extra

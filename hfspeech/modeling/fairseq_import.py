"""fairseq ``.pt`` checkpoints -> hfspeech model directories.

Supported: wav2vec 2.0 pretraining (``wav2vec2``: backbone + quantizer, ``project_q``,
``final_proj``, ``mask_emb``), HuBERT pretraining (``hubert``: backbone + ``final_proj`` and
``label_embs_concat`` for every label set), and their CTC fine-tuning (``wav2vec_ctc`` /
``hubert_ctc``: ``w2v_encoder.w2v_model.*`` + ``w2v_encoder.proj``), both checkpoint layouts
(``cfg`` and ``args``), group-norm/post-LN and layer-norm/pre-LN models.

The checkpoint is read with `safe_unpickle.load_fairseq_checkpoint` (no fairseq, no omegaconf,
no pickled code). Parameters are renamed fairseq -> transformers (``_BACKBONE_RULES`` and
``_HEAD_RULES`` below) and then transformers -> hfspeech with `convert.py`'s table; the config
goes the same way (`fairseq_config.transformers_style_fields` -> `convert.config_from_transformers`).

HuBERT label embeddings: fairseq's label dictionaries start with 4 special symbols
(``<s> <pad> </s> <unk>``) that are never targets, so ``label_embs_concat`` has K+4 rows per
label set. hfspeech keeps the K cluster rows, ordered by cluster id (using the dictionaries in
``task_state`` when the checkpoint has them): labels 0..K-1 from `hfspeech labels` then mean what
they meant in fairseq. The logits of the K clusters are fairseq's; the 4 never-target
codewords no longer enter the softmax.

CTC vocabulary: fairseq's blank is symbol 0 (``<s>``) of the target dictionary; as in
transformers' conversion, ids 0 and 1 are renamed ``<pad>`` (our blank) and ``<s>``, so the CTC
head is kept as it is. The dictionary comes from ``task_state`` or from ``--vocab dict.ltr.txt``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .convert import config_from_transformers, transformers_to_hfspeech_state_dict
from .fairseq_config import FairseqModelConfig, check_options, read_fairseq_config, transformers_style_fields
from .safe_unpickle import load_fairseq_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["FairseqImport", "convert_fairseq_checkpoint", "fairseq_to_hfspeech_state_dict", "read_fairseq_dictionary"]

# fairseq parameter names (left) -> transformers' (right); "{n}" = a layer index.
_BACKBONE_RULES: list[tuple[str, str]] = [
    ("feature_extractor.conv_layers.{n}.0.", "feature_extractor.conv_layers.{n}.conv."),
    ("feature_extractor.conv_layers.{n}.2.1.", "feature_extractor.conv_layers.{n}.layer_norm."),  # layer_norm mode
    ("feature_extractor.conv_layers.{n}.2.", "feature_extractor.conv_layers.{n}.layer_norm."),  # group norm, layer 0
    ("layer_norm.", "feature_projection.layer_norm."),
    ("post_extract_proj.", "feature_projection.projection."),
    ("mask_emb", "masked_spec_embed"),
    ("encoder.pos_conv.0.", "encoder.pos_conv_embed.conv."),
    ("encoder.layer_norm.", "encoder.layer_norm."),
    ("encoder.layers.{n}.self_attn.", "encoder.layers.{n}.attention."),
    ("encoder.layers.{n}.self_attn_layer_norm.", "encoder.layers.{n}.layer_norm."),
    ("encoder.layers.{n}.fc1.", "encoder.layers.{n}.feed_forward.intermediate_dense."),
    ("encoder.layers.{n}.fc2.", "encoder.layers.{n}.feed_forward.output_dense."),
    ("encoder.layers.{n}.final_layer_norm.", "encoder.layers.{n}.final_layer_norm."),
]
# Pretraining heads: wav2vec 2.0 -> transformers' names; HuBERT (absent from transformers) -> hfspeech's.
_HEAD_RULES: dict[str, list[tuple[str, str]]] = {
    "wav2vec2": [("quantizer.vars", "quantizer.codevectors"), ("quantizer.weight_proj.", "quantizer.weight_proj."),
                 ("project_q.", "project_q."), ("final_proj.", "project_hid.")],
    "hubert": [("final_proj.", "objective.final_proj.")],
}
_CTC_PREFIX = "w2v_encoder.w2v_model."
_CTC_HEAD = "w2v_encoder.proj."
_FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")


def _apply_rules(key: str, rules: list[tuple[str, str]]) -> str | None:
    """Rename ``key`` by the first matching prefix rule; None when no rule matches."""
    for source, target in rules:
        pattern = "^" + re.escape(source).replace(re.escape("{n}"), r"(\d+)")
        renamed, count = re.subn(pattern, target.replace("{n}", r"\1"), key)
        if count:
            return renamed
    return None


@dataclass
class FairseqImport:
    """What `convert_fairseq_checkpoint` wrote."""

    output_dir: Path
    fairseq_model: str
    architecture: str
    tokenizer_written: bool = False
    notes: list[str] = field(default_factory=list)


def read_fairseq_dictionary(path: str | Path) -> list[str]:
    """Symbols of a fairseq dictionary file (``dict.ltr.txt``: ``SYMBOL COUNT`` lines) after the 4 specials."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: pass the fairseq dictionary the model was fine-tuned with "
                                "(dict.ltr.txt: one 'SYMBOL COUNT' line per symbol).")
    symbols = list(_FAIRSEQ_SPECIALS)
    flag = " #fairseq:overwrite"
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.rstrip()
        if not line:
            continue
        overwrite = line.endswith(flag)
        symbol, _, count = (line[:-len(flag)] if overwrite else line).rpartition(" ")
        if not symbol or not count.lstrip("-").isdigit():
            raise ValueError(f"{path}:{number}: expected 'SYMBOL COUNT', got {line!r}.")
        if symbol in symbols and not overwrite:
            raise ValueError(f"{path}:{number}: symbol {symbol!r} appears twice.")
        if symbol not in symbols:
            symbols.append(symbol)
    return symbols


def _stored_dictionaries(checkpoint: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """fairseq ``Dictionary`` objects (rebuilt as dicts) stored under ``task_state[key]``."""
    stored = (checkpoint.get("task_state") or {}).get(key)
    stored = stored if isinstance(stored, list) else [stored]
    return [d for d in stored if isinstance(d, dict) and isinstance(d.get("symbols"), list)]


def _hubert_label_embeddings(embeddings: torch.Tensor, config: FairseqModelConfig, checkpoint: dict[str, Any],
                             num_label_sets: int, notes: list[str]) -> tuple[torch.Tensor, list[int]]:
    """Drop the special-symbol rows of ``label_embs_concat`` and order clusters by id (module docstring)."""
    dictionaries = _stored_dictionaries(checkpoint, "dictionaries")
    if dictionaries:
        if len(dictionaries) != num_label_sets:
            raise ValueError(f"task_state holds {len(dictionaries)} label dictionaries but final_proj predicts "
                             f"{num_label_sets} label sets.")
        symbol_lists = [d["symbols"] for d in dictionaries]
        specials = [int(d.get("nspecial", len(_FAIRSEQ_SPECIALS))) for d in dictionaries]
    elif num_label_sets == 1:
        specials = [len(_FAIRSEQ_SPECIALS)]
        count = embeddings.shape[0] - specials[0]
        symbol_lists = [list(_FAIRSEQ_SPECIALS) + [str(c) for c in range(count)]]
        notes.append(f"no label dictionary in the checkpoint: assumed fairseq's 4 special symbols followed by "
                     f"clusters 0..{count - 1} in order (dict.km.txt as written by fairseq's HuBERT recipe).")
    else:
        raise ValueError(f"the checkpoint predicts {num_label_sets} label sets but stores no label dictionaries "
                         "(task_state['dictionaries']), so label_embs_concat cannot be split into label sets.")
    if sum(len(symbols) for symbols in symbol_lists) != embeddings.shape[0]:
        raise ValueError(f"label_embs_concat has {embeddings.shape[0]} rows but the label dictionaries hold "
                         f"{[len(s) for s in symbol_lists]} symbols.")
    rows, clusters, offset = [], [], 0
    for index, (symbols, nspecial) in enumerate(zip(symbol_lists, specials)):
        names = symbols[nspecial:]
        if sorted(names, key=lambda s: (len(s), s)) != [str(c) for c in range(len(names))]:
            raise ValueError(f"label dictionary {index} holds symbols {names[:8]}...; hfspeech expects the cluster "
                             f"ids 0..{len(names) - 1} (one symbol each) after the {nspecial} special symbols.")
        rows += [offset + nspecial + names.index(str(c)) for c in range(len(names))]
        clusters.append(len(names))
        offset += len(symbols)
    return embeddings[rows].clone(), clusters


def fairseq_to_hfspeech_state_dict(state: dict[str, torch.Tensor], config: FairseqModelConfig,
                                   checkpoint: dict[str, Any], notes: list[str]) -> tuple[dict[str, torch.Tensor], dict]:
    """Rename a fairseq state dict to hfspeech names; returns it and the config fields it determines.

    Raises ValueError listing fairseq keys that match no rule.
    """
    base = "hubert" if config.objective == "hubert" else "wav2vec2"
    prefix = _CTC_PREFIX if config.is_ctc else ""
    renamed: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    fields: dict[str, Any] = {}
    label_embeddings = None
    dropped: list[str] = []
    for key, value in state.items():
        if config.is_ctc and key.startswith(_CTC_HEAD):
            renamed["lm_head." + key[len(_CTC_HEAD):]] = value
            continue
        inner = key[len(prefix):] if key.startswith(prefix) else None
        backbone = _apply_rules(inner, _BACKBONE_RULES) if inner is not None else None
        head = _apply_rules(inner, _HEAD_RULES[config.objective]) if inner is not None else None
        if backbone is not None:
            renamed[f"{base}.{backbone}"] = value
        elif config.is_ctc and (head is not None or inner == "label_embs_concat"):
            dropped.append(key)  # pretraining heads left in a fine-tuned checkpoint; CTC does not use them
        elif inner == "label_embs_concat":
            label_embeddings = value
        elif head is not None:
            renamed[head] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"fairseq parameters that a {config.name} model does not have: {unknown}.")
    projection = f"{base}.feature_projection.projection."
    if projection + "weight" not in renamed:  # fairseq skips post_extract_proj when dimensions agree
        hidden = int(config.option("encoder_embed_dim"))
        renamed[projection + "weight"] = torch.eye(hidden)
        renamed[projection + "bias"] = torch.zeros(hidden)
    if config.is_ctc:
        if "lm_head.weight" not in renamed:
            raise ValueError(f"a {config.name} checkpoint needs the CTC head {_CTC_HEAD}weight, which is missing.")
        fields["vocab_size"] = renamed["lm_head.weight"].shape[0]
        if dropped:
            notes.append(f"dropped pretraining parameters that CTC does not use: {dropped}.")
    elif config.objective == "hubert":
        if label_embeddings is None:
            raise ValueError("a hubert pretraining checkpoint needs label_embs_concat, which is missing.")
        final_dim = int(config.option("final_dim")) or int(config.option("encoder_embed_dim"))
        out_features = renamed["objective.final_proj.weight"].shape[0] if "objective.final_proj.weight" in renamed \
            else final_dim
        sets = out_features // final_dim if config.option("untie_final_proj") else len(
            _stored_dictionaries(checkpoint, "dictionaries")) or 1
        renamed["objective.label_embeddings"], fields["hubert_num_clusters"] = _hubert_label_embeddings(
            label_embeddings, config, checkpoint, sets, notes)
    return transformers_to_hfspeech_state_dict(renamed, base, with_head=True), fields


def _write_tokenizer(symbols: list[str], vocab_size: int, output_dir: Path) -> None:
    """Save a `CharacterCTCTokenizer` for fairseq's target dictionary (ids 0/1 renamed, see module docstring)."""
    from ..processing.tokenization import CharacterCTCTokenizer

    if len(symbols) != vocab_size:
        raise ValueError(f"the target dictionary has {len(symbols)} symbols but the CTC head has {vocab_size} outputs; "
                         "pass the dictionary the model was fine-tuned with.")
    if list(symbols[:2]) != ["<s>", "<pad>"]:
        raise ValueError(f"the target dictionary starts with {symbols[:2]}, not fairseq's '<s>', '<pad>'.")
    names = ["<pad>", "<s>", *symbols[2:]]
    if len(set(names)) != len(names):
        raise ValueError("the target dictionary lists a symbol twice.")
    CharacterCTCTokenizer(vocab={name: index for index, name in enumerate(names)}).save_pretrained(output_dir)


def convert_fairseq_checkpoint(checkpoint_path: str | Path, output_dir: str | Path, vocab: str | Path | None = None,
                               ignore_training_options: bool = False) -> FairseqImport:
    """Convert a fairseq wav2vec 2.0 / HuBERT checkpoint into an hfspeech model directory.

    Writes the model (`SpeechEncoderForPreTraining` or `SpeechEncoderForCTC`), a feature extractor
    with the checkpoint's ``normalize`` setting and, for CTC models whose target dictionary is in
    the checkpoint or given as ``vocab`` (fairseq ``dict.ltr.txt``), a tokenizer.

    Raises:
        ForbiddenGlobalError (a ValueError): the pickle names a global outside the allow-list.
        ValueError: unsupported model or option (named), missing/unexpected parameters (listed).
    """
    from ..processing.feature_extraction import SpeechFeatureExtractor
    from .convert import _hfspeech_class

    checkpoint_path, output_dir = Path(checkpoint_path), Path(output_dir)
    source = str(checkpoint_path)
    checkpoint = load_fairseq_checkpoint(checkpoint_path)
    state = checkpoint.get("model")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{source}: 'model' must be the state dict (parameter name -> tensor).")
    config = read_fairseq_config(checkpoint, source)
    check_options(config, source, ignore_training_options)
    notes: list[str] = []
    try:
        converted, determined = fairseq_to_hfspeech_state_dict(state, config, checkpoint, notes)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    transformers_fields, hfspeech_fields = transformers_style_fields(config)
    transformers_fields.update({k: v for k, v in determined.items() if k == "vocab_size"})
    hfspeech_fields.update({k: v for k, v in determined.items() if k != "vocab_size"})
    speech_config = config_from_transformers(transformers_fields, **hfspeech_fields)
    architecture = "SpeechEncoderForCTC" if config.is_ctc else "SpeechEncoderForPreTraining"
    model = _hfspeech_class(architecture)(speech_config)
    try:
        missing, unexpected = model.load_state_dict(converted, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise ValueError(f"{source}: the weights do not fit the architecture its config declares: {error}") from None
    if missing or unexpected:
        raise ValueError(f"{source}: converting {config.name} left parameters unmatched: missing {sorted(missing)}, "
                         f"unexpected {sorted(unexpected)}.")
    result = FairseqImport(output_dir, config.name, architecture, notes=notes)
    if config.is_ctc:
        stored = _stored_dictionaries(checkpoint, "target_dictionary")
        symbols = read_fairseq_dictionary(vocab) if vocab is not None else (stored[0]["symbols"] if stored else None)
        if symbols is None:
            notes.append("the checkpoint holds no target dictionary: no tokenizer written; pass --vocab with the "
                         "dict.ltr.txt the model was fine-tuned with to write one.")
        else:
            try:
                _write_tokenizer(symbols, speech_config.vocab_size, output_dir)
                result.tokenizer_written = True
            except ValueError as error:
                if vocab is not None:
                    raise ValueError(f"{vocab}: {error}") from None
                notes.append(f"no tokenizer written from the stored target dictionary: {error}")
    elif vocab is not None:
        raise ValueError(f"--vocab is for CTC-fine-tuned checkpoints; {source} is a {config.name} pretraining model.")
    model.save_pretrained(output_dir)
    normalize = bool(config.task.get("normalize", config.finetuning.get("normalize", False)))
    SpeechFeatureExtractor(do_normalize=normalize, min_num_samples=speech_config.receptive_field,
                           normalization_epsilon=1e-5).save_pretrained(output_dir)  # fairseq's F.layer_norm eps
    for note in notes:
        logger.warning("%s: %s", source, note)
    logger.info("Converted fairseq %s (%s) to %s (%s).", config.name, source, output_dir, architecture)
    return result

"""Build fairseq-layout checkpoints from small random transformers models, without fairseq.

The parameter and config names below are written from fairseq's own source
(fairseq/models/wav2vec/wav2vec2.py, wav2vec2_asr.py, fairseq/models/hubert/hubert.py,
hubert_asr.py), independently of hfspeech's import tables, so a wrong rule there fails here.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import types

import torch
import transformers

TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
    conv_dim=(16, 16, 16, 16, 16, 16, 24), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
    vocab_size=12, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    feat_proj_dropout=0.0, final_dropout=0.0, layerdrop=0.0,
)
LAYOUTS = {  # group norm + post-LN (base models) / layer norm + pre-LN + conv bias (large models)
    "base": dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False),
    "large": dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True),
}
LETTERS = ["|", "E", "T", "A", "O", "N", "I", "H"]  # + 4 fairseq specials = TINY vocab_size 12


def reference_model(class_name: str, layout: str, **extra):
    """A transformers model with random weights (norms and biases perturbed too), in eval mode."""
    family = "Hubert" if class_name.startswith("Hubert") else "Wav2Vec2"
    if family == "Wav2Vec2":
        extra = dict(codevector_dim=16, proj_codevector_dim=16, num_codevectors_per_group=8, num_negatives=5, **extra)
    config = getattr(transformers, family + "Config")(**TINY, **LAYOUTS[layout], **extra)
    torch.manual_seed(0)
    model = getattr(transformers, class_name)(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name or name.endswith("bias") or "masked_spec_embed" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def fairseq_backbone_key(key: str, group_norm: bool) -> str:
    """transformers backbone parameter name -> fairseq's (Wav2Vec2Model / HubertModel attribute paths)."""
    rules = [
        (r"feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
        # nn.Sequential(conv, dropout, norm, GELU); layer_norm mode wraps the norm in (TransposeLast, LayerNorm, TransposeLast)
        (r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.",
         r"feature_extractor.conv_layers.\1.2." if group_norm else r"feature_extractor.conv_layers.\1.2.1."),
        (r"feature_projection\.layer_norm\.", "layer_norm."),
        (r"feature_projection\.projection\.", "post_extract_proj."),
        (r"masked_spec_embed$", "mask_emb"),
        (r"encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original0$", "encoder.pos_conv.0.weight_g"),
        (r"encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original1$", "encoder.pos_conv.0.weight_v"),
        (r"encoder\.pos_conv_embed\.conv\.bias$", "encoder.pos_conv.0.bias"),
        (r"encoder\.layers\.(\d+)\.attention\.", r"encoder.layers.\1.self_attn."),
        (r"encoder\.layers\.(\d+)\.layer_norm\.", r"encoder.layers.\1.self_attn_layer_norm."),
        (r"encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.", r"encoder.layers.\1.fc1."),
        (r"encoder\.layers\.(\d+)\.feed_forward\.output_dense\.", r"encoder.layers.\1.fc2."),
        (r"encoder\.layers\.(\d+)\.final_layer_norm\.", r"encoder.layers.\1.final_layer_norm."),
        (r"encoder\.layer_norm\.", "encoder.layer_norm."),
    ]
    for pattern, replacement in rules:
        renamed, count = re.subn("^" + pattern, replacement, key)
        if count:
            return renamed
    raise KeyError(f"no fairseq name for {key}")


def fairseq_state_dict(model, prefix: str = "") -> dict[str, torch.Tensor]:
    """The fairseq state dict holding ``model``'s weights (``prefix`` = "w2v_encoder.w2v_model." for CTC)."""
    base = model.base_model_prefix
    group_norm = model.config.feat_extract_norm == "group"
    heads = {"quantizer.codevectors": "quantizer.vars", "lm_head.weight": "w2v_encoder.proj.weight",
             "lm_head.bias": "w2v_encoder.proj.bias"}
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().clone()
        if key.startswith(base + "."):
            state[prefix + fairseq_backbone_key(key[len(base) + 1:], group_norm)] = value
        elif key in heads:
            state[heads[key]] = value
        elif key.startswith("project_hid."):
            state[key.replace("project_hid.", "final_proj.")] = value
        elif key.startswith(("quantizer.", "project_q.")):
            state[key] = value
        else:  # HubertModel: no base prefix
            state[prefix + fairseq_backbone_key(key, group_norm)] = value
    return state


def fairseq_model_options(config, name: str, **extra) -> dict:
    """fairseq Wav2Vec2Config/HubertConfig fields describing a transformers config."""
    layers = " + ".join(f"[({d}, {k}, {s})]" for d, k, s in zip(config.conv_dim, config.conv_kernel, config.conv_stride))
    options = dict(
        _name=name, extractor_mode="layer_norm" if config.feat_extract_norm == "layer" else "default",
        encoder_layers=config.num_hidden_layers, encoder_embed_dim=config.hidden_size,
        encoder_ffn_embed_dim=config.intermediate_size, encoder_attention_heads=config.num_attention_heads,
        activation_fn="gelu", dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0,
        dropout_input=0.0, dropout_features=0.0, layer_norm_first=config.do_stable_layer_norm,
        conv_feature_layers=layers, conv_bias=config.conv_bias, feature_grad_mult=0.1, mask_prob=0.65,
        mask_length=10, mask_selection="static", mask_other=0.0, no_mask_overlap=False, mask_min_space=1,
        mask_channel_prob=0.0, mask_channel_length=10, conv_pos=config.num_conv_pos_embeddings,
        conv_pos_groups=config.num_conv_pos_embedding_groups, latent_temp=[2.0, 0.5, 0.999995],
    )
    if name == "wav2vec2":
        options.update(final_dim=config.proj_codevector_dim, latent_dim=config.codevector_dim, quantize_targets=True,
                       latent_vars=config.num_codevectors_per_group, latent_groups=config.num_codevector_groups,
                       num_negatives=config.num_negatives, logit_temp=config.contrastive_logits_temperature,
                       cross_sample_negatives=0, codebook_negatives=0, target_glu=False, quantize_input=False)
    options.update(extra)
    return options


def as_namespace(options: dict, arch: str) -> argparse.Namespace:
    """The older argparse layout: one flat Namespace, option strings as fairseq's parser stores them."""
    flat = {key: value for key, value in options.items() if key != "_name"}
    flat["arch"] = arch
    if "latent_temp" in flat:
        flat["latent_temp"] = str(tuple(flat["latent_temp"]))
    return argparse.Namespace(**flat)


class Dictionary:
    """Stand-in with fairseq.data.dictionary.Dictionary's pickled attributes (no fairseq needed)."""

    def __init__(self, symbols: list[str]) -> None:
        self.bos_word, self.unk_word, self.pad_word, self.eos_word = "<s>", "<unk>", "<pad>", "</s>"
        self.symbols = ["<s>", "<pad>", "</s>", "<unk>", *symbols]
        self.count = [1] * len(self.symbols)
        self.indices = {symbol: index for index, symbol in enumerate(self.symbols)}
        self.bos_index, self.pad_index, self.eos_index, self.unk_index = 0, 1, 2, 3
        self.nspecial = 4

    def __setstate__(self, state):  # never runs in hfspeech's loader: a side effect proves it
        raise AssertionError("fairseq Dictionary code executed while loading")


@contextlib.contextmanager
def pickled_under(module_name: str, cls: type):
    """Make ``cls`` picklable as ``module_name.<cls name>`` while the block runs (then unimportable again)."""
    parts = module_name.split(".")
    saved = {name: sys.modules.get(name) for name in (".".join(parts[:i]) for i in range(1, len(parts) + 1))}
    original = cls.__module__
    for name in saved:
        sys.modules[name] = types.ModuleType(name)
    setattr(sys.modules[module_name], cls.__name__, cls)
    cls.__module__ = module_name
    try:
        yield
    finally:
        cls.__module__ = original
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def save_checkpoint(path, checkpoint: dict, dictionaries: bool = False, legacy: bool = False) -> None:
    """torch.save as fairseq does (pickle protocol 2; ``legacy``: the pre-zip format of 2020 releases);
    fairseq Dictionary objects are pickled under fairseq's name."""
    context = pickled_under("fairseq.data.dictionary", Dictionary) if dictionaries else contextlib.nullcontext()
    with context:
        torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)

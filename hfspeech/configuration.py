"""`SpeechEncoderConfig`: the backbone of wav2vec 2.0 / HuBERT plus objective settings.

Presets follow fairseq's reference configs (examples/wav2vec/config/pretraining,
examples/hubert/config/pretrain):

==========  ======  ======  =====  =====  ==========================  ===========
preset      layers  hidden  FFN    heads  feature encoder / LN order   parameters
==========  ======  ======  =====  =====  ==========================  ===========
``tiny``    2       32      64     2      group norm / post-LN         tests only
``base``    12      768     3072   12     group norm / post-LN         95M
``large``   24      1024    4096   16     layer norm / pre-LN          317M
``xlarge``  48      1280    5120   16     layer norm / pre-LN          964M
==========  ======  ======  =====  =====  ==========================  ===========

Masking probabilities use fairseq's notation: ``mask_time_prob`` is the expected fraction
of frames that *start* a span times the span length, i.e. the paper's p=0.065 with M=10
is ``mask_time_prob=0.65``; HuBERT's p=8% is ``0.8``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from transformers import PretrainedConfig

OBJECTIVES = ("wav2vec2", "hubert")


def conv_output_lengths(lengths: Any, kernels: Sequence[int], strides: Sequence[int]) -> Any:
    """Output frames of a stack of unpadded ("valid") 1-D convs: the one copy of this arithmetic.

    Each conv maps ``n`` samples to ``(n - kernel) // stride + 1`` frames.

    Args:
        lengths: input lengths in samples: an int, or a (B,) integer tensor.
    Returns:
        the same kind: an int, or a (B,) long tensor; 0 where the input is shorter than the
        receptive field.
    """
    is_int = isinstance(lengths, int)
    if not is_int:
        lengths = lengths.long()
    for kernel, stride in zip(kernels, strides):
        lengths = (lengths - kernel) // stride + 1  # floor division, for ints and tensors alike
    return max(lengths, 0) if is_int else lengths.clamp(min=0)


def conv_receptive_field(kernels: Sequence[int], strides: Sequence[int]) -> int:
    """Samples a stack of 1-D convs needs for one output frame (its receptive field)."""
    field = 1
    for kernel, stride in zip(reversed(list(kernels)), reversed(list(strides))):
        field = (field - 1) * stride + kernel
    return field


SAMPLE_RATE = 16000  # Hz of the audio every model takes
FEATURE_FRONTENDS = ("waveform", "filterbank")

# Backbone shapes of the papers' model sizes.
_BACKBONE_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        conv_dim=(32,) * 7,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="group",
        layer_norm_first=False,
        conv_bias=False,
        # the objectives keep their paper sizes (G=2 x V=320 codebook, 256-dim targets):
        # only the backbone shrinks
        codevector_dim=256,
        proj_codevector_dim=256,
        hubert_final_dim=256,
    ),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 feat_extract_norm="group", layer_norm_first=False, conv_bias=False,
                 codevector_dim=256, proj_codevector_dim=256, hubert_final_dim=256),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                  feat_extract_norm="layer", layer_norm_first=True, conv_bias=True,
                  codevector_dim=768, proj_codevector_dim=768, hubert_final_dim=768),
    "xlarge": dict(hidden_size=1280, num_hidden_layers=48, num_attention_heads=16, intermediate_size=5120,
                   feat_extract_norm="layer", layer_norm_first=True, conv_bias=True,
                   codevector_dim=1024, proj_codevector_dim=1024, hubert_final_dim=1024),
}

# Objective-specific training settings from fairseq (base = group-norm models with the
# 0.1 regularisation of the LibriSpeech-960 configs; large/xlarge = LibriVox configs).
_OBJECTIVE_PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    ("wav2vec2", "small"): dict(
        mask_time_prob=0.65,
        layerdrop=0.05,
        feat_proj_dropout=0.1,
        feat_quantizer_dropout=0.1,
        feature_grad_mult=0.1,
        gumbel_temperature_min=0.5,
        feature_penalty_weight=10.0,
    ),
    ("wav2vec2", "big"): dict(
        mask_time_prob=0.65,
        layerdrop=0.0,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        feat_proj_dropout=0.0,
        feat_quantizer_dropout=0.0,
        feature_grad_mult=1.0,
        gumbel_temperature_min=0.1,
        feature_penalty_weight=0.0,  # wav2vec2_large_librivox.yaml: loss_weights [0.1, 0]
    ),
    ("hubert", "small"): dict(
        mask_time_prob=0.8,
        layerdrop=0.05,
        feat_proj_dropout=0.1,
        feat_quantizer_dropout=0.1,
        feature_grad_mult=0.1,
        feature_penalty_weight=10.0,
    ),
    ("hubert", "big"): dict(
        mask_time_prob=0.8,
        layerdrop=0.0,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        feat_proj_dropout=0.0,
        feat_quantizer_dropout=0.0,
        feature_grad_mult=1.0,
        feature_penalty_weight=10.0,
    ),
}


class SpeechEncoderConfig(PretrainedConfig):
    r"""Configuration of the wav2vec 2.0 / HuBERT speech encoder and its objectives.

    Backbone:
        feature_frontend: "waveform" (the papers' conv feature encoder, default) or
            "filterbank" (parameter-free Kaldi log-mel energies of ``num_mel_bins`` bins on the
            same frames; see `hfspeech.modeling.filterbank`).
        filterbank_stack: 1 (default) = one 25 ms log-mel window per frame; k > 1 = k windows every
            ``inputs_to_logits_ratio / k`` samples, side by side (``k * num_mel_bins`` features per
            frame), e.g. 4 for 40 ms frames (last ``conv_stride`` 4) of four 10 ms log-mel frames.
        conv_dim, conv_kernel, conv_stride: the 7 feature-encoder conv layers (512 channels,
            kernels 10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2 -> 320 samples = 20 ms per frame).
        conv_bias: whether the conv layers have a bias (True for the layer-norm models).
        feat_extract_norm: "group" (GroupNorm on the first conv layer only, base models) or
            "layer" (LayerNorm after every conv layer, large models).
        layer_norm_first: pre-LN transformer (large) instead of post-LN (base).
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: transformer.
        num_conv_pos_embeddings, num_conv_pos_embedding_groups: relative positional conv
            (kernel 128, 16 groups).
        hidden_dropout, attention_dropout, activation_dropout, feat_proj_dropout: dropouts
            (fairseq: dropout, attention_dropout, activation_dropout, dropout_input).
        feat_quantizer_dropout: dropout on the features fed to the quantizer / targets
            (fairseq: dropout_features).
        layerdrop: probability of skipping a transformer layer while training.
        feature_grad_mult: gradient scale gamma applied to the feature encoder's output.

    Masking (fairseq notation, see module docstring):
        mask_time_prob, mask_time_length, mask_time_min_masks; mask_feature_prob,
        mask_feature_length, mask_feature_min_masks (SpecAugment channel masking).
        apply_spec_augment: apply time/channel masking in ``SpeechEncoderForCTC`` training.

    Objectives (``objective`` = "wav2vec2" or "hubert"):
        num_codevector_groups (G), num_codevectors_per_group (V), codevector_dim,
        proj_codevector_dim, num_negatives (K), contrastive_logits_temperature (kappa),
        diversity_loss_weight (alpha), feature_penalty_weight (beta),
        gumbel_temperature_max / _min / _decay (tau schedule per update);
        hubert_num_clusters (one K per label set), hubert_final_dim,
        hubert_untie_final_proj, hubert_logit_temperature, hubert_pred_masked_weight,
        hubert_pred_nomask_weight, label_rate (Hz of the targets, a multiple or divisor of the
        frame rate: 50 or 100 for 20 ms frames), hubert_label_rate_tolerance_s,
        hubert_subframe_labels (labels ticking r > 1 times per frame: predict all r of a frame, each
        as its own label set, instead of only the first as fairseq does).

    CTC:
        vocab_size, pad_token_id (= CTC blank), final_dropout, ctc_loss_reduction,
        ctc_zero_infinity.

    Provenance:
        num_pretraining_updates: self-supervised updates these weights have had; 0 for a fresh
            model (`from_preset`, ``hfspeech init``), set by ``hfspeech pretrain``; None when
            unknown (converted checkpoints, hand-built configs). Fine-tuning freezes nothing
            when it is 0 (a frozen random encoder has nothing to give).
    """

    model_type = "speech_encoder"
    keys_to_ignore_at_inference = ["sample_size"]  # Trainer: predictions are the logits alone (CTC output)

    def __init__(
        self,
        # feature encoder
        conv_dim: tuple[int, ...] | list[int] = (512,) * 7,
        conv_kernel: tuple[int, ...] | list[int] = (10, 3, 3, 3, 3, 2, 2),
        conv_stride: tuple[int, ...] | list[int] = (5, 2, 2, 2, 2, 2, 2),
        conv_bias: bool = False,
        feat_extract_norm: str = "group",
        feature_frontend: str = "waveform",
        num_mel_bins: int = 80,
        filterbank_stack: int = 1,
        # transformer
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        layer_norm_first: bool = False,
        num_conv_pos_embeddings: int = 128,
        num_conv_pos_embedding_groups: int = 16,
        hidden_dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation_dropout: float = 0.0,
        feat_proj_dropout: float = 0.1,
        feat_quantizer_dropout: float = 0.0,
        layerdrop: float = 0.05,
        layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        feature_grad_mult: float = 1.0,
        # masking
        apply_spec_augment: bool = True,
        mask_time_prob: float = 0.05,
        mask_time_length: int = 10,
        mask_time_min_masks: int = 2,
        mask_feature_prob: float = 0.0,
        mask_feature_length: int = 10,
        mask_feature_min_masks: int = 0,
        # objectives
        objective: str = "wav2vec2",
        num_codevector_groups: int = 2,
        num_codevectors_per_group: int = 320,
        codevector_dim: int = 256,
        proj_codevector_dim: int = 256,
        num_negatives: int = 100,
        contrastive_logits_temperature: float = 0.1,
        diversity_loss_weight: float = 0.1,
        feature_penalty_weight: float = 10.0,
        gumbel_temperature_max: float = 2.0,
        gumbel_temperature_min: float = 0.5,
        gumbel_temperature_decay: float = 0.999995,
        hubert_num_clusters: tuple[int, ...] | list[int] = (100,),
        hubert_final_dim: int = 256,
        hubert_untie_final_proj: bool = True,
        hubert_logit_temperature: float = 0.1,
        hubert_pred_masked_weight: float = 1.0,
        hubert_pred_nomask_weight: float = 0.0,
        label_rate: int = 50,
        hubert_label_rate_tolerance_s: float = 0.1,
        hubert_subframe_labels: bool = False,
        # CTC
        vocab_size: int = 32,
        final_dropout: float = 0.0,
        ctc_loss_reduction: str = "mean",
        ctc_zero_infinity: bool = True,
        pad_token_id: int = 0,
        num_pretraining_updates: int | None = None,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        **kwargs: Any,
    ) -> None:
        self.conv_dim = list(conv_dim)
        self.conv_kernel = list(conv_kernel)
        self.conv_stride = list(conv_stride)
        if not (len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride)):
            raise ValueError(
                "conv_dim, conv_kernel and conv_stride must have one entry per conv layer; got "
                f"{len(self.conv_dim)}, {len(self.conv_kernel)}, {len(self.conv_stride)}."
            )
        if feature_frontend not in FEATURE_FRONTENDS:
            raise ValueError(f"feature_frontend must be one of {FEATURE_FRONTENDS}, got {feature_frontend!r}.")
        if num_mel_bins < 1:
            raise ValueError(f"num_mel_bins must be positive, got {num_mel_bins}.")
        ratio = math.prod(conv_stride)
        if filterbank_stack < 1 or ratio % filterbank_stack:
            raise ValueError(f"filterbank_stack must be a positive divisor of the {ratio} samples per frame "
                             f"(the product of conv_stride), got {filterbank_stack}.")
        if feat_extract_norm not in ("group", "layer"):
            raise ValueError(f"feat_extract_norm must be 'group' or 'layer', got {feat_extract_norm!r}.")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
        if hidden_size % num_attention_heads:
            raise ValueError(
                f"hidden_size ({hidden_size}) must be divisible by num_attention_heads ({num_attention_heads})."
            )
        if codevector_dim % num_codevector_groups:
            raise ValueError(
                f"codevector_dim ({codevector_dim}) must be divisible by num_codevector_groups "
                f"({num_codevector_groups})."
            )
        frame_rate = SAMPLE_RATE / ratio
        if label_rate <= 0 or (label_rate % frame_rate and frame_rate % label_rate):
            raise ValueError(f"label_rate must be a positive multiple or divisor of the frame rate ({frame_rate:g} Hz "
                             f"for {ratio}-sample frames; 100 for MFCC labels), got {label_rate}.")
        self.conv_bias = conv_bias
        self.feature_frontend = feature_frontend
        self.num_mel_bins = num_mel_bins
        self.filterbank_stack = filterbank_stack
        self.feat_extract_norm = feat_extract_norm
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.layer_norm_first = layer_norm_first
        self.num_conv_pos_embeddings = num_conv_pos_embeddings
        self.num_conv_pos_embedding_groups = num_conv_pos_embedding_groups
        self.hidden_dropout = hidden_dropout
        self.attention_dropout = attention_dropout
        self.activation_dropout = activation_dropout
        self.feat_proj_dropout = feat_proj_dropout
        self.feat_quantizer_dropout = feat_quantizer_dropout
        self.layerdrop = layerdrop
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.feature_grad_mult = feature_grad_mult
        self.apply_spec_augment = apply_spec_augment
        self.mask_time_prob = mask_time_prob
        self.mask_time_length = mask_time_length
        self.mask_time_min_masks = mask_time_min_masks
        self.mask_feature_prob = mask_feature_prob
        self.mask_feature_length = mask_feature_length
        self.mask_feature_min_masks = mask_feature_min_masks
        self.objective = objective
        self.num_codevector_groups = num_codevector_groups
        self.num_codevectors_per_group = num_codevectors_per_group
        self.codevector_dim = codevector_dim
        self.proj_codevector_dim = proj_codevector_dim
        self.num_negatives = num_negatives
        self.contrastive_logits_temperature = contrastive_logits_temperature
        self.diversity_loss_weight = diversity_loss_weight
        self.feature_penalty_weight = feature_penalty_weight
        self.gumbel_temperature_max = gumbel_temperature_max
        self.gumbel_temperature_min = gumbel_temperature_min
        self.gumbel_temperature_decay = gumbel_temperature_decay
        self.hubert_num_clusters = list(hubert_num_clusters)
        self.hubert_final_dim = hubert_final_dim
        self.hubert_untie_final_proj = hubert_untie_final_proj
        self.hubert_logit_temperature = hubert_logit_temperature
        self.hubert_pred_masked_weight = hubert_pred_masked_weight
        self.hubert_pred_nomask_weight = hubert_pred_nomask_weight
        self.label_rate = label_rate
        self.hubert_label_rate_tolerance_s = hubert_label_rate_tolerance_s
        self.hubert_subframe_labels = hubert_subframe_labels
        self.vocab_size = vocab_size
        self.final_dropout = final_dropout
        self.ctc_loss_reduction = ctc_loss_reduction
        self.ctc_zero_infinity = ctc_zero_infinity
        self.num_pretraining_updates = num_pretraining_updates
        super().__init__(
            pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs
        )

    @property
    def feature_dim(self) -> int:
        """Channels of the front-end's output: ``conv_dim[-1]``, or ``num_mel_bins * filterbank_stack`` for the filterbank."""
        return self.num_mel_bins * self.filterbank_stack if self.feature_frontend == "filterbank" else self.conv_dim[-1]

    @property
    def num_feat_extract_layers(self) -> int:
        return len(self.conv_dim)

    @property
    def inputs_to_logits_ratio(self) -> int:
        """Samples per output frame (320 at 16 kHz = 20 ms); used by transformers' ASR pipeline."""
        return math.prod(self.conv_stride)

    @property
    def frame_rate(self) -> float:
        """Output frames per second of 16 kHz audio (50 for 20 ms frames)."""
        return SAMPLE_RATE / self.inputs_to_logits_ratio

    @property
    def receptive_field(self) -> int:
        """Samples the conv feature encoder needs for one output frame (400 = 25 ms)."""
        return conv_receptive_field(self.conv_kernel, self.conv_stride)

    @classmethod
    def from_preset(cls, name: str, objective: str = "wav2vec2", **overrides: Any) -> "SpeechEncoderConfig":
        """Build the config of a paper-sized model (``tiny``, ``base``, ``large``, ``xlarge``).

        ``objective`` selects fairseq's pretraining settings for that size (masking, dropouts,
        layerdrop, gamma, temperature floor); ``overrides`` replace any field afterwards.
        """
        if name not in _BACKBONE_PRESETS:
            raise ValueError(
                f"Unknown preset {name!r}; choose one of {sorted(_BACKBONE_PRESETS)} "
                "(or build SpeechEncoderConfig(...) with explicit fields)."
            )
        if objective not in OBJECTIVES:
            raise ValueError(f"Unknown objective {objective!r}; choose one of {OBJECTIVES}.")
        size_class = "big" if name in ("large", "xlarge") else "small"
        fields: dict[str, Any] = {"objective": objective, "num_pretraining_updates": 0}
        fields.update(_OBJECTIVE_PRESETS[(objective, size_class)])
        fields.update(_BACKBONE_PRESETS[name])
        if name == "tiny":
            fields.update(layerdrop=0.0)
        fields.update(overrides)
        return cls(**fields)


PRESET_NAMES = tuple(_BACKBONE_PRESETS)

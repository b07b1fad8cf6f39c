"""`SpeechEncoderModel` (backbone), `SpeechEncoderForCTC` and the shared base class.

`SpeechEncoderForPreTraining` lives in ``pretraining.py``: it composes this backbone with
the objective chosen by ``config.objective``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import CausalLMOutput
from transformers.utils import ModelOutput

from ..configuration import SpeechEncoderConfig
from .dropout import Dropout
from .encoder import PositionalConvEmbedding, TransformerEncoder
from .feature_encoder import FeatureEncoder, FeatureProjection, scale_gradient
from .filterbank import FilterbankEncoder, feature_frame_lengths, frontend_receptive_field
from .host_reads import host_reads_allowed


@dataclass
class SpeechEncoderOutput(ModelOutput):
    """Outputs of `SpeechEncoderModel`.

    Attributes:
        last_hidden_state: (B, T, H) output of the last Transformer layer.
        extract_features: (B, T, C) layer-normed conv features before projection and masking
            (the quantizer's input in wav2vec 2.0).
        hidden_states: optional tuple of L+1 tensors (B, T, H) (see `TransformerEncoder`).
        frame_mask: (B, T) bool, True on valid (non-padding) frames.
        feature_penalty: scalar, mean squared conv feature over valid frames (fairseq's
            ``features_pen``), used by the pretraining objectives.
        mask_time_indices: (B, T) bool frames replaced by the mask embedding, or None.
    """

    last_hidden_state: torch.Tensor | None = None
    extract_features: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    frame_mask: torch.Tensor | None = None
    feature_penalty: torch.Tensor | None = None
    mask_time_indices: torch.Tensor | None = None


class SpeechEncoderPreTrainedModel(PreTrainedModel):
    """Weight initialisation, config class and helpers shared by every hfspeech model."""

    config_class = SpeechEncoderConfig
    base_model_prefix = "speech_encoder"
    main_input_name = "input_values"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    input_modalities = ("audio",)

    def set_num_updates(self, num_updates: int) -> None:
        """The training loop's count of applied optimizer updates; models whose training depends on it
        (the Gumbel temperature of wav2vec 2.0 pretraining) override this."""

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """fairseq's initialisation, module by module.

        transformers calls this for every module, children before parents, and (hfspeech being
        "custom code" to it) skips modules without parameters of their own, so container modules
        (`FeatureProjection`, `PositionalConvEmbedding`) never get a call: the backbone's branch,
        which comes after all of its children, initialises them.
        """
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv1d) and not hasattr(module, "parametrizations"):
            init.kaiming_normal_(module.weight)
            if module.bias is not None:
                bound = math.sqrt(module.groups / (module.in_channels * module.kernel_size[0]))
                init.uniform_(module.bias, a=-bound, b=bound)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or type(module).__name__ == "MaskedChannelNorm":
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, FilterbankEncoder):
            module.reset_buffers()
        elif isinstance(module, SpeechEncoderModel):
            init.uniform_(module.masked_spec_embed)
            _init_feature_projection(module.feature_projection)
            _init_positional_conv(module.encoder.pos_conv)
        init_objective = getattr(module, "init_weights_", None)
        if callable(init_objective):
            init_objective()

    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        """(B,) samples -> (B,) frames of the front-end (conv feature encoder or filterbank)."""
        return feature_frame_lengths(sample_lengths, self.config)


def _init_feature_projection(projection: FeatureProjection) -> None:
    """PyTorch's default Linear init, U(+-1/sqrt(C)), as fairseq's ``post_extract_proj``."""
    bound = math.sqrt(1 / projection.projection.in_features)
    init.uniform_(projection.projection.weight, a=-bound, b=bound)
    init.uniform_(projection.projection.bias, a=-bound, b=bound)


def _init_positional_conv(module: PositionalConvEmbedding) -> None:
    """fairseq: weight ~ N(0, 4 / (kernel * H)), weight norm's magnitude = the initial norm, bias 0."""
    conv = module.conv
    kernel, channels = conv.kernel_size[0], conv.in_channels
    direction = conv.parametrizations.weight.original1
    magnitude = conv.parametrizations.weight.original0
    init.normal_(direction, mean=0.0, std=2 * math.sqrt(1 / (kernel * channels)))
    if not getattr(magnitude, "_is_hf_initialized", False):
        magnitude.copy_(torch.linalg.vector_norm(direction, dim=(0, 1), keepdim=True))
    init.zeros_(conv.bias)


def _check_input(input_values: torch.Tensor, attention_mask: torch.Tensor | None, receptive_field: int) -> None:
    if input_values.dim() != 2:
        raise ValueError(
            f"input_values must have shape (batch, samples), got {tuple(input_values.shape)}. "
            "Down-mix multi-channel audio to mono and batch utterances with the feature extractor."
        )
    if not torch.is_floating_point(input_values):
        raise ValueError(
            f"input_values must be floating point, got {input_values.dtype}; convert integer PCM to "
            "float in [-1, 1] (the feature extractor does this check too)."
        )
    if attention_mask is None:
        shortest = input_values.shape[1]
    elif host_reads_allowed(attention_mask) and attention_mask.shape[0]:
        shortest = int(attention_mask.sum(-1).min())
    else:  # the GPU path reads no values (`host_reads`); the collators drop utterances this short
        return
    if shortest < receptive_field:
        raise ValueError(
            f"An utterance has {shortest} samples, fewer than the feature encoder's receptive field "
            f"({receptive_field} samples = {receptive_field / 16000 * 1000:.0f} ms at 16 kHz); "
            "drop or pad such utterances before the model."
        )


class SpeechEncoderModel(SpeechEncoderPreTrainedModel):
    """The wav2vec 2.0 / HuBERT backbone: waveform (B, S) -> contextual frames (B, T, H) at 50 Hz.

    The front-end is the papers' conv feature encoder, or with ``config.feature_frontend =
    "filterbank"`` parameter-free log-mel energies on the same frames (`FilterbankEncoder`).
    """

    def __init__(self, config: SpeechEncoderConfig) -> None:
        super().__init__(config)
        self.feature_encoder = FilterbankEncoder(config) if config.feature_frontend == "filterbank" \
            else FeatureEncoder(config)
        self.feature_projection = FeatureProjection(config)
        self.masked_spec_embed = nn.Parameter(torch.empty(config.hidden_size))
        self.encoder = TransformerEncoder(config)
        self.post_init()

    def freeze_feature_encoder(self) -> None:
        """Stop gradients into the conv feature encoder (as in fine-tuning)."""
        for parameter in self.feature_encoder.parameters():
            parameter.requires_grad = False

    def apply_spec_augment(
        self, hidden: torch.Tensor, frame_mask: torch.Tensor, mask_time_indices: torch.Tensor | None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Replace masked frames by the learned mask embedding and zero masked channels.

        Explicit ``mask_time_indices`` (B, T) are always applied; otherwise, in training with
        ``config.apply_spec_augment``, time and channel masks are drawn from the config.
        """
        config = self.config
        augment = self.training and config.apply_spec_augment
        if mask_time_indices is None and augment and config.mask_time_prob > 0:
            from .masking import compute_span_mask

            mask_time_indices = compute_span_mask(
                hidden.shape[0], hidden.shape[1], config.mask_time_prob, config.mask_time_length,
                min_masks=config.mask_time_min_masks, frame_lengths=frame_mask.sum(-1),
                generator=generator, device=hidden.device,
            )
        if mask_time_indices is not None:
            mask = mask_time_indices.to(torch.bool)[..., None]
            hidden = torch.where(mask, self.masked_spec_embed.to(hidden.dtype), hidden)
        if augment and config.mask_feature_prob > 0:
            from .masking import compute_channel_mask

            channel_mask = compute_channel_mask(
                hidden.shape[0], hidden.shape[2], config.mask_feature_prob, config.mask_feature_length,
                min_masks=config.mask_feature_min_masks, generator=generator, device=hidden.device,
            )
            hidden = hidden.masked_fill(channel_mask[:, None, :], 0.0)
        return hidden, mask_time_indices

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mask_time_indices: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        generator: torch.Generator | None = None,
        **kwargs,
    ) -> SpeechEncoderOutput:
        """Encode a batch of waveforms.

        Args:
            input_values: (B, S) float waveforms at 16 kHz (normalised by the feature extractor).
            attention_mask: (B, S) 1 on valid samples, 0 on right padding; None = no padding.
            mask_time_indices: (B, T) bool frames to replace by the mask embedding.
            output_hidden_states: also return the input and output of every layer.
            generator: seeds SpecAugment masking in training.
        """
        _check_input(input_values, attention_mask, frontend_receptive_field(self.config))
        sample_lengths = attention_mask.sum(-1) if attention_mask is not None else None
        features = self.feature_encoder(input_values, sample_lengths)  # (B, T, C)
        features = scale_gradient(features, self.config.feature_grad_mult)
        batch, frames = features.shape[:2]
        if sample_lengths is not None:
            frame_lengths = self.frame_lengths(sample_lengths)
            frame_mask = torch.arange(frames, device=features.device)[None, :] < frame_lengths[:, None]
        else:
            frame_mask = torch.ones(batch, frames, dtype=torch.bool, device=features.device)
        if self.config.feature_frontend == "filterbank":  # nothing to learn in front of the features
            feature_penalty = features.new_zeros((), dtype=torch.float32)
        else:
            valid = frame_mask[..., None].to(features.dtype)
            feature_penalty = (features.float().pow(2) * valid).sum() / (valid.sum() * features.shape[-1])
        hidden, extract_features = self.feature_projection(features)
        hidden, mask_time_indices = self.apply_spec_augment(hidden, frame_mask, mask_time_indices, generator)
        last, all_hidden = self.encoder(hidden, frame_mask, output_hidden_states=bool(output_hidden_states))
        return SpeechEncoderOutput(
            last_hidden_state=last, extract_features=extract_features, hidden_states=all_hidden,
            frame_mask=frame_mask, feature_penalty=feature_penalty, mask_time_indices=mask_time_indices,
        )


@dataclass
class SpeechEncoderCTCOutput(CausalLMOutput):
    """`CausalLMOutput` (``loss``, ``logits`` (B, T, vocab), ``hidden_states``) plus what the training loop
    reads: ``sample_size``, what ``loss`` sums over (1 for the batch mean of ``ctc_loss_reduction="mean"``,
    the number of utterances for "sum"). `transformers.Trainer` leaves it out of its predictions
    (``SpeechEncoderConfig.keys_to_ignore_at_inference``), so they stay the logits."""

    sample_size: torch.Tensor | None = None

    def metrics(self) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """No metric beyond the loss (the dev WER/CER is measured by decoding)."""
        return {}


class SpeechEncoderForCTC(SpeechEncoderPreTrainedModel):
    """Backbone + dropout + linear CTC head over the tokenizer's vocabulary (blank = pad id)."""

    def __init__(self, config: SpeechEncoderConfig) -> None:
        super().__init__(config)
        self.speech_encoder = SpeechEncoderModel(config)
        self.dropout = Dropout(config.final_dropout)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        # fairseq's freeze_finetune_updates: while True the backbone runs without gradients
        # (only the CTC head learns); the training loop switches it off after N updates.
        self.backbone_frozen = False
        self.post_init()

    def freeze_feature_encoder(self) -> None:
        """Stop gradients into the conv feature encoder (fairseq fine-tuning keeps it frozen)."""
        self.speech_encoder.freeze_feature_encoder()

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        mask_time_indices: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SpeechEncoderCTCOutput:
        """Args as `SpeechEncoderModel.forward`, plus ``labels`` (B, L) token ids padded with -100.

        Returns ``logits`` (B, T, vocab) and, with labels, the CTC loss (``config.ctc_loss_reduction``:
        "mean" divides each utterance's loss by its label length, then averages, as torch does).
        """
        if labels is not None:
            self._check_labels(labels)
        with torch.no_grad() if self.backbone_frozen else contextlib.nullcontext():
            outputs = self.speech_encoder(
                input_values, attention_mask=attention_mask, mask_time_indices=mask_time_indices,
                output_hidden_states=output_hidden_states,
            )
        logits = self.lm_head(self.dropout(outputs.last_hidden_state))
        loss = sample_size = None
        if labels is not None:
            loss = self.ctc_loss(logits, outputs.frame_mask.sum(-1), labels)
            sample_size = torch.tensor(1.0 if self.config.ctc_loss_reduction == "mean" else labels.shape[0],
                                       device=logits.device)
        return SpeechEncoderCTCOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                      sample_size=sample_size)

    def _check_labels(self, labels: torch.Tensor) -> None:
        """Ids below vocab_size, -100 padding on the right only (read on CPU only, see `host_reads`)."""
        if not host_reads_allowed(labels) or not labels.numel():
            return
        if int(labels.max()) >= self.config.vocab_size:
            raise ValueError(
                f"labels contain id {int(labels.max())} but the CTC head has vocab_size="
                f"{self.config.vocab_size}; build the model from the tokenizer (vocab_size=len(tokenizer))."
            )
        valid = labels >= 0
        if bool((valid != (torch.arange(labels.shape[1]) < valid.sum(-1, keepdim=True))).any()):
            raise ValueError("labels must hold each transcript's ids first and -100 padding after them (right "
                             "padding), as hfspeech's CTCCollator pads them.")

    def ctc_loss(self, logits: torch.Tensor, frame_lengths: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """CTC loss of logits (B, T, V) with valid frame counts (B,) against labels (B, L) (-100 = right padding).

        The padded (B, L) targets go to ``F.ctc_loss`` as they are (it reads the first
        ``target_lengths[b]`` of row b), so no data-dependent selection syncs a GPU."""
        valid = labels >= 0
        target_lengths = valid.sum(-1)
        targets = labels.clamp_min(0)
        log_probs = F.log_softmax(logits, dim=-1, dtype=torch.float32).transpose(0, 1)
        # (B, L) long targets on the logits' device: torch's own kernel, never cuDNN's (which takes
        # 1-D int32 CPU targets and needs blank 0), so GPU and CPU compute the same loss. The one
        # host read left on a GPU is inside it: torch copies the (B,) lengths to the host to size
        # its alpha table (and dynamo leaves the op out of the compiled graphs for that reason).
        return F.ctc_loss(
            log_probs, targets, frame_lengths, target_lengths, blank=self.config.pad_token_id,
            reduction=self.config.ctc_loss_reduction, zero_infinity=self.config.ctc_zero_infinity,
        )

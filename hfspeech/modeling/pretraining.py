"""`SpeechEncoderForPreTraining`: the backbone + the objective chosen by ``config.objective``.

Masks (and wav2vec 2.0 negatives) are drawn here, on the model's device, from a
``torch.Generator``; explicit ``mask_time_indices`` / ``sampled_negative_indices`` make a
step reproducible (transformers-compatible arguments).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..configuration import SpeechEncoderConfig
from .dropout import Dropout
from .filterbank import feature_frame_lengths
from .models import SpeechEncoderModel, SpeechEncoderPreTrainedModel

logger = logging.getLogger(__name__)


def build_objective(config: SpeechEncoderConfig) -> nn.Module:
    """The objective module of ``config.objective`` ("wav2vec2" or "hubert")."""
    if config.objective == "wav2vec2":
        from .objectives.wav2vec2 import Wav2Vec2Objective

        return Wav2Vec2Objective(config)
    if config.objective == "hubert":
        from .objectives.hubert import HubertObjective

        return HubertObjective(config)
    raise ValueError(f"config.objective must be 'wav2vec2' or 'hubert', got {config.objective!r}.")


class SpeechEncoderForPreTraining(SpeechEncoderPreTrainedModel):
    """Self-supervised pretraining: wav2vec 2.0 (contrastive + diversity) or HuBERT (masked prediction).

    ``from_pretrained`` of this class into `SpeechEncoderForCTC` keeps the backbone
    (``speech_encoder.*``) and drops the objective weights (``objective.*``).
    """

    def __init__(self, config: SpeechEncoderConfig) -> None:
        super().__init__(config)
        self.speech_encoder = SpeechEncoderModel(config)
        self.dropout_features = Dropout(config.feat_quantizer_dropout)
        self.objective = build_objective(config)
        self.post_init()

    def set_num_updates(self, num_updates: int) -> None:
        """Advance per-update schedules (the Gumbel temperature); call once per optimizer step."""
        if hasattr(self.objective, "set_num_updates"):
            self.objective.set_num_updates(num_updates)

    def compute_mask(
        self, batch_size: int, num_frames: int, frame_lengths: torch.Tensor | None,
        generator: torch.Generator | None, device: torch.device,
    ) -> torch.Tensor:
        """Span mask (B, T) with the config's probability/length (fairseq semantics)."""
        from .masking import compute_span_mask

        config = self.config
        return compute_span_mask(
            batch_size, num_frames, config.mask_time_prob, config.mask_time_length,
            min_masks=config.mask_time_min_masks, frame_lengths=frame_lengths,
            generator=generator, device=device,
        )

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | list[torch.Tensor] | None = None,
        mask_time_indices: torch.Tensor | None = None,
        sampled_negative_indices: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        output_hidden_states: bool | None = None,
        utterance_ids: list[str] | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ):
        """One pretraining forward pass.

        Args:
            input_values: (B, S) waveforms; attention_mask: (B, S) 1 = valid sample.
            labels: HuBERT only: (B, T_label) cluster ids at ``config.label_rate`` Hz, -100 =
                padding, or a list of such tensors (one per label set / cluster ensemble).
            mask_time_indices: (B, T) bool; drawn from the config when None.
            sampled_negative_indices: wav2vec 2.0 only, explicit negatives (see masking).
            generator: seeds the mask and negative sampling.
            utterance_ids: names used in label-length errors.
        Returns the objective's output (loss and its parts, accuracies, ...).
        """
        batch_size, num_samples = input_values.shape
        sample_lengths = attention_mask.sum(-1) if attention_mask is not None else None
        num_frames = feature_frame_lengths(num_samples, self.config)
        frame_lengths = self.frame_lengths(sample_lengths) if sample_lengths is not None else None
        if mask_time_indices is None:
            mask_time_indices = self.compute_mask(batch_size, num_frames, frame_lengths, generator, input_values.device)
        outputs = self.speech_encoder(
            input_values, attention_mask=attention_mask, mask_time_indices=mask_time_indices,
            output_hidden_states=output_hidden_states, generator=generator,
        )
        mask = mask_time_indices.to(torch.bool) & outputs.frame_mask
        if self.config.objective == "wav2vec2":
            result = self.objective(
                hidden_states=outputs.last_hidden_state,
                extract_features=self.dropout_features(outputs.extract_features),
                mask_time_indices=mask, frame_mask=outputs.frame_mask,
                feature_penalty=outputs.feature_penalty,
                sampled_negative_indices=sampled_negative_indices, generator=generator,
            )
        else:
            if labels is None:
                raise ValueError("HuBERT pretraining needs `labels` (cluster ids per frame or per 10 ms).")
            from .objectives.hubert import align_labels_to_frames, labels_per_frame

            label_sets = labels if isinstance(labels, (list, tuple)) else [labels]
            if len(label_sets) != len(self.config.hubert_num_clusters):
                raise ValueError(
                    f"Got {len(label_sets)} label sets but the model predicts "
                    f"{len(self.config.hubert_num_clusters)} (config.hubert_num_clusters="
                    f"{self.config.hubert_num_clusters})."
                )
            frames = outputs.frame_mask.sum(-1)
            aligned = [
                align_labels_to_frames(
                    label_set, self.config.label_rate, num_frames, frames, utterance_ids=utterance_ids,
                    tolerance_s=self.config.hubert_label_rate_tolerance_s, frame_rate=self.config.frame_rate,
                    offset=offset,
                )
                for label_set in label_sets for offset in range(labels_per_frame(self.config))
            ]
            result = self.objective(
                hidden_states=outputs.last_hidden_state, mask_time_indices=mask,
                frame_mask=outputs.frame_mask, labels=aligned, feature_penalty=outputs.feature_penalty,
            )
        if output_hidden_states:
            result["hidden_states"] = outputs.hidden_states
        return result

"""`SpeechProcessor`: one object that prepares audio and CTC labels and decodes predictions."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import PaddingStrategy, TensorType

from .feature_extraction import RawSpeech, SpeechFeatureExtractor
from ..data.collators import IGNORE_INDEX, pad_labels
from .tokenization import CharacterCTCTokenizer


class SpeechProcessor(ProcessorMixin):
    """`SpeechFeatureExtractor` + `CharacterCTCTokenizer` behind one ``__call__``/``decode``.

    ``processor(audio=..., sampling_rate=16000, text=...)`` returns ``input_values``,
    ``attention_mask`` and ``labels`` (padded with -100) ready for ``SpeechEncoderForCTC``;
    ``processor.batch_decode(logits.argmax(-1))`` turns greedy CTC outputs into text.
    ``save_pretrained``/``from_pretrained`` write and read ``processor_config.json`` (holding the
    feature extractor's settings), ``vocab.json`` and ``tokenizer_config.json``.
    """

    def __init__(self, feature_extractor: SpeechFeatureExtractor, tokenizer: CharacterCTCTokenizer) -> None:
        super().__init__(feature_extractor, tokenizer)

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike,
                                       processor_dict: dict | None = None, **kwargs: Any) -> list:
        # Load our own classes directly, so loading works whether or not they are registered
        # with the Auto* factories (register_auto_classes) for the directory's model type.
        kwargs.pop("_from_auto", None)
        kwargs.pop("trust_remote_code", None)
        return [SpeechFeatureExtractor.from_pretrained(pretrained_model_name_or_path, **kwargs),
                CharacterCTCTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs)]

    def __call__(
        self,
        audio: RawSpeech | None = None,
        text: str | Sequence[str] | None = None,
        sampling_rate: int | None = None,
        padding: bool | str | PaddingStrategy = "longest",
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | TensorType | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Prepare audio, transcripts, or both.

        Args:
            audio: one ``(num_samples,)`` waveform or a list of them (see `SpeechFeatureExtractor`).
            text: one transcript or a list, one per utterance of ``audio``.
            sampling_rate: rate of ``audio`` in Hz (required with ``audio``).
            padding, max_length, pad_to_multiple_of, return_attention_mask: audio padding,
                as in `SpeechFeatureExtractor.__call__`.
            return_tensors: ``"pt"``, ``"np"`` or ``None``.

        Returns:
            `BatchFeature` with ``input_values`` ``(batch, time)`` and ``attention_mask``
            ``(batch, time)`` when ``audio`` is given, and ``labels`` ``(batch, max_label_length)``
            (-100 after each transcript) when ``text`` is given.
        """
        if kwargs:
            raise ValueError(f"Unexpected argument(s) {sorted(kwargs)} for SpeechProcessor.__call__.")
        if audio is None and text is None:
            raise ValueError("SpeechProcessor needs audio=..., text=..., or both.")
        output: dict[str, Any] = {}
        if audio is not None:
            output.update(self.feature_extractor(
                audio, sampling_rate=sampling_rate, padding=padding, max_length=max_length,
                pad_to_multiple_of=pad_to_multiple_of, return_attention_mask=return_attention_mask,
                return_tensors=return_tensors))
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            if not all(isinstance(t, str) for t in texts):
                raise ValueError("text must be a str or a list of str (one transcript per utterance).")
            if audio is not None and len(texts) != len(output["input_values"]):
                raise ValueError(f"Got {len(output['input_values'])} audio utterance(s) but {len(texts)} "
                                 f"transcript(s): pass exactly one transcript per utterance.")
            label_ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
            output["labels"] = pad_labels(label_ids, return_tensors=return_tensors)
        return BatchFeature(output)

    def pad(self, features: Sequence[dict[str, Any]], padding: bool | str = "longest",
            pad_to_multiple_of: int | None = None, return_tensors: str | TensorType = "pt") -> BatchFeature:
        """Collate already-processed examples (a ``DataLoader``/``Trainer`` ``collate_fn``).

        Args:
            features: dicts with ``input_values`` (``(num_samples,)``, already normalised) and
                optionally ``labels`` (token ids; trailing -100 padding is removed first).

        Returns:
            `BatchFeature` with ``input_values``/``attention_mask`` ``(batch, time)`` padded with
            ``padding_value``/0, and ``labels`` ``(batch, max_label_length)`` padded with -100.
        """
        if len(features) == 0:
            raise ValueError("pad got an empty list of examples.")
        with_labels = ["labels" in example for example in features]
        if any(with_labels) and not all(with_labels):
            raise ValueError(f"Examples {[i for i, x in enumerate(with_labels) if not x]} have no 'labels' while "
                             f"others do: collate labelled and unlabelled examples separately.")
        audio = [{"input_values": example["input_values"]} for example in features]
        batch = self.feature_extractor.pad(audio, padding=padding, pad_to_multiple_of=pad_to_multiple_of,
                                           return_attention_mask=True, return_tensors=return_tensors)
        if all(with_labels):
            label_ids = []
            for example in features:
                ids = [int(i) for i in example["labels"]]
                while ids and ids[-1] == IGNORE_INDEX:  # labels that were already padded
                    ids.pop()
                label_ids.append(ids)
            batch["labels"] = pad_labels(label_ids, return_tensors=return_tensors)
        return batch

    @property
    def model_input_names(self) -> list[str]:
        return list(self.feature_extractor.model_input_names) + ["labels"]

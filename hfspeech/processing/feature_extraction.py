"""`SpeechFeatureExtractor`: raw 16 kHz mono waveforms -> normalised, padded ``input_values``.

wav2vec 2.0 and HuBERT read the waveform itself; the only preprocessing is a per-utterance
zero-mean/unit-variance normalisation (fairseq's ``normalize=True``, transformers'
``Wav2Vec2FeatureExtractor(do_normalize=True)``). Here the statistics are always taken over
the utterance's own samples, *before* padding, so an utterance gets the same values whether
it is processed alone or padded inside a batch, and padding stays exactly ``padding_value``.

Nothing is fixed up silently: a wrong or missing sampling rate, stereo or integer audio,
non-finite samples and clips shorter than the model's receptive field raise ``ValueError``
naming the utterance and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import PaddingStrategy, TensorType

# Receptive field of the wav2vec 2.0 / HuBERT conv feature encoder (kernels 10,3,3,3,3,2,2;
# strides 5,2,2,2,2,2,2): 400 samples = 25 ms at 16 kHz gives the first output frame.
WAV2VEC2_RECEPTIVE_FIELD = 400

AudioArray = Union[np.ndarray, Sequence[float]]
RawSpeech = Union[AudioArray, Sequence[AudioArray]]


class SpeechFeatureExtractor(SequenceFeatureExtractor):
    """Turn mono float waveforms into the ``input_values``/``attention_mask`` of a speech encoder.

    Args:
        feature_size: features per time step; 1 for raw waveforms.
        sampling_rate: the rate (Hz) the model was trained at; inputs must already have it.
        padding_value: value written into padded positions (also after normalisation).
        do_normalize: normalise every utterance to zero mean / unit variance over its own samples.
        return_attention_mask: return ``attention_mask`` (1 = real sample, 0 = padding) by default.
        min_num_samples: shortest accepted utterance; default 400 = the wav2vec 2.0 conv stack's
            receptive field (one output frame). Use ``SpeechEncoderConfig.receptive_field``.
        normalization_epsilon: added to the variance before the square root (transformers uses
            1e-7; fairseq's ``F.layer_norm`` uses 1e-5).
        padding_side: ``"right"`` (default) or ``"left"``.
    """

    model_input_names = ["input_values", "attention_mask"]

    def __init__(
        self,
        feature_size: int = 1,
        sampling_rate: int = 16000,
        padding_value: float = 0.0,
        do_normalize: bool = True,
        return_attention_mask: bool = True,
        min_num_samples: int = WAV2VEC2_RECEPTIVE_FIELD,
        normalization_epsilon: float = 1e-7,
        **kwargs: Any,
    ) -> None:
        if feature_size != 1:
            raise ValueError(f"SpeechFeatureExtractor reads raw waveforms: feature_size must be 1, got {feature_size}.")
        if not isinstance(sampling_rate, int) or sampling_rate <= 0:
            raise ValueError(f"sampling_rate must be a positive integer (Hz), got {sampling_rate!r}.")
        if not isinstance(min_num_samples, int) or min_num_samples < 1:
            raise ValueError(f"min_num_samples must be a positive integer, got {min_num_samples!r}.")
        if normalization_epsilon < 0:
            raise ValueError(f"normalization_epsilon must be >= 0, got {normalization_epsilon}.")
        kwargs.setdefault("padding_side", "right")
        if kwargs["padding_side"] not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {kwargs['padding_side']!r}.")
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value,
                         return_attention_mask=return_attention_mask, **kwargs)
        self.do_normalize = do_normalize
        self.min_num_samples = min_num_samples
        self.normalization_epsilon = normalization_epsilon

    # ------------------------------------------------------------------ validation
    def _check_sampling_rate(self, sampling_rate: int | None) -> None:
        if sampling_rate is None:
            raise ValueError(
                f"sampling_rate is missing: pass the rate of your audio, e.g. "
                f"feature_extractor(audio, sampling_rate={self.sampling_rate}). This model expects "
                f"{self.sampling_rate} Hz audio; it is required so that audio at another rate is never "
                f"processed by mistake."
            )
        if sampling_rate != self.sampling_rate:
            raise ValueError(
                f"sampling_rate={sampling_rate} Hz, but this model expects {self.sampling_rate} Hz audio and "
                f"nothing is resampled implicitly. Resample first, e.g. "
                f"librosa.resample(audio, orig_sr={sampling_rate}, target_sr={self.sampling_rate}) or "
                f"dataset.cast_column('audio', datasets.Audio(sampling_rate={self.sampling_rate}))."
            )

    def _as_utterances(self, raw_speech: RawSpeech) -> list[np.ndarray]:
        """Split the input into a list of per-utterance arrays without changing any sample."""
        if hasattr(raw_speech, "detach"):  # torch.Tensor
            raw_speech = raw_speech.detach().cpu().numpy()
        if isinstance(raw_speech, np.ndarray):
            if raw_speech.ndim >= 2:
                raise ValueError(
                    f"Got one array of shape {tuple(raw_speech.shape)}: only 1-D mono waveforms are accepted. "
                    f"If this is multi-channel (stereo) audio, down-mix it to mono first, e.g. "
                    f"audio.mean(axis=0) for (channels, samples) or audio.mean(axis=1) for (samples, channels). "
                    f"To pass a batch, pass a list of 1-D arrays."
                )
            return [raw_speech]
        if isinstance(raw_speech, (list, tuple)):
            if len(raw_speech) == 0:
                raise ValueError("Got an empty batch (no utterances): pass at least one 1-D waveform.")
            first = raw_speech[0]
            if isinstance(first, (int, float, np.number)):
                return [np.asarray(raw_speech)]
            return [item.detach().cpu().numpy() if hasattr(item, "detach") else np.asarray(item) for item in raw_speech]
        if isinstance(raw_speech, dict):
            raise ValueError("Got a dict (a datasets Audio value?): pass audio['array'] and "
                             "sampling_rate=audio['sampling_rate'] instead.")
        raise ValueError(
            f"Audio must be a 1-D numpy array / list of floats, or a list of them (a batch); "
            f"got {type(raw_speech).__name__}."
        )

    def _validate(self, index: int, utterance: np.ndarray) -> np.ndarray:
        """Check one utterance and return it as float32 (float64 input is rounded, nothing else changes)."""
        where = f"utterance {index}"
        if utterance.ndim == 0:
            raise ValueError(f"{where} is a single number, not a waveform: pass a 1-D array of samples.")
        if utterance.ndim != 1:
            raise ValueError(
                f"{where} has shape {tuple(utterance.shape)}: only 1-D mono waveforms are accepted. "
                f"Down-mix multi-channel (stereo) audio to mono first, e.g. audio.mean(axis=0) for "
                f"(channels, samples) or audio.mean(axis=1) for (samples, channels)."
            )
        if utterance.dtype.kind == "b":
            raise ValueError(f"{where} has dtype bool: expected floating-point samples in [-1, 1].")
        if utterance.dtype.kind in "iu":
            bound = f" / {2 ** (8 * utterance.dtype.itemsize - 1)}" if utterance.dtype.itemsize <= 4 else ""
            raise ValueError(
                f"{where} has integer dtype {utterance.dtype}: expected floating-point samples in [-1, 1]. "
                f"Convert it first, e.g. audio.astype(np.float32){bound} (soundfile.read(path, dtype='float32') "
                f"does this when decoding)."
            )
        if utterance.dtype.kind != "f":
            raise ValueError(f"{where} has dtype {utterance.dtype}: expected real floating-point samples in [-1, 1].")
        if utterance.shape[0] == 0:
            raise ValueError(f"{where} is empty (0 samples): remove it from the batch.")
        if utterance.shape[0] < self.min_num_samples:
            raise ValueError(
                f"{where} has {utterance.shape[0]} samples, fewer than min_num_samples={self.min_num_samples} "
                f"(the model's receptive field, {1000 * self.min_num_samples / self.sampling_rate:g} ms): it cannot "
                f"produce a single output frame. Drop clips this short, or pad them to at least "
                f"{self.min_num_samples} samples."
            )
        finite = np.isfinite(utterance)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise ValueError(
                f"{where} has {bad.size} non-finite (NaN/inf) samples, the first at sample {bad[0]}: "
                f"fix or drop the clip (a corrupted decode or a division by zero upstream)."
            )
        return utterance.astype(np.float32, copy=False)

    def normalize(self, utterance: np.ndarray) -> np.ndarray:
        """Zero-mean, unit-variance normalise one utterance, statistics in float64.

        Args:
            utterance: ``(num_samples,)`` float waveform (valid samples only, no padding).

        Returns:
            ``(num_samples,)`` float32 array ``(x - mean) / sqrt(var + normalization_epsilon)``.
        """
        values = utterance.astype(np.float64)
        mean = values.mean()
        variance = values.var()
        return ((values - mean) / math.sqrt(variance + self.normalization_epsilon)).astype(np.float32)

    # ------------------------------------------------------------------ main entry
    def __call__(
        self,
        raw_speech: RawSpeech,
        sampling_rate: int | None = None,
        padding: bool | str | PaddingStrategy = "longest",
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | TensorType | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Validate, normalise and pad one utterance or a batch.

        Args:
            raw_speech: one ``(num_samples,)`` float waveform (numpy array, list of floats or
                1-D tensor) or a list of them.
            sampling_rate: rate of ``raw_speech`` in Hz; required, must equal ``self.sampling_rate``.
            padding: ``"longest"``/``True`` (pad to the longest utterance), ``"max_length"``
                (pad to ``max_length``; longer utterances raise, they are never truncated) or
                ``"do_not_pad"``/``False`` (a list of arrays of their own lengths).
            max_length: target length for ``padding="max_length"``.
            pad_to_multiple_of: round the padded length up to a multiple of this.
            return_attention_mask: override the extractor's default.
            return_tensors: ``"pt"``, ``"np"`` or ``None`` (a list of numpy arrays).

        Returns:
            `BatchFeature` with ``input_values`` ``(batch, time)`` float32 and ``attention_mask``
            ``(batch, time)`` int32 (1 on real samples). A single utterance gives batch size 1.
        """
        if kwargs.pop("truncation", False):
            raise ValueError("SpeechFeatureExtractor never truncates audio: crop clips explicitly before calling it.")
        if kwargs:
            raise ValueError(f"Unexpected argument(s) {sorted(kwargs)} for SpeechFeatureExtractor.__call__.")
        self._check_sampling_rate(sampling_rate)
        utterances = [self._validate(i, u) for i, u in enumerate(self._as_utterances(raw_speech))]
        if self.do_normalize:
            utterances = [self.normalize(u) for u in utterances]
        return_attention_mask = self.return_attention_mask if return_attention_mask is None else return_attention_mask
        lengths = [u.shape[0] for u in utterances]

        if isinstance(padding, PaddingStrategy):
            strategy = padding
        elif isinstance(padding, bool):
            strategy = PaddingStrategy.LONGEST if padding else PaddingStrategy.DO_NOT_PAD
        elif padding in ("longest", "max_length", "do_not_pad"):
            strategy = PaddingStrategy(padding)
        else:
            raise ValueError(f"padding must be 'longest', 'max_length', 'do_not_pad', True or False; got {padding!r}.")
        if strategy is PaddingStrategy.DO_NOT_PAD:
            if return_tensors is not None and len(set(lengths)) > 1:
                raise ValueError(
                    f"padding='do_not_pad' with return_tensors={return_tensors!r} needs equal lengths, got {lengths}: "
                    f"use padding='longest'."
                )
            target = None
        elif strategy is PaddingStrategy.MAX_LENGTH:
            if max_length is None:
                raise ValueError("padding='max_length' needs max_length (in samples); or use padding='longest'.")
            too_long = [(i, n) for i, n in enumerate(lengths) if n > max_length]
            if too_long:
                raise ValueError(
                    f"utterance {too_long[0][0]} has {too_long[0][1]} samples, more than max_length={max_length}; "
                    f"audio is never truncated: raise max_length or crop/drop the clip first."
                )
            target = max_length
        else:
            target = max(lengths)
        if target is not None and pad_to_multiple_of is not None:
            target = -(-target // pad_to_multiple_of) * pad_to_multiple_of

        if target is None:
            output = {"input_values": utterances}
            if return_attention_mask:
                output["attention_mask"] = [np.ones(n, dtype=np.int32) for n in lengths]
        else:
            input_values = np.full((len(utterances), target), self.padding_value, dtype=np.float32)
            attention_mask = np.zeros((len(utterances), target), dtype=np.int32)
            for row, utterance in enumerate(utterances):
                start = 0 if self.padding_side == "right" else target - utterance.shape[0]
                span = slice(start, start + utterance.shape[0])
                input_values[row, span] = utterance
                attention_mask[row, span] = 1
            output = {"input_values": list(input_values) if return_tensors is None else input_values}
            if return_attention_mask:
                output["attention_mask"] = list(attention_mask) if return_tensors is None else attention_mask
        return BatchFeature(output, tensor_type=return_tensors)

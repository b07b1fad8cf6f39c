"""Padding collators: CTC fine-tuning, wav2vec 2.0 pretraining, HuBERT pretraining.

Every collator takes a list of examples (dicts with ``audio``: 16 kHz mono float32 array
``(S_i,)``) and returns tensors:

- ``input_values`` ``(B, S)`` float32, zero-padded;
- ``attention_mask`` ``(B, S)`` int64, 1 on real samples;
- CTC: ``labels`` ``(B, L)`` int64 padded with -100;
- HuBERT: ``labels`` a list of ``(B, T_k)`` int64 tensors, one per label set, cropped with
  the same window as the audio (frames = samples * label_rate / 16000) and padded with -100.

Per-utterance normalisation (zero mean, unit variance over the *valid* samples, as in
``Wav2Vec2FeatureExtractor(do_normalize=True)``) is applied when ``normalize=True``, or
delegated to a ``feature_extractor`` callable when one is given.

With ``speed`` (a `SpeedPerturbation`), each waveform is first resampled to a randomly drawn
speed (Kaldi's 0.9/1.0/1.1 augmentation); HuBERT labels are stretched with it.

Random crops and speed factors come from ``generator``: a shared ``torch.Generator``, or a
`BatchSeeds` (what the training loops use) that seeds each batch from its utterance ids, so the
draws do not depend on the DataLoader worker that collates the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .audio import TARGET_SAMPLE_RATE
from .augmentation import SpeedPerturbation, speed_perturb, stretch_labels
from .batch_seeds import BatchSeeds, batch_generator
from .cropping import FAIRSEQ_MAX_SAMPLES, crop_windows
from .text import TextNormalizer

NORMALIZE_EPSILON = 1e-7


def normalization(waveform: np.ndarray) -> tuple[float, float]:
    """``(mean, 1 / sqrt(var + 1e-7))`` of a 1-D waveform ``(S,)``: what `normalize_waveform` applies."""
    waveform = np.asarray(waveform, dtype=np.float32)
    mean = float(waveform.mean(dtype=np.float64))
    centered = waveform - np.float32(mean)
    variance = float(np.dot(centered, centered)) / waveform.size
    return mean, 1.0 / float(np.sqrt(variance + NORMALIZE_EPSILON))


def normalize_waveform(waveform: np.ndarray) -> np.ndarray:
    """``(x - mean) / sqrt(var + 1e-7)`` over the whole 1-D waveform ``(S,)``, float32."""
    mean, scale = normalization(waveform)
    return (np.asarray(waveform, dtype=np.float32) - np.float32(mean)) * np.float32(scale)


IGNORE_INDEX = -100  # label padding: the index CTC and cross-entropy losses ignore


def pad_waveforms(waveforms: Sequence[np.ndarray], pad_to_multiple_of: int | None = None,
                  normalizations: Sequence[tuple[float, float]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad 1-D waveforms into ``input_values`` ``(B, S)`` and ``attention_mask`` ``(B, S)``.

    ``normalizations``: one ``(mean, scale)`` per waveform (`normalization`), applied as each row is
    written (``(x - mean) * scale``), so a normalised batch costs one pass over the audio.
    """
    lengths = [len(w) for w in waveforms]
    longest = max(lengths)
    if pad_to_multiple_of:
        longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    values = np.empty((len(waveforms), longest), dtype=np.float32)
    for row, waveform in enumerate(waveforms):
        size = lengths[row]
        if normalizations is None:
            values[row, :size] = waveform
        else:
            mean, scale = normalizations[row]
            np.subtract(waveform, np.float32(mean), out=values[row, :size], dtype=np.float32)
            values[row, :size] *= np.float32(scale)
        values[row, size:] = 0.0
    mask = torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None]
    return torch.from_numpy(values), mask.long()


def pad_labels(label_ids: Sequence[Sequence[int]], return_tensors: str | None = None,
               pad_to_multiple_of: int | None = None) -> Any:
    """Pad label sequences to the longest with -100 (the index CTC losses ignore).

    Args:
        label_ids: ``batch`` sequences of token ids, any lengths (0 allowed).
        return_tensors: ``"pt"`` (``torch.long``), ``"np"`` (``int64``) or ``None`` (lists).

    Returns:
        ``(batch, max_label_length)`` labels, -100 after each sequence's end.
    """
    length = max((len(ids) for ids in label_ids), default=0)
    if pad_to_multiple_of is not None and length > 0:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    labels = np.full((len(label_ids), length), IGNORE_INDEX, dtype=np.int64)
    for row, ids in enumerate(label_ids):
        labels[row, : len(ids)] = np.asarray(ids, dtype=np.int64)
    kind = getattr(return_tensors, "value", return_tensors)  # "pt", "np" or transformers' TensorType
    if kind is None:
        return labels.tolist()
    if kind == "pt":
        return torch.from_numpy(labels)
    if kind == "np":
        return labels
    raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}.")


def _waveforms(examples: Sequence[Mapping[str, Any]]) -> list[np.ndarray]:
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    waveforms = []
    for example in examples:
        audio = example.get("audio")
        if audio is None:
            raise ValueError(f"example {example.get('id')} has no 'audio'; load it with hfspeech.data.load_source")
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1 or audio.size == 0:
            raise ValueError(f"example {example.get('id')}: audio must be a non-empty 1-D array, got shape {audio.shape}")
        waveforms.append(audio)
    return waveforms


class CTCCollator:
    """Collate ``(audio, text)`` examples for CTC fine-tuning.

    Args:
        tokenizer: ``str -> list[int]`` or a transformers tokenizer (``input_ids`` read
            from its output). Not needed when examples already carry ``labels``.
        feature_extractor: optional callable like ``Wav2Vec2FeatureExtractor``: called
            with ``(list_of_arrays, sampling_rate=16000, padding=True,
            return_attention_mask=True, return_tensors="pt")``; replaces ``normalize``.
        normalize: per-utterance zero-mean/unit-variance over valid samples.
        text_normalizer: optional ``str -> str`` applied before the tokenizer, normally the
            :class:`hfspeech.data.text.TextNormalizer` the tokenizer's transcripts were made with
            (its errors then name the example's ``id``).
        pad_to_multiple_of: pad the sample axis to a multiple of this.
        speed: optional `SpeedPerturbation` applied to each waveform first (training only).
        generator: where the speed factors are drawn from (default: ``speed``'s own generator).
    """

    def __init__(
        self,
        tokenizer: Callable[[str], Any] | None = None,
        feature_extractor: Callable[..., Mapping[str, Any]] | None = None,
        normalize: bool = True,
        text_normalizer: Callable[[str], str] | None = None,
        pad_to_multiple_of: int | None = None,
        speed: SpeedPerturbation | None = None,
        generator: torch.Generator | BatchSeeds | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.generator = generator
        self.feature_extractor = feature_extractor
        self.normalize = normalize
        self.text_normalizer = text_normalizer
        self.pad_to_multiple_of = pad_to_multiple_of
        self.speed = speed
        self._encoded: dict[str, list[int]] = {}  # transcript -> label ids: each epoch tokenizes the same texts

    def _encode(self, example: Mapping[str, Any]) -> list[int]:
        if "labels" in example and example["labels"] is not None:
            return [int(x) for x in example["labels"]]
        text = example.get("text")
        if text is None:
            raise ValueError(f"example {example.get('id')} has neither 'labels' nor 'text'; CTC needs transcripts")
        if text not in self._encoded:
            self._encoded[text] = self._tokenize(text, example)
        return self._encoded[text]

    def _tokenize(self, text: str, example: Mapping[str, Any]) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("CTCCollator needs a tokenizer to turn 'text' into labels")
        if isinstance(self.text_normalizer, TextNormalizer):
            text = self.text_normalizer(text, example.get("id"))  # errors name the utterance
        elif self.text_normalizer is not None:
            text = self.text_normalizer(text)
        encoded = self.tokenizer(text)
        if isinstance(encoded, Mapping):
            encoded = encoded["input_ids"]
        ids = [int(x) for x in encoded]
        if not ids:
            raise ValueError(f"example {example.get('id')}: transcript {text!r} encodes to no labels")
        return ids

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        waveforms = _waveforms(examples)
        if self.speed is not None and self.speed.active:
            factors = self.speed.draw(len(waveforms), batch_generator(self.generator, examples))
            waveforms = [speed_perturb(w, f) for w, f in zip(waveforms, factors)]
        if self.feature_extractor is not None:
            options: dict[str, Any] = {"sampling_rate": TARGET_SAMPLE_RATE, "padding": True,
                                       "return_attention_mask": True, "return_tensors": "pt"}
            if self.pad_to_multiple_of:
                options["pad_to_multiple_of"] = self.pad_to_multiple_of
            features = self.feature_extractor(waveforms, **options)
            values = torch.as_tensor(features["input_values"], dtype=torch.float32)
            mask = features.get("attention_mask")
            if mask is None:
                _, mask = pad_waveforms(waveforms, self.pad_to_multiple_of)
            mask = torch.as_tensor(mask).long()
        else:
            normalizations = [normalization(w) for w in waveforms] if self.normalize else None
            values, mask = pad_waveforms(waveforms, self.pad_to_multiple_of, normalizations)
        return {"input_values": values, "attention_mask": mask,
                "labels": pad_labels([self._encode(e) for e in examples], return_tensors="pt")}


class PretrainingCollator:
    """Collate audio for wav2vec 2.0 pretraining with fairseq's random crops.

    Args:
        max_samples: crop longer waveforms to this many samples (fairseq 250k).
        crop_to_shortest: crop the whole batch to its shortest member (fairseq
            ``pad=False``); otherwise only over-long waveforms are cropped and the rest padded.
        normalize: per-utterance normalisation, applied to the full waveform before cropping
            (as fairseq does).
        generator: crop starts and speed factors come from it: a ``torch.Generator`` or a
            `BatchSeeds` (one generator per batch; see the module docstring).
        speed: optional `SpeedPerturbation`, applied to each whole waveform before cropping.
    """

    def __init__(
        self,
        max_samples: int | None = FAIRSEQ_MAX_SAMPLES,
        crop_to_shortest: bool = True,
        normalize: bool = False,
        generator: torch.Generator | BatchSeeds | None = None,
        speed: SpeedPerturbation | None = None,
    ) -> None:
        self.max_samples = max_samples
        self.crop_to_shortest = crop_to_shortest
        self.normalize = normalize
        self.generator = generator
        self.speed = speed

    def _speeds(self, count: int, generator: torch.Generator | None) -> list[float]:
        return self.speed.draw(count, generator) if self.speed is not None else [1.0] * count

    def _crop(self, examples: Sequence[Mapping[str, Any]], generator: torch.Generator | None,
              speeds: Sequence[float] | None = None) -> tuple[list[np.ndarray], list[int], list[int], Any]:
        """Speed-perturbed, cropped waveforms, their crop starts and sizes, and `_normalizations`."""
        waveforms = _waveforms(examples)
        speeds = self._speeds(len(waveforms), generator) if speeds is None else speeds
        waveforms = [speed_perturb(w, f) for w, f in zip(waveforms, speeds)]
        starts, sizes = crop_windows([len(w) for w in waveforms], self.max_samples, self.crop_to_shortest, generator)
        cropped = [w[s : s + n] for w, s, n in zip(waveforms, starts, sizes)]
        return cropped, starts, sizes, self._normalizations(waveforms)

    def _normalizations(self, waveforms: Sequence[np.ndarray]) -> list[tuple[float, float]] | None:
        """Each whole waveform's ``(mean, scale)`` (fairseq normalises before cropping), or None."""
        return [normalization(w) for w in waveforms] if self.normalize else None

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        cropped, _, _, normalizations = self._crop(examples, batch_generator(self.generator, examples))
        values, mask = pad_waveforms(cropped, normalizations=normalizations)
        return {"input_values": values, "attention_mask": mask}


class HubertCollator(PretrainingCollator):
    """Collate audio plus frame labels for HuBERT pretraining.

    Each example carries ``labels``: one integer sequence (one label set) or a list of
    sequences (several label sets), at ``label_rates`` frames per second. The audio
    window ``[start, start + size)`` maps to label frames
    ``[round(start * r / 16000), + round(size * r / 16000))`` (fairseq ``HubertDataset``);
    with ``crop_to_shortest`` every row keeps the same number of frames.

    Args:
        label_rates: frames per second of each label set (a float for all sets).
        duration_tolerance: max |label duration - audio duration| in seconds before the
            example is rejected as misaligned (fairseq: 0.1 s).
        labels: optional ``utterance id -> label sequence(s)``: the labels of examples that carry
            none of their own, found by their ``id`` (the training loop keeps them here, as arrays,
            rather than in the dataset).
        labels_source: where ``labels`` came from, named when an id is missing from them.
        Other args: see :class:`PretrainingCollator`.
    """

    def __init__(
        self,
        label_rates: float | Sequence[float] = 50.0,
        max_samples: int | None = FAIRSEQ_MAX_SAMPLES,
        crop_to_shortest: bool = True,
        normalize: bool = False,
        generator: torch.Generator | BatchSeeds | None = None,
        duration_tolerance: float = 0.1,
        speed: SpeedPerturbation | None = None,
        labels: Mapping[str, Any] | None = None,
        labels_source: str = "the collator's labels",
    ) -> None:
        super().__init__(max_samples, crop_to_shortest, normalize, generator, speed)
        self.label_rates = label_rates
        self.duration_tolerance = duration_tolerance
        self.labels = labels
        self.labels_source = labels_source

    def _label_sets(self, example: Mapping[str, Any]) -> list[np.ndarray]:
        labels = example.get("labels")
        if labels is None and self.labels is not None:
            labels = self.labels.get(example.get("id"))
            if labels is None:
                raise ValueError(f"utterance {example.get('id')} has no labels in {self.labels_source}; "
                                 "assign labels for this exact data source (`hfspeech labels assign`).")
        if labels is None:
            raise ValueError(f"example {example.get('id')} has no 'labels'; assign HuBERT targets first")
        if len(labels) and np.ndim(labels[0]) == 0:
            labels = [labels]
        return [np.asarray(label_set, dtype=np.int64) for label_set in labels]

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        label_sets = [self._label_sets(e) for e in examples]
        num_sets = len(label_sets[0])
        if any(len(sets) != num_sets for sets in label_sets):
            raise ValueError("every example must carry the same number of label sets")
        rates = [float(self.label_rates)] * num_sets if np.ndim(self.label_rates) == 0 else list(self.label_rates)
        if len(rates) != num_sets:
            raise ValueError(f"{len(rates)} label_rates for {num_sets} label sets")
        for example, sets in zip(examples, label_sets):
            seconds = len(example["audio"]) / TARGET_SAMPLE_RATE
            for label_set, rate in zip(sets, rates):
                if abs(len(label_set) / rate - seconds) > self.duration_tolerance:
                    raise ValueError(
                        f"example {example.get('id')}: {len(label_set)} labels at {rate} Hz last "
                        f"{len(label_set) / rate:.3f} s but the audio lasts {seconds:.3f} s; labels and audio "
                        "are misaligned (wrong label_rate or stale targets)"
                    )
        generator = batch_generator(self.generator, examples)
        speeds = self._speeds(len(examples), generator)
        label_sets = [[stretch_labels(label_set, f) for label_set in sets] for sets, f in zip(label_sets, speeds)]
        cropped, starts, sizes, normalizations = self._crop(examples, generator, speeds)
        values, mask = pad_waveforms(cropped, normalizations=normalizations)
        labels = []
        for set_index, rate in enumerate(rates):
            ratio = rate / TARGET_SAMPLE_RATE
            frame_starts = [int(round(s * ratio)) for s in starts]
            frame_sizes = [int(round(n * ratio)) for n in sizes]
            if self.crop_to_shortest:
                remaining = [len(sets[set_index]) - s for sets, s in zip(label_sets, frame_starts)]
                common = min(min(frame_sizes), *remaining)
                frame_sizes = [common] * len(examples)
            rows = [sets[set_index][s : s + n] for sets, s, n in zip(label_sets, frame_starts, frame_sizes)]
            labels.append(pad_labels(rows, return_tensors="pt"))
        return {"input_values": values, "attention_mask": mask, "labels": labels}

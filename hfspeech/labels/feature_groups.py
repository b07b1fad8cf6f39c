"""Feature groups: utterances batched into groups of audio and their features computed, on
worker threads where the frame-feature source allows (`hfspeech.labels.parallel`).

The stream is ``(utterance_id, waveform)`` pairs (16 kHz float32 ``(S,)``); a group holds at
most ``batch_seconds`` of consecutive utterances (one longer utterance forms its own group)
and yields ``(utterance_ids, num_samples, features [(T_i, D)])``. Both the k-means sample
(`sample_fit_frames`) and label assignment (`hfspeech.labels.assign`) consume groups.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from .kmeans import FrameSampler
from .parallel import default_workers, map_in_order, pipeline_threads

SAMPLE_RATE = 16000
logger = logging.getLogger(__name__)


FeatureGroup = tuple[list[str], list[int], list[torch.Tensor]]
"""``(utterance_ids, num_samples, features [(T_i, D)])`` of one group, as `iter_feature_groups` yields."""


def concatenate_frames(features: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(features)``, without the copy when the tensors are consecutive row blocks of
    one storage (what `compute_mfcc_batch` returns: a split of one (sum T_i, D) tensor)."""
    first = features[0]
    storage = first.untyped_storage().data_ptr()
    consecutive = all(f.is_contiguous() and f.dim() == 2 and f.untyped_storage().data_ptr() == storage
                      for f in features)
    consecutive = consecutive and all(
        b.storage_offset() == a.storage_offset() + a.numel() and b.shape[1:] == a.shape[1:] and b.dtype == a.dtype
        for a, b in zip(features, features[1:]))
    if not consecutive:
        return torch.cat(features)
    rows = sum(f.shape[0] for f in features)
    return first.as_strided((rows, first.shape[1]), first.stride(), first.storage_offset())


class FrameFeatures(Protocol):
    """What `MFCCFrameFeatures` and `LayerFeatureReader` both provide.

    A frame-feature source may also set ``thread_safe = True`` when `batch` can run on several threads
    at once on the CPU; the feature and labelling passes then use worker threads.
    """

    name: str
    dim: int
    frame_rate: float
    min_samples: int

    def num_frames(self, num_samples: int) -> int: ...

    def batch(self, waveforms: list[np.ndarray | torch.Tensor], utterance_ids: list[str]) -> list[torch.Tensor]: ...


def make_frame_features(spec: str, device: torch.device | str | None = None) -> FrameFeatures:
    """``"mfcc"`` -> `MFCCFrameFeatures`; ``"MODEL_DIR:LAYER"`` -> `LayerFeatureReader`."""
    if spec == "mfcc":
        from .mfcc import MFCCFrameFeatures

        return MFCCFrameFeatures(device=device)
    from .layer_features import LayerFeatureReader

    return LayerFeatureReader.from_spec(spec, device=device)


def iter_source_utterances(spec: str, split: str | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """Stream ``(id, waveform)`` from any source of `hfspeech.data.load_source` (directory,
    audiofolder, LibriSpeech layout, manifest, Hub spec), decoding one file at a time."""
    from ..data import load_source

    for example in load_source(spec, split=split, streaming=True):
        yield str(example["id"]), np.asarray(example["audio"], dtype=np.float32)


def iter_feature_groups(
    utterances: Iterable[tuple[str, np.ndarray]],
    frame_features: FrameFeatures,
    batch_seconds: float = 200.0,
    progress: bool = True,
    workers: int | None = 1,
) -> Iterator[FeatureGroup]:
    """Yield ``(utterance_ids, num_samples, features [(T_i, D)])`` per group of at most
    ``batch_seconds`` of audio (one utterance longer than that forms its own group).

    ``workers > 1`` (None: one per torch thread) computes that many groups at once on threads
    (`map_in_order`) when the frame-feature source says it can (``thread_safe``, as the MFCC source on
    the CPU does); the groups and their order are the same either way."""
    groups = audio_groups(utterances, frame_features.name, batch_seconds, progress)
    yield from map_in_order(lambda group: compute_feature_group(frame_features, group), groups, usable_workers(frame_features, workers))


def usable_workers(frame_features: FrameFeatures, workers: int | None) -> int:
    """``workers`` (None: `default_workers`) if the frame-feature source is ``thread_safe``, else 1."""
    if workers is not None and int(workers) < 1:
        raise ValueError(f"workers must be at least 1 (or None for one per torch thread), got {workers}")
    if not getattr(frame_features, "thread_safe", False):
        return 1
    return default_workers() if workers is None else int(workers)


def compute_feature_group(frame_features: FrameFeatures, group: tuple[list[str], list[np.ndarray]]) -> FeatureGroup:
    """``(utterance_ids, waveforms)`` of `audio_groups` -> its feature group."""
    names, waveforms = group
    return names, [len(w) for w in waveforms], frame_features.batch(waveforms, names)


def audio_groups(
    utterances: Iterable[tuple[str, np.ndarray]], feature: str, batch_seconds: float = 200.0, progress: bool = True
) -> Iterator[tuple[list[str], list[np.ndarray]]]:
    """``(utterance_ids, waveforms)`` of consecutive utterances, at most ``batch_seconds`` each."""
    names: list[str] = []
    waveforms: list[np.ndarray] = []
    group_samples = 0
    limit = int(batch_seconds * SAMPLE_RATE)
    seen: set[str] = set()
    for name, waveform in tqdm(utterances, desc=f"{feature} features", unit="utt", disable=not progress):
        if name in seen:
            raise ValueError(f"utterance id {name!r} appears twice in the data; ids must be unique for label files")
        seen.add(name)
        if waveforms and group_samples + len(waveform) > limit:
            yield names, waveforms
            names, waveforms, group_samples = [], [], 0
        names.append(name)
        waveforms.append(waveform)
        group_samples += len(waveform)
    if waveforms:
        yield names, waveforms


def iter_feature_batches(
    utterances: Iterable[tuple[str, np.ndarray]],
    frame_features: FrameFeatures,
    batch_seconds: float = 200.0,
    progress: bool = True,
) -> Iterator[tuple[str, int, torch.Tensor]]:
    """Yield ``(utterance_id, num_samples, features (T, D))``, computed group by group."""
    for names, lengths, features in iter_feature_groups(utterances, frame_features, batch_seconds, progress):
        yield from zip(names, lengths, features)


def sample_fit_frames(
    utterances: Iterable[tuple[str, np.ndarray]],
    frame_features: FrameFeatures,
    fraction: float = 1.0,
    max_frames: int | None = None,
    seed: int = 0,
    batch_seconds: float = 200.0,
    workers: int | None = None,
) -> torch.Tensor:
    """Stream the data once and keep a uniform random sample of frames: (N, D) float32.

    ``workers``: feature threads (see `iter_feature_groups`; None: one per torch thread)."""
    sampler = FrameSampler(fraction=fraction, max_frames=max_frames, seed=seed)
    workers = usable_workers(frame_features, workers)
    with pipeline_threads(workers):
        for _, _, features in iter_feature_groups(utterances, frame_features, batch_seconds, workers=workers):
            sampler.add(concatenate_frames(features))
        sample = sampler.sample()
    logger.info("sampled %d of %d frames for k-means", sample.shape[0], sampler.frames_seen)
    return sample

"""Fit k-means and write labels in one run, computing each utterance's features once.

fairseq's recipe dumps every feature to disk, fits on (a sample of) the dump and reads the
dump again to assign labels. Calling `fit_label_sets` then `assign_label_sets` avoids the
dump but computes the features twice. `fit_and_assign` does neither:

1. one streaming pass computes the features group by group (`iter_feature_groups`), offers
   every group to a `FrameSampler` (the k-means sample: ``fraction`` and/or ``max_frames``)
   and keeps the groups in a cache while it holds at most ``cache_mib`` MiB (a frame-feature computation
   with ``pack``/``unpack`` caches a compact form: MFCC keeps the 13 cepstra and recomputes
   the deltas when labelling, which is exact and cheaper than touching 3x the memory);
2. k-means is fitted on the sample, one model per K;
3. the cached groups are labelled from the cache; only utterances that did not fit in the
   cache (the tail of a large corpus) are streamed again and their features recomputed.

Memory is bounded by ``cache_mib`` + the sample + one group, whatever the corpus size; a
corpus whose features fit under the bound costs exactly one feature pass.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .assign import LabelMetadata, write_label_groups
from .feature_groups import (
    FrameFeatures,
    FeatureGroup,
    audio_groups,
    compute_feature_group,
    concatenate_frames,
    iter_feature_groups,
    usable_workers,
)
from .kmeans import FrameSampler, KMeansModel, fit_kmeans
from .parallel import pipeline_threads

logger = logging.getLogger(__name__)

UtteranceStream = Callable[[], Iterable[tuple[str, np.ndarray]]]
BYTES_PER_MIB = 1 << 20


@dataclass
class FeatureCache:
    """Feature groups kept in stream order while their total size stays under ``limit_bytes``.

    Once a group does not fit, caching stops for good (``complete`` becomes False), so the
    cache always holds a prefix of the stream: the first ``num_utterances`` utterances.
    """

    limit_bytes: int
    groups: list[FeatureGroup] = field(default_factory=list)
    num_bytes: int = 0
    num_utterances: int = 0
    complete: bool = True

    def offer(self, group: FeatureGroup) -> None:
        """Keep ``group`` if it fits (and every earlier group was kept)."""
        if not self.complete:
            return
        size = sum(f.numel() * f.element_size() for f in group[2])
        if self.num_bytes + size > self.limit_bytes:
            self.complete = False
            logger.info("feature cache full at %.0f MiB after %d utterances; the rest is recomputed when labelling",
                        self.num_bytes / BYTES_PER_MIB, self.num_utterances)
            return
        self.groups.append(group)
        self.num_bytes += size
        self.num_utterances += len(group[0])


def fit_and_assign(
    data: UtteranceStream,
    frame_features: FrameFeatures,
    ks: list[int],
    labels_dir: str | Path,
    kmeans_dir: str | Path | None = None,
    backend: str = "torch",
    fraction: float = 1.0,
    max_frames: int | None = 1_000_000,
    seed: int = 0,
    cache_mib: float = 1024.0,
    batch_seconds: float = 200.0,
    data_spec: str = "",
    stage_seconds: dict[str, float] | None = None,
    workers: int | None = None,
) -> tuple[list[KMeansModel], LabelMetadata]:
    """Fit one k-means per K on sampled frames and label every utterance, features computed once.

    Args:
        data: zero-argument callable returning an iterable of ``(utterance_id, (S,) float32
            16 kHz waveform)``; called once, and a second time only if the cache overflows.
        frame_features: `MFCCFrameFeatures` or `LayerFeatureReader` (see `make_frame_features`).
        ks: cluster counts, e.g. [100] or [100, 500] (an ensemble shares the sample).
        labels_dir: where ``k{K}.km``, ``ids.txt`` and ``labels.json`` go.
        kmeans_dir: if given, each model is saved to ``kmeans_dir/k{K}/``.
        backend: "torch" (fast) or "sklearn" (fairseq's MiniBatchKMeans settings).
        fraction / max_frames: frame sampling for the fit (see `FrameSampler`).
        seed: seeds the sampling and the fit.
        cache_mib: bound on the cached features (MiB); 0 recomputes everything (two passes).
        batch_seconds: audio per feature group.
        data_spec: recorded in ``labels.json``.
        stage_seconds: if given, receives wall and CPU seconds of the three stages
            (``features_s``, ``features_cpu_s``, ``fit_s``, ``fit_cpu_s``, ``labels_s``, ``labels_cpu_s``).
        workers: threads that compute (and later label) whole groups at once when the frame-feature source
            allows it (MFCC on the CPU); None: one per torch thread. The fit itself uses torch's
            threads. Results do not depend on it.
    Returns:
        the fitted models (sorted as ``ks``) and the label metadata.
    """
    if not ks:
        raise ValueError("give at least one K (--k 100)")
    if cache_mib < 0:
        raise ValueError(f"cache_mib must be >= 0, got {cache_mib}")
    clock = _StageClock(stage_seconds)
    sampler = FrameSampler(fraction=fraction, max_frames=max_frames, seed=seed)
    cache = FeatureCache(limit_bytes=int(cache_mib * BYTES_PER_MIB))
    pack = getattr(frame_features, "pack", None)
    workers = usable_workers(frame_features, workers)
    with pipeline_threads(workers):
        for names, lengths, features in iter_feature_groups(data(), frame_features, batch_seconds, workers=workers):
            frames = concatenate_frames(features)
            sampler.add(frames)
            if pack is not None and cache.complete:
                features = list(pack(frames).split([f.shape[0] for f in features]))
            cache.offer((names, lengths, features))
        sample = sampler.sample()
    clock.lap("features")
    logger.info("sampled %d of %d frames for k-means", sample.shape[0], sampler.frames_seen)
    models = []
    for k in ks:
        model = fit_kmeans(sample, k, backend=backend, seed=seed, feature=frame_features.name)
        if kmeans_dir is not None:
            model.save(Path(kmeans_dir) / f"k{k}")
        models.append(model)
    del sample
    clock.lap("fit")

    def prepare(item: tuple[bool, object]) -> FeatureGroup:
        """A cached group (unpacked if packed) or, past the cache, one computed from audio."""
        cached, group = item
        if not cached:
            return compute_feature_group(frame_features, group)
        names, lengths, features = group
        if pack is None:
            return names, lengths, features
        counts = [p.shape[0] for p in features]
        return names, lengths, list(frame_features.unpack(concatenate_frames(features), counts).split(counts))

    items: Iterable[tuple[bool, object]] = ((True, group) for group in cache.groups)
    if not cache.complete:
        rest = itertools.islice(data(), cache.num_utterances, None)
        items = itertools.chain(items, ((False, group) for group in audio_groups(rest, frame_features.name, batch_seconds)))
    kmeans_paths = [str(kmeans_dir)] if kmeans_dir is not None else []
    with pipeline_threads(workers):
        metadata = write_label_groups(items, frame_features, models, labels_dir, kmeans_paths, data_spec, workers, prepare)
    clock.lap("labels")
    return models, metadata


class _StageClock:
    """Writes wall/CPU seconds of consecutive stages into a dict (no-op without one)."""

    def __init__(self, record: dict[str, float] | None) -> None:
        self.record = record
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self, stage: str) -> None:
        if self.record is None:
            return
        wall, cpu = time.perf_counter(), time.process_time()
        self.record[f"{stage}_s"] = wall - self.wall
        self.record[f"{stage}_cpu_s"] = cpu - self.cpu
        self.wall, self.cpu = wall, cpu

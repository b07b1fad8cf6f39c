"""HuBERT target iterations: fit k-means on sampled frames, assign labels, record the label rate.

Iteration 1 clusters 39-dim MFCC (100 Hz) into K=100; iteration 2 clusters layer-6 hidden
states of the iteration-1 model (50 Hz) into K=500 (HuBERT paper, Base). Each label directory
carries ``labels.json`` with its label rate, K values and feature spec, and `check_label_rate`
lets the pretraining side refuse labels whose rate disagrees with its configuration.

Layout written by `run_iterations`::

    OUT/iter1/kmeans/k100/{centroids.safetensors,kmeans.json}
    OUT/iter1/labels/{k100.km,ids.txt,labels.json}
    OUT/iter2/...                                  (when a pretrained model is given)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .assign import LabelMetadata, write_label_files
from .feature_groups import iter_source_utterances, make_frame_features, sample_fit_frames
from .fit_assign import fit_and_assign
from .kmeans import KMeansModel, fit_kmeans, load_kmeans_models

logger = logging.getLogger(__name__)

UtteranceStream = Callable[[], Iterable[tuple[str, np.ndarray]]]


def _stream(data: str | UtteranceStream, split: str | None = None) -> UtteranceStream:
    if callable(data):
        return data
    return lambda: iter_source_utterances(data, split=split)


def fit_label_sets(
    data: str | UtteranceStream,
    feature: str,
    ks: list[int],
    output_dir: str | Path,
    backend: str = "torch",
    fraction: float = 1.0,
    max_frames: int | None = 1_000_000,
    seed: int = 0,
    device: torch.device | str | None = None,
    split: str | None = None,
    workers: int | None = None,
) -> list[KMeansModel]:
    """Sample frames once, fit one k-means per K (an ensemble), save each to ``OUT/k{K}/``.

    Args:
        data: a `hfspeech.data.load_source` spec, or a zero-argument callable returning an
            iterable of ``(utterance_id, (S,) float32 16 kHz waveform)``.
        split: LibriSpeech split / Libri-light subset of a ``data`` spec (see `load_source`).
        feature: ``"mfcc"`` or ``"MODEL_DIR:LAYER"``.
        ks: cluster counts, e.g. [100] or [100, 500].
        fraction / max_frames: frame sampling (see `FrameSampler`); the cap bounds memory.
        workers: feature threads (MFCC on the CPU; None: one per torch thread).
    """
    if not ks:
        raise ValueError("give at least one K (--k 100)")
    frame_features = make_frame_features(feature, device)
    frames = sample_fit_frames(_stream(data, split)(), frame_features, fraction=fraction, max_frames=max_frames, seed=seed,
                               workers=workers)
    if device is not None:
        frames = frames.to(device)
    models = []
    for k in ks:
        model = fit_kmeans(frames, k, backend=backend, seed=seed, feature=feature)
        model.save(Path(output_dir) / f"k{k}")
        models.append(model)
    return models


def assign_label_sets(
    kmeans: str | Path,
    data: str | UtteranceStream,
    output_dir: str | Path,
    device: torch.device | str | None = None,
    split: str | None = None,
    workers: int | None = None,
) -> LabelMetadata:
    """Label every utterance with each model under ``kmeans`` (one model or an ensemble dir);
    ``workers``: threads computing and labelling groups (MFCC on the CPU; None: one per torch thread)."""
    models = load_kmeans_models(kmeans)
    features = {model.feature for model in models}
    if len(features) != 1 or "" in features:
        raise ValueError(f"k-means models under {kmeans} were fitted on features {sorted(features)}; "
                         "an ensemble must share one feature spec")
    frame_features = make_frame_features(features.pop(), device)
    return write_label_files(_stream(data, split)(), frame_features, models, output_dir,
                             kmeans_paths=[str(kmeans)], data=data if isinstance(data, str) else "", workers=workers)


def run_iterations(
    data: str | UtteranceStream,
    output_dir: str | Path,
    pretrained_model: str | Path | None = None,
    layer: int = 6,
    k_first: int = 100,
    k_second: int = 500,
    backend: str = "torch",
    fraction: float = 1.0,
    max_frames: int | None = 1_000_000,
    seed: int = 0,
    device: torch.device | str | None = None,
    split: str | None = None,
    cache_mib: float = 1024.0,
    workers: int | None = None,
) -> dict[str, LabelMetadata]:
    """Iteration 1 (MFCC, K=``k_first``), then iteration 2 (``pretrained_model`` layer ``layer``,
    K=``k_second``) when a model is given. Returns the label metadata of each iteration.

    Each iteration runs `fit_and_assign`: features are computed once while they fit in
    ``cache_mib`` MiB, and only the overflow is recomputed for labelling.
    """
    output_dir = Path(output_dir)
    plan = [("iter1", "mfcc", k_first)]
    if pretrained_model is not None:
        plan.append(("iter2", f"{pretrained_model}:{layer}", k_second))
    results = {}
    for name, feature, k in plan:
        logger.info("%s: %s features, K=%d", name, feature, k)
        _, results[name] = fit_and_assign(
            _stream(data, split), make_frame_features(feature, device), [k], output_dir / name / "labels",
            kmeans_dir=output_dir / name / "kmeans", backend=backend, fraction=fraction, max_frames=max_frames,
            seed=seed, cache_mib=cache_mib, data_spec=data if isinstance(data, str) else "", workers=workers,
        )
    return results


def check_label_rate(labels: str | Path | LabelMetadata, config: Any | float) -> LabelMetadata:
    """Refuse labels whose recorded rate differs from the model's ``label_rate``.

    Args:
        labels: a label directory (with labels.json) or its `LabelMetadata`.
        config: a config with ``label_rate`` (hfspeech's `SpeechEncoderConfig`) or the rate in Hz.
    Raises:
        ValueError naming both rates and the fix.
    """
    metadata = labels if isinstance(labels, LabelMetadata) else LabelMetadata.load(labels)
    expected = float(getattr(config, "label_rate", config))
    if abs(metadata.label_rate - expected) > 1e-6:
        raise ValueError(
            f"labels were made at {metadata.label_rate:g} Hz ({metadata.feature} features) but the model is "
            f"configured for label_rate={expected:g} Hz; set label_rate={metadata.label_rate:g} or use labels "
            "made at the model's rate"
        )
    return metadata


def verify_labels(
    labels_dir: str | Path, data: str | UtteranceStream, tolerance_seconds: float = 0.1, split: str | None = None
) -> LabelMetadata:
    """Check a label directory against its audio: same utterances in the same order, and every
    label sequence spans its utterance at the recorded label rate (see `check_label_length`).

    Raises:
        ValueError naming the first utterance that disagrees.
    """
    from .assign import check_label_length, read_label_directory

    metadata, ids, label_sets = read_label_directory(labels_dir)
    index = 0
    for name, waveform in _stream(data, split)():
        if index >= len(ids):
            raise ValueError(f"utterance {name}: the data has more utterances than {labels_dir}/ids.txt ({len(ids)})")
        if name != ids[index]:
            raise ValueError(f"utterance {name}: line {index + 1} of {labels_dir}/ids.txt is {ids[index]!r}; "
                             "the labels were made for other data or another order")
        for rows in label_sets.values():
            check_label_length(name, len(rows[index]), len(waveform), metadata.label_rate, tolerance_seconds)
        index += 1
    if index != len(ids):
        raise ValueError(f"{labels_dir}/ids.txt lists {len(ids)} utterances but the data has {index}; "
                         f"first missing: {ids[index]}")
    return metadata

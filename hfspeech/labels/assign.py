"""Streaming label assignment: features are computed and assigned on the fly, never dumped.

Utterances flow as ``(utterance_id, waveform)`` pairs (16 kHz float32 ``(S,)``), in groups of
at most ``batch_seconds`` of audio (`hfspeech.labels.feature_groups`), so memory is bounded by
one group per worker thread (see `hfspeech.labels.parallel`) whatever the corpus size. Outputs:

* fairseq-style label files: ``OUT/k{K}.km`` (one line of space-separated cluster ids per
  utterance), ``OUT/ids.txt`` (the utterance ids, same order), ``OUT/labels.json`` (label
  rate, K values, feature spec, k-means directories, counts) — written line by line.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .feature_groups import (
    SAMPLE_RATE,
    FrameFeatures,
    FeatureGroup,
    audio_groups,
    compute_feature_group,
    concatenate_frames,
    iter_feature_groups,
    usable_workers,
)
from .kmeans import KMeansModel
from .parallel import map_in_order, pipeline_threads

logger = logging.getLogger(__name__)

_WHITESPACE = re.compile(r"\s")
LABELS_METADATA = "labels.json"
IDS_FILE = "ids.txt"


@dataclass
class LabelMetadata:
    """Contents of ``labels.json``: what the labels mean and at which rate they tick."""

    label_rate: float
    num_clusters: list[int]
    feature: str
    feature_dim: int
    kmeans: list[str] = field(default_factory=list)
    num_utterances: int = 0
    num_frames: int = 0
    data: str = ""

    def save(self, directory: str | Path) -> None:
        (Path(directory) / LABELS_METADATA).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "LabelMetadata":
        path = Path(directory) / LABELS_METADATA
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: label directories are written by `hfspeech labels assign` "
                                    "and carry labels.json with the label rate")
        return cls(**json.loads(path.read_text()))


def km_file_name(num_clusters: int) -> str:
    return f"k{num_clusters}.km"


def _check_models(models: list[KMeansModel], frame_features: FrameFeatures) -> None:
    if not models:
        raise ValueError("no k-means model given")
    for model in models:
        if model.dim != frame_features.dim:
            raise ValueError(f"k-means K={model.num_clusters} was fitted on {model.dim}-dim '{model.feature}' features "
                             f"but the extractor gives {frame_features.dim}-dim '{frame_features.name}' features; "
                             "use the feature spec stored in kmeans.json")
    if len({model.num_clusters for model in models}) != len(models):
        raise ValueError(f"two k-means models share a K ({[m.num_clusters for m in models]}); label files are named by K")


def label_groups(
    groups: Iterable[Any], frame_features: FrameFeatures, models: list[KMeansModel], workers: int | None = 1,
    prepare: Callable[[Any], FeatureGroup] | None = None,
) -> Iterator[tuple[list[str], list[int], np.ndarray, list[np.ndarray]]]:
    """Yield ``(utterance_ids, num_samples, frame counts (n,), [labels (sum T_i,) int64 per model])``
    per computed feature group: one assignment per group and model, not split per utterance.

    ``prepare`` turns an item of ``groups`` into its feature group first (e.g. unpacks cached
    cepstra); with ``workers > 1`` and a ``thread_safe`` frame_features, that and the assignment run
    on threads (`map_in_order`; None: one per torch thread), results in order."""
    _check_models(models, frame_features)

    def label(group: Any) -> tuple[list[str], list[int], np.ndarray, list[np.ndarray]]:
        names, lengths, features = prepare(group) if prepare is not None else group
        counts = np.array([f.shape[0] for f in features], dtype=np.int64)
        for name, num_samples, count in zip(names, lengths, counts):
            expected = frame_features.num_frames(num_samples)
            if count != expected:
                raise ValueError(f"utterance {name}: {count} feature frames for {num_samples} samples, "
                                 f"expected {expected} at {frame_features.frame_rate} Hz")
        frames = concatenate_frames(features)
        where = names[0] if len(names) == 1 else f"group starting at {names[0]}"
        return names, lengths, counts, [model.predict(frames, where).cpu().numpy() for model in models]

    yield from map_in_order(label, groups, usable_workers(frame_features, workers))


def label_feature_groups(
    groups: Iterable[FeatureGroup], frame_features: FrameFeatures, models: list[KMeansModel]
) -> Iterator[tuple[str, int, list[np.ndarray]]]:
    """Yield ``(utterance_id, num_samples, [labels (T,) int64 per model])`` for computed feature groups."""
    for names, lengths, counts, label_sets in label_groups(groups, frame_features, models):
        label_sets = [np.split(labels, np.cumsum(counts)[:-1]) for labels in label_sets]
        for index, (name, num_samples) in enumerate(zip(names, lengths)):
            yield name, num_samples, [labels[index] for labels in label_sets]


@lru_cache(maxsize=16)
def _label_codes(num_ids: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``"<id> "`` for ids 0..num_ids-1 as zero-padded 4- or 8-byte words (num_ids,), and their lengths."""
    texts = [f"{i} ".encode() for i in range(num_ids)]
    longest = max(len(text) for text in texts)
    if longest > 8:
        return None
    dtype = np.uint32 if longest <= 4 else np.uint64
    table = np.zeros((num_ids, np.dtype(dtype).itemsize), dtype=np.uint8)
    for index, text in enumerate(texts):
        table[index, : len(text)] = np.frombuffer(text, dtype=np.uint8)
    return table.view(dtype).ravel(), np.array([len(text) for text in texts], dtype=np.int64)


def format_label_lines(labels: np.ndarray, counts: np.ndarray) -> bytes:
    """``.km`` text of consecutive utterances: per utterance its (T_i,) ids joined by spaces, then a newline.

    Same bytes as ``" ".join(map(str, row)) + "\n"`` per row, built with array operations (8x
    faster for 656k labels): each id picks its pre-formatted ``"<id> "`` from a table of
    zero-padded words, the padding bytes are dropped and the last space of every line becomes
    the newline.
    """
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    codes = _label_codes(int(labels.max()) + 1) if len(labels) and labels.min() >= 0 else None
    if codes is None or (counts == 0).any():  # rare shapes: the plain way
        rows = np.split(labels, np.cumsum(counts)[:-1])
        return "".join(" ".join(map(str, row.tolist())) + "\n" for row in rows).encode()
    words, lengths = codes
    padded = words[labels].view(np.uint8)
    text = np.compress(padded != 0, padded)
    line_ends = np.cumsum(lengths[labels])[np.cumsum(counts) - 1] - 1
    text[line_ends] = ord("\n")
    return text.tobytes()


def iter_labels(
    utterances: Iterable[tuple[str, np.ndarray]],
    frame_features: FrameFeatures,
    models: list[KMeansModel],
    batch_seconds: float = 200.0,
) -> Iterator[tuple[str, int, list[np.ndarray]]]:
    """Yield ``(utterance_id, num_samples, [labels (T,) int64 per model])`` on the fly."""
    _check_models(models, frame_features)
    yield from label_feature_groups(iter_feature_groups(utterances, frame_features, batch_seconds), frame_features, models)


def write_label_files(
    utterances: Iterable[tuple[str, np.ndarray]],
    frame_features: FrameFeatures,
    models: list[KMeansModel],
    output_dir: str | Path,
    kmeans_paths: list[str] | None = None,
    data: str = "",
    batch_seconds: float = 200.0,
    workers: int | None = None,
) -> LabelMetadata:
    """Assign labels streaming and write ``k{K}.km`` files, ``ids.txt`` and ``labels.json``.

    ``workers`` threads (None: one per torch thread) each compute and label whole groups."""
    _check_models(models, frame_features)
    groups = audio_groups(utterances, frame_features.name, batch_seconds)
    workers = usable_workers(frame_features, workers)
    with pipeline_threads(workers):
        return write_label_groups(groups, frame_features, models, output_dir, kmeans_paths, data, workers,
                                  prepare=lambda group: compute_feature_group(frame_features, group))


def write_label_groups(
    groups: Iterable[FeatureGroup],
    frame_features: FrameFeatures,
    models: list[KMeansModel],
    output_dir: str | Path,
    kmeans_paths: list[str] | None = None,
    data: str = "",
    workers: int | None = 1,
    prepare: Callable[[Any], FeatureGroup] | None = None,
) -> LabelMetadata:
    """Write ``k{K}.km``, ``ids.txt`` and ``labels.json`` from feature groups (see `label_groups`
    for ``workers`` and ``prepare``)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _check_models(models, frame_features)
    handles = [open(output_dir / km_file_name(model.num_clusters), "wb") for model in models]
    count = frames = 0
    try:
        with open(output_dir / IDS_FILE, "w") as ids_file:
            for names, _, counts, label_sets in label_groups(groups, frame_features, models, workers, prepare):
                if _WHITESPACE.search("".join(names)):
                    name = next(name for name in names if _WHITESPACE.search(name))
                    raise ValueError(f"utterance id {name!r} contains whitespace; ids.txt needs one id per line")
                ids_file.write("".join(name + "\n" for name in names))
                for handle, labels in zip(handles, label_sets):
                    handle.write(format_label_lines(labels, counts))
                count += len(names)
                frames += int(counts.sum())
    finally:
        for handle in handles:
            handle.close()
    metadata = LabelMetadata(
        label_rate=frame_features.frame_rate, num_clusters=[m.num_clusters for m in models], feature=frame_features.name,
        feature_dim=frame_features.dim, kmeans=list(kmeans_paths or []), num_utterances=count, num_frames=frames, data=data,
    )
    metadata.save(output_dir)
    logger.info("wrote labels of %d utterances (%d frames) to %s", count, frames, output_dir)
    return metadata


def read_km_file(path: str | Path) -> list[np.ndarray]:
    """One (T_i,) int64 array per line of a ``.km`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file {path} not found")
    rows = []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            try:
                rows.append(np.array(line.split(), dtype=np.int64))
            except ValueError as error:
                raise ValueError(f"{path}:{number}: not a line of integer cluster ids ({error})") from error
    return rows


def read_label_directory(directory: str | Path) -> tuple[LabelMetadata, list[str], dict[int, list[np.ndarray]]]:
    """Read ``labels.json``, ``ids.txt`` and every ``k{K}.km`` of a label directory."""
    directory = Path(directory)
    metadata = LabelMetadata.load(directory)
    ids_path = directory / IDS_FILE
    if not ids_path.is_file():
        raise FileNotFoundError(f"{ids_path} not found next to labels.json")
    ids = ids_path.read_text().split("\n")[:-1]
    labels = {}
    for k in metadata.num_clusters:
        rows = read_km_file(directory / km_file_name(k))
        if len(rows) != len(ids):
            raise ValueError(f"{directory / km_file_name(k)} has {len(rows)} lines but ids.txt lists {len(ids)} "
                             "utterances; the files come from different runs")
        bad = next((i for i, row in enumerate(rows) if len(row) and (row.min() < 0 or row.max() >= k)), None)
        if bad is not None:
            raise ValueError(f"{directory / km_file_name(k)}: utterance {ids[bad]} has ids outside 0..{k - 1}")
        labels[k] = rows
    return metadata, ids, labels


def check_label_length(
    utterance_id: str, num_labels: int, num_samples: int, label_rate: float, tolerance_seconds: float = 0.1
) -> None:
    """Raise if ``num_labels`` at ``label_rate`` Hz does not span ``num_samples`` of 16 kHz audio.

    The tolerance (fairseq's HubertDataset uses 0.1 s) absorbs framing edges; a 50 Hz vs
    100 Hz mix-up is off by half the duration and always fails.
    """
    audio_seconds = num_samples / SAMPLE_RATE
    label_seconds = num_labels / label_rate
    if abs(audio_seconds - label_seconds) > max(tolerance_seconds, 2.5 / label_rate):
        raise ValueError(
            f"utterance {utterance_id}: {num_labels} labels at {label_rate:g} Hz span {label_seconds:.2f} s but the "
            f"audio is {audio_seconds:.2f} s; the labels were made for other audio or another label rate"
        )

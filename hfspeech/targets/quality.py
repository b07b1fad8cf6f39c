"""Cluster quality against frame-level phone alignments (HuBERT paper, section IV-E).

With ``p(i, j)`` the joint frequency of phone ``i`` and cluster ``j`` over all frames:

* phone purity   = sum_j p(j) max_i p(i | j) = sum_j max_i p(i, j)
* cluster purity = sum_i p(i) max_j p(j | i) = sum_i max_j p(i, j)
* PNMI           = I(phone; cluster) / H(phone)
                 = sum_ij p(i, j) log(p(i, j) / (p(i) p(j))) / (-sum_i p(i) log p(i))

Alignments come as TIMIT-style ``.phn`` files (``START END PHONE`` per line, sample indices
at 16 kHz) found under a directory, or as one frame-level TSV
(``UTTERANCE_ID<TAB>PHONE PHONE ...`` at a stated frame rate).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000


@dataclass
class PhoneSegments:
    """Phone intervals of one utterance: starts/ends in samples (16 kHz), phone names."""

    starts: np.ndarray
    ends: np.ndarray
    phones: list[str]


@dataclass
class QualityReport:
    """Quality of one label set against phone alignments."""

    pnmi: float
    phone_purity: float
    cluster_purity: float
    num_frames: int
    num_utterances: int
    num_phones: int
    num_clusters_used: int

    def to_dict(self) -> dict:
        return asdict(self)


def read_phn_file(path: str | Path) -> PhoneSegments:
    """Parse a TIMIT ``.phn`` file; segments must be ordered, non-overlapping and contiguous."""
    path = Path(path)
    starts, ends, phones = [], [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
            raise ValueError(f"{path}:{number}: expected 'START_SAMPLE END_SAMPLE PHONE', got {line!r}")
        start, end = int(parts[0]), int(parts[1])
        if end <= start:
            raise ValueError(f"{path}:{number}: segment end {end} is not after its start {start}")
        if ends and start != ends[-1]:
            raise ValueError(f"{path}:{number}: segment starts at sample {start} but the previous one ends at "
                             f"{ends[-1]}; alignments must cover the audio without gaps or overlaps")
        starts.append(start)
        ends.append(end)
        phones.append(parts[2])
    if not phones:
        raise ValueError(f"{path}: no phone segments")
    return PhoneSegments(np.array(starts), np.array(ends), phones)


def read_phn_directory(directory: str | Path) -> dict[str, PhoneSegments]:
    """All ``*.phn`` files under ``directory`` keyed by relative path without suffix (``spk/utt``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"alignment directory {directory} does not exist")
    alignments = {str(path.relative_to(directory).with_suffix("")): read_phn_file(path)
                  for path in sorted(directory.rglob("*.phn"))}
    if not alignments:
        raise FileNotFoundError(f"no .phn files under {directory}")
    return alignments


def read_frame_tsv(path: str | Path, frame_rate: float) -> dict[str, PhoneSegments]:
    """Frame-level TSV (``ID<TAB>phone per frame``, ``frame_rate`` Hz) -> segments per utterance."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"alignment TSV {path} not found")
    samples_per_frame = SAMPLE_RATE / frame_rate
    alignments = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        name, separator, phones = line.partition("\t")
        frames = phones.split()
        if not separator or not frames:
            raise ValueError(f"{path}:{number}: expected 'UTTERANCE_ID<TAB>PHONE PHONE ...'")
        if name in alignments:
            raise ValueError(f"{path}:{number}: utterance {name} listed twice")
        bounds = np.round(np.arange(len(frames) + 1) * samples_per_frame).astype(np.int64)
        alignments[name] = PhoneSegments(bounds[:-1], bounds[1:], frames)
    return alignments


def frame_phones(
    segments: PhoneSegments, num_frames: int, label_rate: float, utterance_id: str, tolerance_seconds: float = 0.1
) -> list[str]:
    """Phone at the centre of each of ``num_frames`` label frames (frame t centred on (t + 0.5) / rate).

    Raises ValueError when the alignment and the labels disagree on the duration by more than
    ``tolerance_seconds`` (wrong file, wrong label rate, or an alignment that does not cover the
    audio); frame centres up to the tolerance past the last segment take the last phone.
    """
    aligned_start = segments.starts[0] / SAMPLE_RATE
    aligned_end = segments.ends[-1] / SAMPLE_RATE
    label_end = num_frames / label_rate
    if aligned_start > tolerance_seconds:
        raise ValueError(f"utterance {utterance_id}: the alignment starts at {aligned_start:.3f} s, so it does not "
                         "cover the start of the audio; align the whole utterance")
    if abs(label_end - aligned_end) > tolerance_seconds:
        raise ValueError(
            f"utterance {utterance_id}: {num_frames} labels at {label_rate:g} Hz span {label_end:.2f} s but the "
            f"alignment covers {aligned_end:.2f} s; the alignment does not cover the audio or the labels have "
            "another rate/come from other audio"
        )
    centres = (np.arange(num_frames) + 0.5) / label_rate * SAMPLE_RATE
    index = np.searchsorted(segments.ends, centres, side="right")
    index = np.clip(index, 0, len(segments.phones) - 1)
    return [segments.phones[i] for i in index]


def co_occurrence(phones: list[np.ndarray], clusters: list[np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """Counts (num_phones, num_clusters) of frame-level (phone, cluster) pairs, and the phone names.

    ``phones[i]`` holds phone names per frame of utterance i, ``clusters[i]`` int cluster ids.
    """
    names = sorted({p for row in phones for p in row})
    index = {p: i for i, p in enumerate(names)}
    phone_ids = np.concatenate([np.array([index[p] for p in row], dtype=np.int64) for row in phones])
    cluster_ids = np.concatenate(clusters).astype(np.int64)
    if len(phone_ids) != len(cluster_ids):
        raise ValueError(f"{len(phone_ids)} phone frames vs {len(cluster_ids)} cluster frames")
    if cluster_ids.min(initial=0) < 0:
        raise ValueError("cluster ids must be non-negative")
    counts = np.zeros((len(names), int(cluster_ids.max(initial=0)) + 1), dtype=np.int64)
    np.add.at(counts, (phone_ids, cluster_ids), 1)
    return counts, names


def quality_from_counts(counts: np.ndarray) -> tuple[float, float, float]:
    """(PNMI, phone purity, cluster purity) of a (num_phones, num_clusters) count matrix."""
    total = counts.sum()
    if total == 0:
        raise ValueError("no frames to measure")
    joint = counts / total
    p_phone = joint.sum(1)
    p_cluster = joint.sum(0)
    nonzero = joint > 0
    outer = np.outer(p_phone, p_cluster)
    mutual_information = float((joint[nonzero] * np.log(joint[nonzero] / outer[nonzero])).sum())
    phone_entropy = float(-(p_phone[p_phone > 0] * np.log(p_phone[p_phone > 0])).sum())
    pnmi = mutual_information / phone_entropy if phone_entropy > 0 else math.nan
    return pnmi, float(joint.max(0).sum()), float(joint.max(1).sum())


def measure_quality(
    labels: dict[str, np.ndarray],
    alignments: dict[str, PhoneSegments],
    label_rate: float,
    tolerance_seconds: float = 0.1,
) -> tuple[QualityReport, np.ndarray, list[str]]:
    """PNMI and purities of frame labels (utterance id -> (T,) ids) against phone alignments.

    Every labelled utterance must have an alignment (looked up by id, then by its last path
    component). Returns the report, the co-occurrence counts and the phone names.
    """
    by_stem = {}
    for key in alignments:
        by_stem.setdefault(Path(key).name, []).append(key)
    phones, clusters, missing = [], [], []
    for name, row in labels.items():
        key = name if name in alignments else None
        if key is None and len(by_stem.get(Path(name).name, [])) == 1:
            key = by_stem[Path(name).name][0]
        if key is None:
            missing.append(name)
            continue
        phones.append(np.array(frame_phones(alignments[key], len(row), label_rate, name, tolerance_seconds)))
        clusters.append(np.asarray(row))
    if missing:
        raise ValueError(f"{len(missing)} labelled utterances have no alignment (e.g. {missing[:3]}); "
                         "give alignments for all of them or measure a label subset")
    counts, names = co_occurrence(phones, clusters)
    pnmi, phone_purity, cluster_purity = quality_from_counts(counts)
    report = QualityReport(
        pnmi=pnmi, phone_purity=phone_purity, cluster_purity=cluster_purity, num_frames=int(counts.sum()),
        num_utterances=len(clusters), num_phones=len(names), num_clusters_used=int((counts.sum(0) > 0).sum()),
    )
    return report, counts, names


def plot_co_occurrence(counts: np.ndarray, phones: list[str], path: str | Path, title: str = "") -> Path:
    """Save a heat map of p(phone | cluster), clusters ordered by their most likely phone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    used = counts.sum(0) > 0
    conditional = counts[:, used] / counts[:, used].sum(0, keepdims=True)
    order = np.lexsort((-conditional.max(0), conditional.argmax(0)))
    figure, axis = plt.subplots(figsize=(max(6, 0.06 * used.sum() + 3), max(4, 0.18 * len(phones) + 1)))
    image = axis.imshow(conditional[:, order], aspect="auto", interpolation="nearest", cmap="viridis")
    axis.set_yticks(range(len(phones)), phones, fontsize=6)
    axis.set_xlabel("cluster (sorted by most likely phone)")
    axis.set_ylabel("phone")
    axis.set_title(title or "p(phone | cluster)")
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path

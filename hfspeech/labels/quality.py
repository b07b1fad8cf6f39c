"""Cluster quality against frame-level phone alignments (HuBERT paper, section IV-E).

With ``p(i, j)`` the joint frequency of phone ``i`` and cluster ``j`` over all frames:

* phone purity   = sum_j p(j) max_i p(i | j) = sum_j max_i p(i, j)
* cluster purity = sum_i p(i) max_j p(j | i) = sum_i max_j p(i, j)
* PNMI           = I(phone; cluster) / H(phone)
                 = sum_ij p(i, j) log(p(i, j) / (p(i) p(j))) / (-sum_i p(i) log p(i))

Alignments come as TIMIT-style ``.phn`` files (``START END PHONE`` per line, sample indices
at 16 kHz) found under a directory, or as one frame-level TSV
(``UTTERANCE_ID<TAB>PHONE PHONE ...`` at a stated frame rate).

Coverage. Label frame ``t`` (centred on ``(t + 0.5) / label_rate`` seconds) is scored when an
alignment segment covers its centre; frames before the first segment, in gaps between
segments or after the last one are *uncovered*: left out of the counts and reported (total,
utterances, largest per utterance), as fairseq's ``measure_teacher_quality.py`` scores the
frames both sides have and reports the difference. Real alignments often leave out the
trailing (or leading) silence, so an utterance may have up to ``max_uncovered_seconds``
(default 0.5 s) uncovered; beyond that, or when the alignment covers less than half of the
labelled audio, or runs past the labels' end, it is refused naming the utterance: the
alignment then belongs to other audio, or the labels have another rate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
#: Uncovered audio (seconds) an utterance may have: real alignments leave out trailing silence.
DEFAULT_MAX_UNCOVERED_SECONDS = 0.5
#: An alignment covering less than this fraction of its labelled audio belongs to other audio.
MIN_COVERED_FRACTION = 0.5


@dataclass
class PhoneSegments:
    """Phone intervals of one utterance: starts/ends in samples (16 kHz), phone names, and the
    file (or ``file:line``) they were read from, for messages."""

    starts: np.ndarray
    ends: np.ndarray
    phones: list[str]
    source: str = ""


@dataclass
class FrameAlignment:
    """Phones of one utterance's label frames (``None`` where uncovered) and the uncovered counts.

    ``phones`` has one entry per label frame (T,); ``leading``, ``gaps`` and ``trailing`` count
    the uncovered frames before the first segment, between segments and after the last one.
    """

    phones: list[str | None]
    leading: int
    gaps: int
    trailing: int

    @property
    def uncovered(self) -> int:
        """Label frames no segment covers."""
        return self.leading + self.gaps + self.trailing


@dataclass
class QualityReport:
    """Quality of one label set against phone alignments.

    ``num_frames`` counts the scored (covered) frames; ``uncovered_frames`` the label frames no
    alignment segment covers, in ``uncovered_utterances`` utterances, at most
    ``largest_uncovered_frames`` of them in one (``largest_uncovered_utterance``), each
    utterance allowed up to ``max_uncovered_seconds``.
    """

    pnmi: float
    phone_purity: float
    cluster_purity: float
    num_frames: int
    num_utterances: int
    num_phones: int
    num_clusters_used: int
    uncovered_frames: int = 0
    uncovered_utterances: int = 0
    largest_uncovered_frames: int = 0
    largest_uncovered_utterance: str | None = None
    max_uncovered_seconds: float = DEFAULT_MAX_UNCOVERED_SECONDS

    def to_dict(self) -> dict:
        return asdict(self)


def read_phn_file(path: str | Path) -> PhoneSegments:
    """Parse a TIMIT ``.phn`` file; segments must be in time order and must not overlap.

    Gaps between segments are allowed: their frames are uncovered (see the module docstring).
    """
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
        if ends and start < ends[-1]:
            raise ValueError(f"{path}:{number}: segment starts at sample {start} but the previous one ends at "
                             f"{ends[-1]}; segments must be in time order without overlaps")
        starts.append(start)
        ends.append(end)
        phones.append(parts[2])
    if not phones:
        raise ValueError(f"{path}: no phone segments")
    return PhoneSegments(np.array(starts), np.array(ends), phones, str(path))


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
        alignments[name] = PhoneSegments(bounds[:-1], bounds[1:], frames, f"{path}:{number}")
    return alignments


def align_frames(
    segments: PhoneSegments,
    num_frames: int,
    label_rate: float,
    utterance_id: str,
    tolerance_seconds: float = 0.1,
    max_uncovered_seconds: float = DEFAULT_MAX_UNCOVERED_SECONDS,
) -> FrameAlignment:
    """Phone at the centre of each of ``num_frames`` label frames (frame t centred on (t + 0.5) / rate).

    Frames whose centre no segment covers are uncovered (``None``). Raises ValueError naming the
    utterance when the alignment runs more than ``tolerance_seconds`` past the labels' end, covers
    less than half of their span, or leaves more than ``max_uncovered_seconds`` uncovered: wrong
    file, wrong label rate, or an alignment that does not cover the audio.
    """
    aligned_start = segments.starts[0] / SAMPLE_RATE
    aligned_end = segments.ends[-1] / SAMPLE_RATE
    label_end = num_frames / label_rate
    span_message = (f"utterance {utterance_id}: {num_frames} labels at {label_rate:g} Hz span {label_end:.2f} s but "
                    f"the alignment covers {aligned_end:.2f} s; the alignment does not cover the audio or the labels "
                    "have another rate/come from other audio")
    if aligned_end - label_end > tolerance_seconds:
        raise ValueError(span_message)
    centres = (np.arange(num_frames) + 0.5) / label_rate * SAMPLE_RATE
    index = np.searchsorted(segments.ends, centres, side="right")  # first segment ending after the centre
    inside = index < len(segments.phones)
    covered = inside & (segments.starts[np.minimum(index, len(segments.phones) - 1)] <= centres)
    leading = int((centres < segments.starts[0]).sum())
    trailing = int((~inside).sum())
    alignment = FrameAlignment([segments.phones[i] if ok else None for i, ok in zip(index.tolist(), covered.tolist())],
                               leading, int(num_frames - covered.sum()) - leading - trailing, trailing)
    where = f" ({segments.source})" if segments.source else ""
    covered_seconds = (num_frames - alignment.uncovered) / label_rate
    if num_frames and covered_seconds < MIN_COVERED_FRACTION * label_end:
        raise ValueError(
            f"utterance {utterance_id}: the alignment{where} covers {covered_seconds:.2f} s of the {label_end:.2f} s "
            f"its {num_frames} labels at {label_rate:g} Hz span ({100 * covered_seconds / label_end:.0f}%): less "
            "than half of the audio is aligned, so the alignment belongs to other audio or the labels have another "
            "rate; align the whole utterance or check the label rate"
        )
    uncovered_seconds = alignment.uncovered / label_rate
    if uncovered_seconds > max_uncovered_seconds:
        detail = (f" ({uncovered_seconds:.2f} s of {label_end:.2f} s uncovered: {alignment.leading / label_rate:.2f} s "
                  f"before the alignment{where}, {alignment.gaps / label_rate:.2f} s in gaps, "
                  f"{alignment.trailing / label_rate:.2f} s after it; more than max_uncovered_seconds / "
                  f"--max-uncovered {max_uncovered_seconds:g} s)")
        largest = max(alignment.leading, alignment.gaps, alignment.trailing)
        if largest == alignment.leading:
            raise ValueError(f"utterance {utterance_id}: the alignment starts at {aligned_start:.3f} s, so it does not "
                             f"cover the start of the audio; align the whole utterance{detail}")
        if largest == alignment.trailing:
            raise ValueError(span_message + detail)
        raise ValueError(f"utterance {utterance_id}: the alignment leaves gaps between its segments; align the "
                         f"whole utterance{detail}")
    return alignment


def frame_phones(segments: PhoneSegments, num_frames: int, label_rate: float, utterance_id: str,
                 **limits: float) -> list[str | None]:
    """The phone of each label frame, ``None`` where uncovered; ``limits`` as for :func:`align_frames`."""
    return align_frames(segments, num_frames, label_rate, utterance_id, **limits).phones


def check_rate_against_alignments(
    spans: list[tuple[str, int, float]], label_rate: float, max_uncovered_seconds: float, rate_source: str
) -> None:
    """Refuse labels whose lengths fit the alignments at another rate than the stated one.

    ``spans`` holds ``(utterance id, label frames, alignment end in seconds)`` per utterance.
    With three or more utterances, the rate their lengths imply (median of frames / alignment
    end) is compared with ``label_rate``: when it differs by more than 25%, every utterance
    fits it within ``max_uncovered_seconds`` and some do not fit the stated rate, the labels
    were written at another rate than ``rate_source`` says.
    """
    if len(spans) < 3:
        return
    implied = float(np.median([frames / end for _, frames, end in spans]))
    if abs(implied / label_rate - 1) <= 0.25:
        return
    fits = all(abs(frames / implied - end) <= max_uncovered_seconds for _, frames, end in spans)
    misfits = [(name, frames, end) for name, frames, end in spans
               if abs(frames / label_rate - end) > max_uncovered_seconds]
    if fits and misfits:
        name, frames, end = misfits[0]
        raise ValueError(
            f"{rate_source} says the labels tick at {label_rate:g} Hz, but the lengths of all {len(spans)} labelled "
            f"utterances match their alignments at {implied:.1f} Hz (e.g. utterance {name}: {frames} labels span "
            f"{frames / label_rate:.2f} s at {label_rate:g} Hz, its alignment ends at {end:.2f} s): the labels have "
            f"another rate than {rate_source} says; correct label_rate there or write the labels again with "
            "`hfspeech labels assign`"
        )


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
    max_uncovered_seconds: float = DEFAULT_MAX_UNCOVERED_SECONDS,
    rate_source: str = "label_rate",
) -> tuple[QualityReport, np.ndarray, list[str]]:
    """PNMI and purities of frame labels (utterance id -> (T,) ids) against phone alignments.

    Every labelled utterance must have an alignment (looked up by id, then by its last path
    component). Only frames an alignment segment covers are scored; the uncovered ones are
    counted in the report (see :func:`align_frames` for what is refused). ``rate_source`` names
    where ``label_rate`` comes from (``labels.json``) in messages. Returns the report, the
    co-occurrence counts and the phone names.
    """
    by_stem = {}
    for key in alignments:
        by_stem.setdefault(Path(key).name, []).append(key)
    matched, missing = [], []
    for name, row in labels.items():
        key = name if name in alignments else None
        if key is None and len(by_stem.get(Path(name).name, [])) == 1:
            key = by_stem[Path(name).name][0]
        if key is None:
            missing.append(name)
            continue
        matched.append((name, np.asarray(row), alignments[key]))
    if missing:
        raise ValueError(f"{len(missing)} labelled utterances have no alignment (e.g. {missing[:3]}); "
                         "give alignments for all of them or measure a label subset")
    check_rate_against_alignments([(name, len(row), segments.ends[-1] / SAMPLE_RATE) for name, row, segments in matched],
                     label_rate, max_uncovered_seconds, rate_source)
    phones, clusters = [], []
    uncovered: dict[str, int] = {}
    for name, row, segments in matched:
        alignment = align_frames(segments, len(row), label_rate, name, tolerance_seconds, max_uncovered_seconds)
        keep = np.array([phone is not None for phone in alignment.phones], dtype=bool)
        phones.append(np.array([phone for phone in alignment.phones if phone is not None], dtype=object))
        clusters.append(row[keep])
        if alignment.uncovered:
            uncovered[name] = alignment.uncovered
    counts, names = co_occurrence(phones, clusters)
    pnmi, phone_purity, cluster_purity = quality_from_counts(counts)
    largest = max(uncovered, key=uncovered.get) if uncovered else None
    report = QualityReport(
        pnmi=pnmi, phone_purity=phone_purity, cluster_purity=cluster_purity, num_frames=int(counts.sum()),
        num_utterances=len(clusters), num_phones=len(names), num_clusters_used=int((counts.sum(0) > 0).sum()),
        uncovered_frames=sum(uncovered.values()), uncovered_utterances=len(uncovered),
        largest_uncovered_frames=uncovered.get(largest, 0), largest_uncovered_utterance=largest,
        max_uncovered_seconds=max_uncovered_seconds,
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

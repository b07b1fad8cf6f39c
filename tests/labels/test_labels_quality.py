"""PNMI / purity: hand-computed values, sklearn mutual information, limits, alignments, and an
end-to-end measurement on flite-synthesised speech with flite's own phone timings."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image
from sklearn.metrics import mutual_info_score

from hfspeech.labels.kmeans import fit_kmeans
from hfspeech.labels.mfcc import compute_mfcc_batch
from hfspeech.labels.quality import (
    PhoneSegments,
    align_frames,
    co_occurrence,
    frame_phones,
    measure_quality,
    plot_co_occurrence,
    quality_from_counts,
    read_frame_tsv,
    read_phn_directory,
    read_phn_file,
)
from helpers import FIXTURES

FLITE = FIXTURES / "labels" / "flite"


pytestmark = pytest.mark.usefixtures("single_thread")


def test_hand_computed_example() -> None:
    # phones a a b b, clusters 0 0 0 1: p(a,0)=1/2, p(b,0)=1/4, p(b,1)=1/4
    counts, names = co_occurrence([np.array(["a", "a", "b", "b"])], [np.array([0, 0, 0, 1])])
    assert names == ["a", "b"]
    np.testing.assert_array_equal(counts, [[2, 0], [1, 1]])
    pnmi, phone_purity, cluster_purity = quality_from_counts(counts)
    mutual = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3) + 0.25 * math.log(2)
    assert pnmi == pytest.approx(mutual / math.log(2))
    assert pnmi == pytest.approx(0.311278, abs=1e-6)
    assert phone_purity == pytest.approx(0.75)  # max_i p(i,j): 1/2 + 1/4
    assert cluster_purity == pytest.approx(0.75)  # max_j p(i,j): 1/2 + 1/4


def test_matches_sklearn_mutual_information_on_random_labels() -> None:
    rng = np.random.RandomState(0)
    phones = rng.randint(6, size=5000)
    clusters = (phones * 3 + rng.randint(4, size=5000)) % 11
    counts, _ = co_occurrence([phones.astype(str)], [clusters])
    pnmi, _, _ = quality_from_counts(counts)
    p = np.bincount(phones) / len(phones)
    assert pnmi == pytest.approx(mutual_info_score(phones, clusters) / -(p * np.log(p)).sum(), rel=1e-9)


def test_limits_labels_equal_phones_and_constant_labels() -> None:
    rng = np.random.RandomState(1)
    phones = rng.randint(8, size=2000)
    counts, _ = co_occurrence([phones.astype(str)], [phones])
    assert quality_from_counts(counts) == pytest.approx((1.0, 1.0, 1.0))
    counts, _ = co_occurrence([phones.astype(str)], [np.zeros(2000, dtype=int)])
    pnmi, phone_purity, cluster_purity = quality_from_counts(counts)
    assert pnmi == pytest.approx(0.0, abs=1e-12)
    assert phone_purity == pytest.approx(np.bincount(phones).max() / 2000)
    assert cluster_purity == pytest.approx(1.0)


def test_phn_frames_take_the_phone_at_the_frame_centre(tmp_path: Path) -> None:
    (tmp_path / "u1.phn").write_text("0 4000 a\n4000 16000 b\n")
    segments = read_phn_file(tmp_path / "u1.phn")
    phones = frame_phones(segments, 98, 100.0, "u1")  # 98 MFCC frames of 1 s
    assert phones == ["a"] * 25 + ["b"] * 73  # centre of frame 24 = 3920 < 4000 <= 4080
    assert frame_phones(segments, 49, 50.0, "u1") == ["a"] * 12 + ["b"] * 37


def test_bad_alignments_raise_naming_the_utterance(tmp_path: Path) -> None:
    segments = PhoneSegments(np.array([0]), np.array([8000]), ["a"])
    # 0.48 s of the 0.98 s uncovered: within the default 0.5 s, beyond a stricter tolerance
    with pytest.raises(ValueError, match="utterance spk/u2: 98 labels at 100 Hz span 0.98 s but the alignment covers 0.50 s"):
        frame_phones(segments, 98, 100.0, "spk/u2", max_uncovered_seconds=0.25)
    with pytest.raises(ValueError, match="utterance u3: 49 labels at 50 Hz"):  # 100 Hz alignment vs 50 Hz mix-up
        frame_phones(PhoneSegments(np.array([0]), np.array([32000]), ["a"]), 49, 50.0, "u3")
    (tmp_path / "overlap.phn").write_text("0 300 a\n200 400 b\n")
    with pytest.raises(ValueError, match="overlap.phn:2: segment starts at sample 200"):
        read_phn_file(tmp_path / "overlap.phn")
    with pytest.raises(ValueError, match="1 labelled utterances have no alignment"):
        measure_quality({"nobody": np.zeros(98, dtype=int)}, {"u1": segments}, 100.0)


def test_frame_tsv_alignments(tmp_path: Path) -> None:
    (tmp_path / "align.tsv").write_text("u1\ta a b b b\n")
    alignments = read_frame_tsv(tmp_path / "align.tsv", frame_rate=100.0)
    np.testing.assert_array_equal(alignments["u1"].ends, [160, 320, 480, 640, 800])
    report, counts, names = measure_quality({"u1": np.array([0, 0, 1, 1, 1])}, alignments, 100.0)
    assert report.pnmi == pytest.approx(1.0) and report.num_frames == 5


def test_end_to_end_pnmi_on_synthesised_speech(tmp_path: Path) -> None:
    alignments = read_phn_directory(FLITE)
    names = sorted(alignments)
    waveforms = [soundfile.read(FLITE / f"{name}.flac", dtype="float32")[0] for name in names]
    features = compute_mfcc_batch(waveforms, utterance_ids=names)
    model = fit_kmeans(torch.cat(features), 50, backend="torch", seed=0)
    labels = {name: model.predict(f).numpy() for name, f in zip(names, features)}
    report, counts, phones = measure_quality(labels, alignments, label_rate=100.0)
    rng = np.random.RandomState(0)
    random_labels = {name: rng.randint(50, size=len(row)) for name, row in labels.items()}
    random_report, _, _ = measure_quality(random_labels, alignments, label_rate=100.0)
    print(f"flite MFCC K=50: PNMI {report.pnmi:.3f} (random {random_report.pnmi:.3f}), "
          f"phone purity {report.phone_purity:.3f}, cluster purity {report.cluster_purity:.3f}")
    assert report.num_utterances == 12 and report.num_phones > 25
    assert report.pnmi > 0.3 and report.pnmi > 3 * random_report.pnmi
    assert report.phone_purity > 2 * random_report.phone_purity
    png = plot_co_occurrence(counts, phones, tmp_path / "heat.png", title="flite K=50")
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 300


def test_alignments_that_end_early_start_late_or_have_gaps_score_the_covered_frames(tmp_path: Path) -> None:
    # 100 label frames at 100 Hz (1 s); frame t is centred on sample (t + 0.5) * 160
    (tmp_path / "early.phn").write_text("0 4000 a\n4000 12800 b\n")  # ends at 0.8 s
    (tmp_path / "late.phn").write_text("3200 16000 a\n")  # starts at 0.2 s
    (tmp_path / "gap.phn").write_text("0 4000 a\n8000 16000 b\n")  # nothing from 0.25 s to 0.5 s
    alignments = read_phn_directory(tmp_path)
    early = align_frames(alignments["early"], 100, 100.0, "early")
    # centre 24 = 3920 < 4000 (a); centre 79 = 12720 < 12800 (b); centres 80..99 are past the end
    assert early.phones == ["a"] * 25 + ["b"] * 55 + [None] * 20
    assert (early.leading, early.gaps, early.trailing) == (0, 0, 20)
    late = align_frames(alignments["late"], 100, 100.0, "late")  # centre 19 = 3120 < 3200 <= centre 20
    assert late.phones == [None] * 20 + ["a"] * 80 and (late.leading, late.gaps, late.trailing) == (20, 0, 0)
    gap = align_frames(alignments["gap"], 100, 100.0, "gap")  # centres 25..49 lie in [4000, 8000)
    assert gap.phones == ["a"] * 25 + [None] * 25 + ["b"] * 50 and (gap.leading, gap.gaps, gap.trailing) == (0, 25, 0)
    # labels equal to the phone on covered frames and noise on uncovered ones: only covered frames count
    rng = np.random.RandomState(0)
    labels = {}
    for name, aligned in (("early", early), ("late", late), ("gap", gap)):
        labels[name] = np.array([{"a": 0, "b": 1}[p] if p else rng.randint(2, 9) for p in aligned.phones])
    report, counts, names = measure_quality(labels, alignments, 100.0)
    assert report.pnmi == pytest.approx(1.0) and names == ["a", "b"]
    assert report.num_frames == 300 - 65 and counts.sum() == 235 and report.num_clusters_used == 2
    assert (report.uncovered_frames, report.uncovered_utterances) == (65, 3)
    assert (report.largest_uncovered_frames, report.largest_uncovered_utterance) == (25, "gap")
    assert report.to_dict()["max_uncovered_seconds"] == 0.5


def test_too_much_uncovered_audio_is_refused_naming_the_utterance(tmp_path: Path) -> None:
    half = PhoneSegments(np.array([0]), np.array([8000]), ["a"], "half.phn")  # 0.5 s of 1 s: 50 frames
    assert align_frames(half, 100, 100.0, "u").trailing == 50  # 0.5 s uncovered: exactly the default limit
    with pytest.raises(ValueError, match=r"utterance u: 100 labels at 100 Hz span 1.00 s but the alignment covers "
                                         r"0.50 s.*\(0.50 s of 1.00 s uncovered: 0.00 s before the alignment "
                                         r"\(half.phn\), 0.00 s in gaps, 0.50 s after it; .*--max-uncovered 0.4 s\)"):
        align_frames(half, 100, 100.0, "u", max_uncovered_seconds=0.4)
    with pytest.raises(ValueError, match="utterance v: the alignment starts at 0.600 s, so it does not cover the start"):
        align_frames(PhoneSegments(np.array([9600]), np.array([32000]), ["a"]), 200, 100.0, "v")  # 2 s, 0.6 s late
    with pytest.raises(ValueError, match=r"utterance w: the alignment leaves gaps .*0.60 s in gaps"):
        align_frames(PhoneSegments(np.array([0, 22400]), np.array([12800, 32000]), ["a", "b"]), 200, 100.0, "w")
    with pytest.raises(ValueError, match=r"utterance x: the alignment \(short.phn\) covers 0.40 s of the 1.00 s its "
                                         r"100 labels at 100 Hz span \(40%\): less than half"):
        align_frames(PhoneSegments(np.array([0]), np.array([6400]), ["a"], "short.phn"), 100, 100.0, "x",
                     max_uncovered_seconds=10.0)


def test_frame_tsv_alignments_follow_the_same_rule(tmp_path: Path) -> None:
    (tmp_path / "align.tsv").write_text("u1\ta a b b b\nu2\ta b\n")
    alignments = read_frame_tsv(tmp_path / "align.tsv", frame_rate=100.0)
    report, _, _ = measure_quality({"u1": np.array([0, 0, 1, 1, 1, 7, 7, 7])}, alignments, 100.0)
    assert report.num_frames == 5 and report.uncovered_frames == 3 and report.pnmi == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"utterance u2: the alignment \(.*align.tsv:2\) covers 0.02 s of the 0.05 s"):
        measure_quality({"u2": np.zeros(5, dtype=int)}, alignments, 100.0)


def test_labels_of_another_rate_than_stated_are_named() -> None:
    seconds = [1.0, 1.4, 2.4]
    alignments = {f"u{i}": PhoneSegments(np.array([0]), np.array([int(s * 16000)]), ["a"]) for i, s in enumerate(seconds)}
    at_50_hz = {f"u{i}": np.zeros(int(s * 50) - 1, dtype=int) for i, s in enumerate(seconds)}
    with pytest.raises(ValueError, match=r"labels/labels.json says the labels tick at 100 Hz, but the lengths of all 3 "
                                         r"labelled utterances match their alignments at 4\d.\d Hz \(e.g. utterance u0: "
                                         r"49 labels span 0.49 s"):
        measure_quality(at_50_hz, alignments, 100.0, rate_source="labels/labels.json")
    at_200_hz = {f"u{i}": np.zeros(int(s * 200), dtype=int) for i, s in enumerate(seconds)}
    with pytest.raises(ValueError, match=r"says the labels tick at 100 Hz, .* at 200.0 Hz"):
        measure_quality(at_200_hz, alignments, 100.0)
    report, _, _ = measure_quality(at_50_hz, alignments, 50.0)  # the right rate: every frame covered
    assert report.uncovered_frames == 0 and report.num_frames == 49 + 69 + 119

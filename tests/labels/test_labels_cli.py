"""`hfspeech labels fit|assign|quality|iterate` end to end on the flite fixtures, and label-rate checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from transformers import HubertConfig, HubertModel

from hfspeech.cli import main
from hfspeech.configuration import SpeechEncoderConfig
from hfspeech.labels.assign import read_label_directory
from hfspeech.labels.iterations import check_label_rate, run_iterations
from hfspeech.labels.kmeans import load_kmeans_models
from hfspeech.labels.layer_features import LayerFeatureReader
from hfspeech.labels.mfcc import num_mfcc_frames
from helpers import FIXTURES

FLITE = FIXTURES / "labels" / "flite"
AUDIO = FIXTURES / "labels" / "audio"


pytestmark = pytest.mark.usefixtures("single_thread")


def test_fit_assign_quality_commands(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["labels", "fit", str(FLITE), str(tmp_path / "km"), "--k", "8", "--k", "40"]) == 0
    assert [m.num_clusters for m in load_kmeans_models(tmp_path / "km")] == [8, 40]
    assert main(["labels", "assign", str(tmp_path / "km"), str(FLITE), str(tmp_path / "labels")]) == 0
    metadata, ids, labels = read_label_directory(tmp_path / "labels")
    assert metadata.label_rate == 100.0 and metadata.feature == "mfcc" and len(ids) == 12
    for name, row in zip(ids, labels[40]):
        assert len(row) == num_mfcc_frames(len(soundfile.read(FLITE / f"{name}.flac")[0]))
    capsys.readouterr()
    assert main(["labels", "quality", str(tmp_path / "labels"), "--alignments", str(FLITE), "--json",
                 "--heatmap", str(tmp_path / "heat")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["k40"]["pnmi"] > report["k8"]["pnmi"] > 0.2
    assert Path(report["k40"]["heatmap"]).is_file()


def test_quality_command_rejects_alignments_of_other_audio(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["labels", "fit", str(AUDIO), str(tmp_path / "km"), "--k", "4"]) == 0
    assert main(["labels", "assign", str(tmp_path / "km"), str(AUDIO), str(tmp_path / "labels")]) == 0
    (tmp_path / "align").mkdir()
    for name in ("an251-fash-b", "an253-fash-b", "an255-fash-b"):
        (tmp_path / "align" / f"{name}.phn").write_text("0 16000 sil\n")  # 1 s: right only for an251
    capsys.readouterr()
    assert main(["labels", "quality", str(tmp_path / "labels"), "--alignments", str(tmp_path / "align")]) == 2
    assert "utterance an253-fash-b" in capsys.readouterr().err


def test_fit_command_rejects_k_above_frames(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["labels", "fit", str(AUDIO), str(tmp_path / "km"), "--k", "5000"]) == 2
    assert "K=5000 clusters but only" in capsys.readouterr().err


def test_two_iterations_record_their_label_rates(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    HubertModel(config).save_pretrained(tmp_path / "model")
    results = run_iterations(str(AUDIO), tmp_path / "out", pretrained_model=tmp_path / "model", layer=1,
                             k_first=6, k_second=7)
    assert results["iter1"].label_rate == 100.0 and results["iter1"].num_clusters == [6]
    assert results["iter2"].label_rate == 50.0 and results["iter2"].feature == f"{tmp_path / 'model'}:1"
    metadata, ids, labels = read_label_directory(tmp_path / "out" / "iter2" / "labels")
    reader = LayerFeatureReader(HubertModel.from_pretrained(tmp_path / "model"), layer=1)
    for name, row in zip(ids, labels[7]):
        assert len(row) == reader.num_frames(len(soundfile.read(AUDIO / f"{name}.flac")[0]))
    # the HuBERT side refuses a 50 Hz / 100 Hz mix-up
    check_label_rate(tmp_path / "out" / "iter2" / "labels", SpeechEncoderConfig(label_rate=50))
    with pytest.raises(ValueError, match="labels were made at 100 Hz .* label_rate=50 Hz"):
        check_label_rate(tmp_path / "out" / "iter1" / "labels", SpeechEncoderConfig(label_rate=50))


def test_assign_rejects_kmeans_of_other_features(tmp_path: Path) -> None:
    from hfspeech.labels.kmeans import fit_kmeans
    from hfspeech.labels.iterations import assign_label_sets

    model = fit_kmeans(torch.randn(100, 20), 3, feature="mfcc")
    model.save(tmp_path / "km")
    with pytest.raises(ValueError, match="fitted on 20-dim 'mfcc' features but the extractor gives 39-dim"):
        assign_label_sets(tmp_path / "km", str(AUDIO), tmp_path / "labels")


def test_check_command_catches_labels_of_other_audio(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["labels", "fit", str(AUDIO), str(tmp_path / "km"), "--k", "4"]) == 0
    assert main(["labels", "assign", str(tmp_path / "km"), str(AUDIO), str(tmp_path / "labels")]) == 0
    assert main(["labels", "check", str(tmp_path / "labels"), str(AUDIO)]) == 0
    km = tmp_path / "labels" / "k4.km"
    lines = km.read_text().splitlines()
    lines[1] = " ".join(lines[1].split()[: len(lines[1].split()) // 2])  # half the labels: a 50/100 Hz slip
    km.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["labels", "check", str(tmp_path / "labels"), str(AUDIO)]) == 2
    assert "utterance an253-fash-b: 34 labels at 100 Hz" in capsys.readouterr().err


def phone_at(segments: list[tuple[int, int, str]], sample: float) -> str | None:
    """Independent lookup: the phone whose [start, end) holds ``sample``, None when none does."""
    for start, end, phone in segments:
        if start <= sample < end:
            return phone
    return None


def test_quality_on_timit_style_alignments_that_end_before_the_audio(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """flite's phone timings cut 0.1-0.3 s short at the end, as hand-made .phn files are: the run succeeds,
    reports exactly the frames past each alignment, and its PNMI is the PNMI of the same labels against
    the full alignments (sklearn) within 0.04."""
    from sklearn.metrics import mutual_info_score

    full, cut = {}, {}
    (tmp_path / "cut").mkdir()
    for number, path in enumerate(sorted(FLITE.glob("*.phn"))):
        segments = [(int(a), int(b), p) for a, b, p in (line.split() for line in path.read_text().splitlines())]
        end = segments[-1][1] - int((0.1 + 0.05 * (number % 5)) * 16000)
        kept = [(a, min(b, end), p) for a, b, p in segments if a < end]
        (tmp_path / "cut" / path.name).write_text("".join(f"{a} {b} {p}\n" for a, b, p in kept))
        full[path.stem], cut[path.stem] = segments, kept
    assert main(["labels", "fit", str(FLITE), str(tmp_path / "km"), "--k", "100"]) == 0
    assert main(["labels", "assign", str(tmp_path / "km"), str(FLITE), str(tmp_path / "labels")]) == 0
    capsys.readouterr()
    assert main(["labels", "quality", str(tmp_path / "labels"), "--alignments", str(tmp_path / "cut")]) == 0
    table = capsys.readouterr().out
    assert main(["labels", "quality", str(tmp_path / "labels"), "--alignments", str(tmp_path / "cut"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["k100"]
    _, ids, labels = read_label_directory(tmp_path / "labels")
    uncovered = {name: sum(phone_at(cut[name], (t + 0.5) * 160) is None for t in range(len(row)))
                 for name, row in zip(ids, labels[100])}
    assert all(frames >= 8 for frames in uncovered.values())  # cut by 0.1-0.3 s; MFCC frames end 15 ms early
    assert report["uncovered_frames"] == sum(uncovered.values())
    assert report["uncovered_utterances"] == 12 and report["num_utterances"] == 12
    assert report["largest_uncovered_frames"] == max(uncovered.values())
    assert report["largest_uncovered_utterance"] == max(uncovered, key=uncovered.get)
    assert report["num_frames"] == sum(len(row) for row in labels[100]) - report["uncovered_frames"]
    assert f"not scored: {report['uncovered_frames']} frames" in table
    phones = [phone_at(full[name], (t + 0.5) * 160) or full[name][-1][2] for name, row in zip(ids, labels[100])
              for t in range(len(row))]
    clusters = np.concatenate(labels[100])
    _, phone_counts = np.unique(phones, return_counts=True)
    p = phone_counts / phone_counts.sum()
    reference = mutual_info_score(phones, clusters) / -(p * np.log(p)).sum()
    print(f"flite MFCC K=100, alignments cut short: PNMI {report['pnmi']:.4f}, full alignments {reference:.4f}")
    assert abs(report["pnmi"] - reference) < 0.04


def test_quality_command_scores_covered_frames_of_real_audio(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """AN4 recordings with crafted alignments that end early, start late and have a gap."""
    assert main(["labels", "fit", str(AUDIO), str(tmp_path / "km"), "--k", "4"]) == 0
    assert main(["labels", "assign", str(tmp_path / "km"), str(AUDIO), str(tmp_path / "labels")]) == 0
    crafted = {"an251-fash-b": [(0, 6000, "a"), (6000, 13600, "b")],  # 1.0 s, ends 0.15 s early
               "an253-fash-b": [(2400, 11200, "a")],  # 0.7 s, starts 0.15 s late
               "an255-fash-b": [(0, 16000, "a"), (20000, 41600, "b")]}  # 2.6 s, a 0.25 s gap
    (tmp_path / "align").mkdir()
    for name, segments in crafted.items():
        (tmp_path / "align" / f"{name}.phn").write_text("".join(f"{a} {b} {p}\n" for a, b, p in segments))
    capsys.readouterr()
    command = ["labels", "quality", str(tmp_path / "labels"), "--alignments", str(tmp_path / "align"), "--json"]
    assert main(command) == 0
    report = json.loads(capsys.readouterr().out)["k4"]
    _, ids, labels = read_label_directory(tmp_path / "labels")
    uncovered = {name: sum(phone_at(crafted[name], (t + 0.5) * 160) is None for t in range(len(row)))
                 for name, row in zip(ids, labels[4])}
    assert uncovered["an251-fash-b"] == 98 - 85 and uncovered["an253-fash-b"] == 15  # by hand: 13600/160 - 0.5
    assert report["uncovered_frames"] == sum(uncovered.values()) and report["uncovered_utterances"] == 3
    assert report["largest_uncovered_utterance"] == "an255-fash-b" and report["largest_uncovered_frames"] == 25
    assert main(command + ["--max-uncovered", "0.1"]) == 2
    error = capsys.readouterr().err
    assert "utterance an251-fash-b: 98 labels at 100 Hz span 0.98 s but the alignment covers 0.85 s" in error
    assert "--max-uncovered 0.1 s" in error
    metadata = json.loads((tmp_path / "labels" / "labels.json").read_text())
    (tmp_path / "labels" / "labels.json").write_text(json.dumps({**metadata, "label_rate": 50.0}))
    for name in crafted:  # whole-utterance alignments, so only the stated rate is wrong
        frames = len(soundfile.read(AUDIO / f"{name}.flac")[0])
        (tmp_path / "align" / f"{name}.phn").write_text(f"0 {frames} sil\n")
    assert main(command) == 2
    assert f"{tmp_path / 'labels' / 'labels.json'} says the labels tick at 50 Hz" in capsys.readouterr().err


def test_fit_command_takes_options_between_its_positionals(tmp_path: Path) -> None:
    assert main(["labels", "fit", "--k", "4", str(AUDIO), "--seed", "3", str(tmp_path / "mixed"), "--k", "6"]) == 0
    assert main(["labels", "fit", str(AUDIO), str(tmp_path / "plain"), "--k", "4", "--k", "6", "--seed", "3"]) == 0
    mixed, plain = load_kmeans_models(tmp_path / "mixed"), load_kmeans_models(tmp_path / "plain")
    assert [m.num_clusters for m in mixed] == [m.num_clusters for m in plain] == [4, 6]
    for a, b in zip(mixed, plain):
        torch.testing.assert_close(a.centroids, b.centroids, atol=0, rtol=0)

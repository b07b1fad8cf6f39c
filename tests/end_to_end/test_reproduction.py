"""The reproduction study (benchmarks/reproduce/run.py) end to end at a small scale: the AN4 recipe (every
init and label subset), every pretraining of the pool, the label-quality comparison and the report.
Slow (~20 min on 2 cores: the LM-weight tuning of every run is not scaled down); it reads the real corpora
of ../shared/data, so it is skipped where they are absent."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from helpers import ROOT
DATA = ROOT.parent / "shared" / "data"


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "an4").is_dir(), reason="needs the corpora of ../shared/data")
def test_the_reproduction_study_runs_end_to_end_at_a_small_scale(tmp_path, monkeypatch, single_thread):
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")  # the recipes name each other relative to the cwd
    monkeypatch.chdir(tmp_path)  # so every stage goes to tmp_path/runs
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks" / "reproduce"))
    spec = importlib.util.spec_from_file_location("reproduce_run", ROOT / "benchmarks" / "reproduce" / "run.py")
    run = importlib.util.module_from_spec(spec)
    sys.modules["reproduce_run"] = run
    spec.loader.exec_module(run)
    assert run.main(["--data", str(DATA), "--output", "runs/reproduce", "--scale", "0.004", "--corpora", "an4",
                     "--report", str(tmp_path / "report"), "--pnmi-sentences", "8"]) == 0
    summary = json.loads((tmp_path / "runs" / "reproduce" / "summary.json").read_text())
    assert set(summary["corpora"]) == {"an4"} and len(summary["corpora"]["an4"]["runs"]) == 7
    assert set(summary["pretraining"]) == {"hubert_iter1", "hubert_iter2", "wav2vec2"}
    for corpus in summary["corpora"].values():
        for result in corpus["runs"].values():
            assert 0 <= result["evaluate"]["wer_lm"] and result["finetune"]["updates"] > 0
    assert all(0 < summary["label_quality"][name]["pnmi"] < 1 for name in ("labels_iter1", "labels_iter2"))
    assert (tmp_path / "report" / "report.md").exists()

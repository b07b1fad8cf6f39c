"""A shortened `make demo` (a few steps per stage) runs the whole path and reports real numbers."""

from __future__ import annotations

import json

import pytest

from hfspeech.demo import main


def test_quick_demo_runs_every_stage_on_real_voices_and_reuses_them(tmp_path, capsys):
    assert main(["--output", str(tmp_path), "--quick"]) == 0
    printed = capsys.readouterr().out
    assert "test WER, greedy CTC" in printed and "4-gram LM beam" in printed and "PNMI" in printed
    summary = json.loads((tmp_path / "summary.json").read_text())
    split = summary["split"]
    test_speakers = set(split["test"]["dev_speakers"])
    assert len(test_speakers) == 2 and not test_speakers & set(split["finetune"]["dev_speakers"])
    # the test speakers are in neither the fine-tuning data nor the pretraining data
    training = (tmp_path / "split" / "tune" / "train.tsv").read_text()
    pretraining = (tmp_path / "split" / "test" / "train.tsv").read_text()
    assert not any(f"\t{speaker}\t" in training + pretraining for speaker in test_speakers)
    assert summary["decode"]["test"]["utterances"] == split["test"]["manifests"]["dev"]["utterances"]
    assert 0.0 < summary["labels"]["pnmi"] < 1.0
    for key in ("wer_greedy", "wer_lm"):
        assert 0.0 <= summary["decode"]["test"][key]
    config = json.loads((tmp_path / "finetune" / "final" / "config.json").read_text())
    assert config["filterbank_stack"] == 4 and config["conv_stride"][-1] == 4  # 40 ms frames from pretraining on
    # a second run reuses every finished stage
    assert main(["--output", str(tmp_path), "--quick"]) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["labels"] == summary["labels"]


def test_stages_are_reused_only_with_the_same_settings_and_redone_after_an_earlier_stage(tmp_path, monkeypatch):
    """A cached `--quick` result is not reused by a full run; re-running a stage re-runs every later one."""
    import hfspeech.demo as demo

    ran = []

    def fake(name, model=False):
        def stage(directory, *args):
            ran.append(name)
            (directory / "output.txt").write_text(name)
            return {"model": str(directory / "model")} if model else {"value": name}
        return stage

    for name in ("split", "pnmi_corpus", "labels", "decode"):
        monkeypatch.setattr(demo, f"stage_{name}", fake(name.removesuffix("_corpus")))
    monkeypatch.setattr(demo, "stage_pretrain", fake("pretrain", model=True))
    monkeypatch.setattr(demo, "stage_finetune", fake("finetune", model=True))
    monkeypatch.setattr(demo, "stage_tokenizer", lambda directory, *args: (ran.append("tokenizer"), {"tokenizer": "t"})[1])
    monkeypatch.setattr(demo, "stage_lm", lambda directory, *args: (ran.append("lm"), {"lm": "l"})[1])
    everything = ["split", "pnmi", "labels", "pretrain", "tokenizer", "finetune", "lm", "decode"]

    demo.run_stages(tmp_path, demo.QUICK)
    assert ran == everything
    ran.clear()
    results, _ = demo.run_stages(tmp_path, demo.QUICK)
    assert ran == [] and results["decode"]["value"] == "decode" and results["decode"]["cpu_seconds"] >= 0
    demo.run_stages(tmp_path, demo.FULL)  # other settings: nothing cached is reused
    assert ran == everything
    ran.clear()
    (tmp_path / "pretrain" / "result.json").unlink()  # e.g. deleted to redo it: it and what follows run again
    (tmp_path / "finetune" / "stale.txt").write_text("from the previous fine-tuning")
    demo.run_stages(tmp_path, demo.FULL)
    assert ran == ["pretrain", "tokenizer", "finetune", "lm", "decode"]
    assert not (tmp_path / "finetune" / "stale.txt").exists()


@pytest.mark.slow
def test_the_full_demo_recognises_speakers_it_never_heard(tmp_path, capsys):
    """`make demo` itself (~13 min on 2 cores): on the 10 held-out test speakers the 4-gram LM decoding stays
    under 40 % WER (31.0 % measured, benchmarks/RESULTS.md) and beats greedy decoding."""
    assert main(["--output", str(tmp_path)]) == 0
    test = json.loads((tmp_path / "summary.json").read_text())["decode"]["test"]
    assert test["wer_lm"] < 0.40 and test["wer_lm"] < test["wer_greedy"] < 0.70, test

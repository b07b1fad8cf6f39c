"""A shortened `make demo` (a few steps per stage) runs the whole path and reports real numbers."""

from __future__ import annotations

import json

from hfspeech.demo import main


def test_quick_demo_runs_every_stage_and_reuses_them(tmp_path, capsys):
    assert main(["--output", str(tmp_path), "--quick"]) == 0
    printed = capsys.readouterr().out
    assert "dev WER, greedy CTC" in printed and "4-gram LM beam" in printed and "PNMI" in printed
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["corpus"]["train"]["utterances"] == 72 and summary["decode"]["utterances"] == 6
    # the second test set: one new sentence spoken by each of the three training voices
    assert summary["corpus"]["seen"]["utterances"] == 3 and summary["decode"]["seen"]["utterances"] == 3
    trained = set((tmp_path / "corpus" / "train_transcripts.txt").read_text().splitlines())
    assert not set((tmp_path / "corpus" / "seen_transcripts.txt").read_text().splitlines()) & trained
    assert "seen voices, new sentences" in printed
    assert 0.0 < summary["labels"]["pnmi"] < 1.0
    for key in ("wer_greedy", "wer_lm"):
        assert 0.0 <= summary["decode"][key] and 0.0 <= summary["decode"]["seen"][key]
    # a second run reuses every finished stage
    assert main(["--output", str(tmp_path), "--quick"]) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["labels"] == summary["labels"]

"""BestCheckpoints: which evaluations it keeps, under which metric, and what it averages."""

import json

import pytest
import torch

from hfspeech.training.averaging import BestCheckpoints


def constant_model(value: float) -> torch.nn.Module:
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(value)
        model.bias.fill_(value)
    return model


def test_the_lowest_scores_are_kept_and_averaged_under_the_chosen_metric(tmp_path):
    best = BestCheckpoints(tmp_path / "avg", 2, metric="cer")
    for update, cer, value in [(1, 0.9, 1.0), (2, 0.5, 2.0), (3, 0.7, 3.0), (4, 0.6, 5.0)]:
        best.offer(update, cer, constant_model(value))
    assert json.loads((tmp_path / "avg" / "index.json").read_text()) == [{"update": 2, "cer": 0.5},
                                                                          {"update": 4, "cer": 0.6}]
    model = constant_model(0.0)
    assert [entry["update"] for entry in best.average_into(model)] == [2, 4]
    assert torch.equal(model.weight, torch.full((1, 2), 3.5))  # (2 + 5) / 2
    assert BestCheckpoints(tmp_path / "avg", 2, metric="cer").entries == best.entries  # resumed as it was


def test_resuming_under_another_metric_is_refused(tmp_path):
    BestCheckpoints(tmp_path / "avg", 2, metric="cer").offer(1, 0.5, constant_model(1.0))
    with pytest.raises(ValueError, match=r"ranked by \['cer'\], not 'wer'.*metric_for_best_model: cer"):
        BestCheckpoints(tmp_path / "avg", 2)

"""The corpus recipes (recipes/an4, recipes/speechocean762) and the pretraining pool, run end to end at a
tiny scale on the real AN4 fixtures: split, labels, HuBERT 1+2 and wav2vec 2.0, fine-tuning, LM, WER."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hfspeech.recipes import load_recipe_yaml
from hfspeech.recipes.small_corpus import main, parse_runs, run_recipe

from helpers import ROOT
AN4 = ROOT / "tests" / "fixtures" / "an4"


def write_recipe(tmp_path: Path, runs: list, held_out: bool = True) -> Path:
    """A recipe on the 7 AN4 fixtures (2 speakers: 1 for dev) and its pool; with ``held_out=False``
    the pool holds out the other speaker (a split made with another seed)."""
    recipe = tmp_path / "recipe.yaml"
    other = tmp_path / "other_split.yaml"
    for path, seed in ((recipe, 0), (other, 2)):
        path.write_text(f"""
name: fixtures
source: {AN4}
split: {{dev_speakers: 1, seed: {seed}, subsets: {{short: 3}}}}
output: {tmp_path}/out
finetune: {ROOT}/recipes/an4/finetune.yaml
pretraining: {tmp_path}/pool.yaml
runs: {runs}
lm: {{order: 3}}
evaluation: {{trials: 2, beam_width: 8}}
""")
    (tmp_path / "pool.yaml").write_text(f"""
output: {tmp_path}/pool
held_out: [{recipe if held_out else other}]
unlabeled: [{AN4}]
mfcc_clusters: 20
iteration2: {{layer: 2, clusters: 20}}
hubert_iter1: {ROOT}/recipes/pretraining/hubert.yaml
hubert_iter2: {ROOT}/recipes/pretraining/hubert.yaml
wav2vec2: {ROOT}/recipes/pretraining/wav2vec2.yaml
""")
    return recipe


def test_a_recipe_runs_every_stage_at_a_tiny_scale_and_reuses_them(tmp_path, capsys, single_thread):
    half = {"init": "random", "labels": "short", "finetune": {"max_steps": 3000}, "name": "random-short-half"}
    recipe = write_recipe(tmp_path, ["random/all", "hubert_iter2/short", "wav2vec2/all", half])
    results = run_recipe(recipe, scale=0.002)
    table = capsys.readouterr().out
    assert "| random | all | 12 |" in table and "| hubert_iter2 | short | 12 |" in table
    assert "| random-short-half | random | short | 6 |" in table  # a run's own fine-tuning updates
    assert (tmp_path / "out" / "summary.md").read_text() in table
    pool = tmp_path / "pool"
    # the dev speaker's audio is held out of the pool even though the unlabeled folder holds it
    dev_ids = {line.split("\t")[0] for line in (pool / "pool" / "pool_dev.tsv").read_text().splitlines()[1:]}
    pool_ids = {line.split("\t")[0] for line in (pool / "pool" / "pool.tsv").read_text().splitlines()[1:]}
    assert dev_ids and not dev_ids & pool_ids and len(dev_ids | pool_ids) == 7
    hubert = json.loads((pool / "hubert_iter2" / "result.json").read_text())
    assert "masked_accuracy_0" in hubert["dev_metrics"] and 0 < hubert["dev_data"]["majority_cluster_rate"]["20"] < 1
    # iteration 2 predicts labels of iteration 1's layer features: one per 40 ms frame of the recipes' model
    assert json.loads((pool / "hubert_iter2" / "final" / "config.json").read_text())["label_rate"] == 25
    assert "accuracy" in json.loads((pool / "wav2vec2" / "result.json").read_text())["dev_metrics"]
    evaluation = results["evaluate/hubert_iter2-short"]
    assert 0 <= evaluation["wer_lm"] and evaluation["utterances"] == 3
    # every run shares the corpus tokenizer, so the LM and all models have one alphabet
    vocab = (tmp_path / "out" / "tokenizer" / "vocab.json").read_text()
    assert (tmp_path / "out" / "finetune" / "random-all" / "final" / "vocab.json").read_text() == vocab
    # a second run reuses everything
    assert main(recipe, ["--scale", "0.002", "--only", "random-all"]) == 0
    assert json.loads((tmp_path / "out" / "finetune" / "random-all" / "result.json").read_text())["seconds"] == \
        results["finetune/random-all"]["seconds"]


def test_a_pool_that_saw_the_dev_speakers_is_refused(tmp_path, single_thread):
    recipe = write_recipe(tmp_path, ["hubert_iter1/all"], held_out=False)
    with pytest.raises(ValueError, match="does not hold out the dev speakers"):
        run_recipe(recipe, scale=0.002)


def test_runs_are_checked_against_inits_and_subsets():
    with pytest.raises(ValueError, match="init must be one of"):
        parse_runs(["bert/all"], {}, "r.yaml")
    with pytest.raises(ValueError, match="labels must be 'all' or a subset"):
        parse_runs(["random/1h"], {"10min": 600}, "r.yaml")
    runs = parse_runs([{"init": "random", "labels": "10min"}, "hubert_iter1/all"], {"10min": 600}, "r.yaml")
    assert [run.name for run in runs] == ["random-10min", "hubert_iter1-all"]
    with pytest.raises(ValueError, match="give it a `name`"):
        parse_runs([{"init": "random", "labels": "all", "finetune": {"max_steps": 9}}], {}, "r.yaml")
    with pytest.raises(ValueError, match=r"two runs share a name \(\['random-all'\]\)"):
        parse_runs(["random/all", {"init": "random", "labels": "all", "finetune": {"seed": 2}, "name": "random-all"}],
                   {}, "r.yaml")
    long = parse_runs([{"init": "random", "labels": "all", "finetune": {"max_steps": 9, "seed": 2}, "name": "long"}],
                      {}, "r.yaml")[0]
    assert long.name == "long" and long.config({"max_steps": 6, "eval_steps": 3}) == {
        "max_steps": 9, "eval_steps": 3, "seed": 2}


@pytest.mark.parametrize("name", ["an4", "speechocean762"])
def test_the_shipped_recipes_describe_valid_runs(name):
    recipe = load_recipe_yaml(ROOT / "recipes" / name / "recipe.yaml", "DATA")
    assert recipe["source"].startswith("DATA/")
    runs = parse_runs(recipe["runs"], recipe["split"]["subsets"], name)
    assert {"random", "hubert_iter2"} <= {run.init for run in runs}
    pool = load_recipe_yaml(ROOT / recipe["pretraining"], "DATA")
    assert f"recipes/{name}/recipe.yaml" in pool["held_out"]

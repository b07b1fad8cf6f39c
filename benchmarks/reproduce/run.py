"""CPU-scale reproduction of the papers' three claims on real speech, with the corpus recipes.

    .venv/bin/python benchmarks/reproduce/run.py [--data ../shared/data] [--output runs/reproduce] [--scale 1.0]
    .venv/bin/python benchmarks/reproduce/run.py --finished   # report the runs already made, run nothing else

1. Pretraining makes a few labeled minutes go further: recipes/an4 and recipes/speechocean762 fine-tune
   the same small model from random initialisation and from our own pretraining (HuBERT iterations 1
   and 2, wav2vec 2.0, on the pool of recipes/pretraining/pool.yaml) with the same updates, on 10
   minutes, 1 hour (speechocean762) and all of the training speakers' labels; dev = held-out speakers.
2. HuBERT's second iteration has better targets than MFCC: PNMI of the pool's MFCC k-means labels vs
   the k-means labels of the iteration-1 model's layer, on flite speech with phone timings.
3. An n-gram LM lowers WER: dev WER greedy vs 4-gram beam search (alpha/beta tuned on dev).

Every stage is cached (the recipes' own stages, under their `output` folders, and the pool's under
runs/pretraining), so an interrupted run continues where it stopped; `--scale` multiplies every
update count (0.002 for a smoke test). The summary goes to OUTPUT/summary.json and report.py turns it
into plots and the table benchmarks/RESULTS.md quotes.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
RECIPES = {"an4": ROOT / "recipes" / "an4" / "recipe.yaml",
           "speechocean762": ROOT / "recipes" / "speechocean762" / "recipe.yaml"}
POOL = ROOT / "recipes" / "pretraining" / "pool.yaml"


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard scalars of a training run: tag -> [(update, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not log_dir.exists():
        return {}
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def label_quality(directory: Path, pool_output: Path, sentences: int) -> dict:
    """PNMI of the pool's iteration-1 (MFCC) and iteration-2 (layer) k-means labels on flite speech."""
    from hfspeech.demo_corpus import DEV_VOICE, TRAIN_VOICES, build_split
    from hfspeech.labels import assign_label_sets, measure_quality, read_label_directory, read_phn_directory

    build_split(directory, "speech", (*TRAIN_VOICES, DEV_VOICE), sentences, random.Random(0))
    alignments = read_phn_directory(directory / "alignments")
    result = {}
    for name in ("labels_iter1", "labels_iter2"):
        if not (pool_output / name / "result.json").exists():
            continue  # (--finished: that iteration has not run)
        stage = json.loads((pool_output / name / "result.json").read_text())
        metadata = assign_label_sets(pool_output / name / "kmeans", str(directory / "speech"), directory / name)
        _, ids, label_sets = read_label_directory(directory / name)
        report, _, _ = measure_quality(dict(zip(ids, label_sets[stage["clusters"]])), alignments, metadata.label_rate)
        result[name] = {"feature": stage["feature"], "clusters": stage["clusters"], "pnmi": report.pnmi,
                        "phone_purity": report.phone_purity, "cluster_purity": report.cluster_purity,
                        "frames": report.num_frames}
    return result


def finished_stages(recipe_file: Path, data: str) -> dict:
    """The stage results a recipe has written so far (``split`` and every finished run), without running
    any; empty when the recipe has not even split its corpus."""
    from hfspeech.recipes import load_recipe_yaml
    from hfspeech.recipes.small_corpus import parse_runs

    recipe = load_recipe_yaml(recipe_file, data)
    output = Path(recipe["output"])
    if not (output / "split" / "result.json").exists():
        return {}
    results = {"split": json.loads((output / "split" / "result.json").read_text())}
    for run in parse_runs(recipe["runs"], recipe["split"].get("subsets", {}), recipe_file):
        files = [output / stage / run.name / "result.json" for stage in ("finetune", "evaluate")]
        if all(file.exists() for file in files):
            results[f"finetune/{run.name}"], results[f"evaluate/{run.name}"] = (
                json.loads(file.read_text()) for file in files)
    return results


def main(argv: list[str] | None = None) -> int:
    from hfspeech.recipes import load_recipe_yaml
    from hfspeech.recipes.small_corpus import run_recipe
    from hfspeech.stages import run_stage

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--output", type=Path, default=Path("runs/reproduce"))
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every update count")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pnmi-sentences", type=int, default=40)
    parser.add_argument("--corpora", nargs="+", choices=sorted(RECIPES), default=sorted(RECIPES),
                        help="the corpus recipes to run (default: both)")
    parser.add_argument("--report", type=Path, default=ROOT / "benchmarks" / "results" / "reproduce",
                        help="where the report (report.md + plots) goes")
    parser.add_argument("--finished", action="store_true",
                        help="report the recipe runs and pretrainings already finished; train nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    summary: dict = {"scale": args.scale, "corpora": {}}
    for name, recipe_file in RECIPES.items():
        if name not in args.corpora:
            continue
        results = (finished_stages(recipe_file, args.data) if args.finished
                   else run_recipe(recipe_file, args.data, scale=args.scale))
        if not results:
            continue
        recipe = load_recipe_yaml(recipe_file, args.data)
        output = Path(recipe["output"])
        runs = {}
        for key, value in results.items():
            if key.startswith("finetune/"):
                run = key.split("/", 1)[1]
                runs[run] = {"finetune": value, "evaluate": results[f"evaluate/{run}"],
                             "curves": read_scalars(output / "finetune" / run / "tensorboard")}
        summary["corpora"][name] = {"split": results["split"], "runs": runs}
    pool_output = Path(load_recipe_yaml(POOL, args.data)["output"])
    summary["pretraining"] = {}
    for name in ("hubert_iter1", "hubert_iter2", "wav2vec2"):
        result_file = pool_output / name / "result.json"
        if result_file.exists():
            summary["pretraining"][name] = {**json.loads(result_file.read_text()),
                                            "curves": read_scalars(pool_output / name / "tensorboard")}
    summary["label_quality"] = run_stage(args.output, "label_quality", lambda d: label_quality(
        d, pool_output, args.pnmi_sentences), settings={"sentences": args.pnmi_sentences})
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2))
    from report import write_report  # noqa: E402 - benchmarks/reproduce/report.py, beside this file

    print(write_report(args.output / "summary.json", args.report))
    return 0


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    raise SystemExit(main())

"""Our own pretraining on the unlabeled pool: HuBERT iterations 1 and 2, wav2vec 2.0.

Stages under ``output`` (``recipes/pretraining/pool.yaml``):

=================  ==========================================================================
``splits``         the speaker-disjoint split of every corpus recipe in ``held_out`` (the same
                   ``hfspeech data split`` the corpus recipe makes)
``pool``           ``pool.tsv``: every recording of those corpora's training speakers and of the
                   ``unlabeled`` folders; ``pool_dev.tsv``: the corpora's dev audio, never trained on
``labels_iter1``   39-dim MFCC -> k-means K=``mfcc_clusters`` -> labels of pool and pool_dev
``hubert_iter1``   HuBERT pretraining on those labels, masked-frame accuracy on pool_dev
``labels_iter2``   k-means of the iteration-1 model's layer ``iteration2.layer`` -> labels
``hubert_iter2``   HuBERT pretraining from scratch on the iteration-2 labels
``wav2vec2``       wav2vec 2.0 pretraining (contrastive accuracy on pool_dev)
=================  ==========================================================================
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from pathlib import Path
from typing import Any

from ..stages import Stages
from . import DEFAULT_DATA, load_recipe_yaml, require, scaled

logger = logging.getLogger(__name__)

PRETRAININGS = ("hubert_iter1", "hubert_iter2", "wav2vec2")
POOL_COLUMNS = ("path", "speaker_id", "id")


def corpus_split_settings(recipe_file: str | Path, data: str | Path) -> dict[str, Any]:
    """The ``source`` and ``split`` settings of a corpus recipe (what decides its dev speakers)."""
    recipe = load_recipe_yaml(recipe_file, data)
    split = dict(require(recipe, "split", recipe_file))
    return {"name": require(recipe, "name", recipe_file), "source": require(recipe, "source", recipe_file),
            "dev_speakers": int(require(split, "dev_speakers", recipe_file)), "seed": int(split.get("seed", 0)),
            "subsets": dict(split.get("subsets", {}))}


def write_pool(directory: Path, splits: dict[str, dict[str, Any]], unlabeled: list[str]) -> dict[str, Any]:
    """``pool.tsv`` (training speakers of the corpora + every recording of ``unlabeled``) and ``pool_dev.tsv``.

    A recording on a dev list never enters the pool, even when an ``unlabeled`` folder holds it.
    """
    from ..data.folders import find_audio_files

    def read(manifest: str) -> list[dict[str, str]]:
        return list(csv.DictReader(open(manifest, newline="", encoding="utf-8"), delimiter="\t"))

    pool, dev, hours = [], [], {}
    for name, split in splits.items():
        manifests = split["manifests"]
        for row in read(manifests["train"]["path"]):
            pool.append({"path": row["path"], "speaker_id": f"{name}/{row['speaker_id']}", "id": f"{name}/{row['id']}"})
        for row in read(manifests["dev"]["path"]):
            dev.append({"path": row["path"], "speaker_id": f"{name}/{row['speaker_id']}", "id": f"{name}/{row['id']}"})
        hours[name] = manifests["train"]["hours"]
    held_out = {row["path"] for row in dev}
    taken = {row["path"] for row in pool}
    for folder in unlabeled:
        base = Path(folder)
        if not base.is_dir():
            raise FileNotFoundError(f"unlabeled folder {base} not found (is --data right?)")
        files = [path.resolve() for path in find_audio_files(base)]
        if not files:
            raise ValueError(f"unlabeled folder {base} holds no audio files")
        for path in files:
            if str(path) in held_out or str(path) in taken:
                continue
            relative = path.relative_to(base.resolve())
            pool.append({"path": str(path), "speaker_id": f"{base.name}/{relative.parts[0]}",
                         "id": f"{base.name}/{relative.with_suffix('')}"})
    for name, rows in (("pool.tsv", pool), ("pool_dev.tsv", dev)):
        with open(directory / name, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, POOL_COLUMNS, delimiter="\t", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    return {"pool": str(directory / "pool.tsv"), "pool_dev": str(directory / "pool_dev.tsv"),
            "recordings": len(pool), "dev_recordings": len(dev), "corpus_train_hours": hours,
            "unlabeled": list(unlabeled)}


def make_labels(directory: Path, feature: str, clusters: int, pool: dict[str, Any]) -> dict[str, Any]:
    """k-means on the pool's ``feature`` frames, then labels for pool and pool_dev."""
    from ..labels import assign_label_sets, fit_label_sets

    fit_label_sets(pool["pool"], feature, [clusters], directory / "kmeans", backend="torch", seed=0)
    train = assign_label_sets(directory / "kmeans", pool["pool"], directory / "labels")
    assign_label_sets(directory / "kmeans", pool["pool_dev"], directory / "dev_labels")
    return {"feature": feature, "clusters": clusters, "label_rate": train.label_rate,
            "labels": str(directory / "labels"), "dev_labels": str(directory / "dev_labels")}


def pretrain(directory: Path, config_file: str | Path, pool: dict[str, Any], labels: dict[str, Any] | None,
             scale: float, dataloader_num_workers: int | None = None) -> dict[str, Any]:
    """One pretraining run (``hfspeech pretrain CONFIG``) on the pool, scored on pool_dev;
    ``dataloader_num_workers`` replaces the config's value."""
    from accelerate import Accelerator

    from ..training.arguments import PretrainingArguments, parse_arguments
    from ..training.commands import load_pretraining_model
    from ..training.pretrain_data import build_dev_batches, build_pretraining_batches
    from ..training.pretrain_loop import run_pretraining

    args = parse_arguments(PretrainingArguments, config_file)
    args = dataclasses.replace(args, output_dir=str(directory), train_data=pool["pool"], dev_data=pool["pool_dev"],
                               max_steps=scaled(args.max_steps, scale), eval_steps=scaled(args.eval_steps, scale),
                               save_steps=scaled(args.save_steps, scale),
                               dataloader_num_workers=args.dataloader_num_workers if dataloader_num_workers is None
                               else dataloader_num_workers)
    if labels is not None:  # HuBERT: the label set decides K and the label rate
        args = dataclasses.replace(args, labels=labels["labels"], dev_labels=labels["dev_labels"], model_overrides={
            **args.model_overrides, "hubert_num_clusters": [labels["clusters"]], "label_rate": int(labels["label_rate"])})
    model = load_pretraining_model(args)
    accelerator = Accelerator(cpu=True)
    batches, data = build_pretraining_batches(args, model.config)
    dev_batches, dev_data = build_dev_batches(args, model.config)
    result = run_pretraining(model, batches, args, accelerator, dev_batches)
    return {"model": str(directory / "final"), "updates": args.max_steps, "data": data, "dev_data": dev_data,
            "dev_metrics": result.get("dev_metrics", {}), "train_metrics": result["metrics"]}


def run_pool(pool_file: str | Path, data: str | Path = DEFAULT_DATA, output: str | Path | None = None,
             scale: float = 1.0, wanted: tuple[str, ...] = PRETRAININGS) -> dict[str, dict[str, Any]]:
    """Run (or reuse) the pool stages needed for the ``wanted`` pretrainings; returns every stage's result."""
    from ..data.splits import write_split

    config = load_recipe_yaml(pool_file, data)
    output = Path(output or require(config, "output", pool_file))
    unknown = sorted(set(wanted) - set(PRETRAININGS))
    if unknown:
        raise ValueError(f"unknown pretraining(s) {unknown}; choose from {PRETRAININGS}")
    corpora = [corpus_split_settings(path, data) for path in require(config, "held_out", pool_file)]
    unlabeled = list(config.get("unlabeled", []))
    stages = Stages(output, {"pool": str(pool_file), "scale": scale})

    def splits(directory: Path) -> dict[str, Any]:
        return {"corpora": {corpus["name"]: write_split(corpus["source"], directory / corpus["name"], corpus["dev_speakers"],
                                            corpus["subsets"], corpus["seed"]) for corpus in corpora}}

    split_results = stages.run("splits", splits, settings=corpora)
    pool = stages.run("pool", lambda d: write_pool(d, split_results["corpora"], unlabeled), settings=unlabeled, after=["splits"])
    clusters = int(config.get("mfcc_clusters", 100))
    labels1 = stages.run("labels_iter1", lambda d: make_labels(d, "mfcc", clusters, pool), settings=clusters,
                         after=["pool"])
    runs = {name: require(config, name, pool_file) for name in wanted}
    if "hubert_iter1" in wanted or "hubert_iter2" in wanted:  # iteration 2 needs the iteration-1 model
        first = require(config, "hubert_iter1", pool_file)
        stages.run("hubert_iter1", lambda d: pretrain(d, first, pool, labels1, scale), settings=_settings(first),
                   after=["labels_iter1"], work=("pretrain update", _steps(first, scale)))
    if "hubert_iter2" in wanted:
        iteration2 = dict(require(config, "iteration2", pool_file))
        feature = f"{stages.results['hubert_iter1']['model']}:{int(iteration2['layer'])}"
        labels2 = stages.run("labels_iter2", lambda d: make_labels(d, feature, int(iteration2["clusters"]), pool),
                             settings=iteration2, after=["hubert_iter1"])
        second = runs["hubert_iter2"]
        stages.run("hubert_iter2", lambda d: pretrain(d, second, pool, labels2, scale), settings=_settings(second),
                   after=["labels_iter2"], work=("pretrain update", _steps(second, scale)))
    if "wav2vec2" in wanted:
        contrastive = runs["wav2vec2"]
        stages.run("wav2vec2", lambda d: pretrain(d, contrastive, pool, None, scale), settings=_settings(contrastive),
                   after=["pool"], work=("pretrain update", _steps(contrastive, scale)))
    return stages.results


def _settings(config_file: str | Path) -> dict[str, Any]:
    """A pretraining stage's settings: its config file's contents (a changed config re-runs it)."""
    import yaml

    return {"config": str(config_file), "values": yaml.safe_load(Path(config_file).read_text())}


def _steps(config_file: str | Path, scale: float) -> int:
    import yaml

    return scaled(int(yaml.safe_load(Path(config_file).read_text()).get("max_steps", 1)), scale)

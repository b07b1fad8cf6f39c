"""`make demo`: the whole path on real voices (AN4, shipped in data/an4), CPU, minutes.

    python -m hfspeech.demo [--output runs/demo] [--quick] [--threads N]

Stages (each cached in OUTPUT/<stage>/result.json, so a re-run reuses finished ones):
  1. split     AN4 by speaker: 10 test speakers never heard in training (the AN4 recipe's dev
               speakers), 5 tuning speakers (checkpoint choice, LM weights), 59 training speakers
  2. pnmi      flite speaks spoken-command sentences with phone timings: only to measure the
               quality (PNMI) of the k-means labels, which are fitted on the real audio
  3. labels    39-dim MFCC of the training speakers' audio -> k-means K=100 -> frame labels
  4. pretrain  HuBERT pretraining of the small model on the training speakers' audio
  5. finetune  CTC fine-tuning from the HuBERT model on the training speakers' transcripts
  6. lm        KenLM 4-gram on the training transcripts
  7. decode    WER greedy vs beam search with the 4-gram LM on the test speakers (alpha/beta
               tuned on the tuning speakers)
It ends with a table (WER greedy vs LM, PNMI, time per stage) and the model directory.
The numbers are whatever this run measures.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Callable

from .stages import Stages

logger = logging.getLogger("hfspeech.demo")

ROOT = Path(__file__).resolve().parents[1]
AN4 = ROOT / "data" / "an4" / "train"
FINETUNE_CONFIG = ROOT / "recipes" / "an4" / "finetune.yaml"  # the AN4 recipe's model and fine-tuning settings
PRETRAIN_CONFIG = ROOT / "recipes" / "pretraining" / "hubert.yaml"
DEMO_FORMAT = 4  # bump when a stage's outputs change meaning (cached stages of other formats are redone)
FULL = dict(test_speakers=10, tune_speakers=5, pnmi_sentences=20, pretrain_steps=1000, finetune_steps=3000,
            trials=20, beam_width=64)
WORKERS = 1  # one process decodes, speed-perturbs and collates batches on the second core (same batches as 0)
QUICK = dict(test_speakers=2, tune_speakers=1, pnmi_sentences=2, pretrain_steps=3, finetune_steps=6, trials=2,
             beam_width=8, utterances=80)


def stage_split(directory: Path, settings: dict) -> dict:
    """test (the AN4 recipe's dev speakers) / tune / train manifests of AN4."""
    from .data.splits import write_split

    source = str(AN4)
    if settings.get("utterances"):  # --quick: a slice of AN4 keeps the test suite fast
        source = _slice(directory / "slice.tsv", settings["utterances"])
    outer = write_split(source, directory / "test", settings["test_speakers"], seed=0)
    inner = write_split(outer["manifests"]["train"]["path"], directory / "tune", settings["tune_speakers"], seed=0)
    return {"test": outer, "finetune": inner}


def _slice(manifest: Path, utterances: int) -> str:
    """The first ``utterances`` rows of AN4 as a manifest (speaker order of metadata.csv)."""
    import csv

    rows = list(csv.DictReader(open(AN4 / "metadata.csv", newline="")))[:utterances]
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["path", "text", "speaker_id"], delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows({"path": str(AN4 / row["file_name"]), "text": row["text"], "speaker_id": row["speaker_id"]}
                         for row in rows)
    return str(manifest)


def stage_pnmi_corpus(directory: Path, settings: dict) -> dict:
    """flite speech with phone alignments (all four voices), for PNMI only."""
    import random

    from .demo_corpus import DEV_VOICE, TRAIN_VOICES, build_split

    return build_split(directory, "speech", (*TRAIN_VOICES, DEV_VOICE), settings["pnmi_sentences"], random.Random(0))


def stage_labels(directory: Path, split: dict, pnmi: Path) -> dict:
    """k-means on the training speakers' MFCC; labels of their audio and the test audio; PNMI on flite speech."""
    from .labels import assign_label_sets, fit_label_sets, measure_quality, read_label_directory, read_phn_directory

    train, test = split["test"]["manifests"]["train"]["path"], split["test"]["manifests"]["dev"]["path"]
    fit_label_sets(train, "mfcc", [100], directory / "kmeans", backend="torch", seed=0)
    metadata = assign_label_sets(directory / "kmeans", train, directory / "labels")
    assign_label_sets(directory / "kmeans", test, directory / "dev_labels")
    assign_label_sets(directory / "kmeans", str(pnmi / "speech"), directory / "pnmi_labels")
    _, ids, label_sets = read_label_directory(directory / "pnmi_labels")
    report, _, _ = measure_quality(dict(zip(ids, label_sets[100])), read_phn_directory(pnmi / "alignments"),
                                   metadata.label_rate)
    return {"feature": "mfcc", "clusters": 100, "label_rate": metadata.label_rate, "labels": str(directory / "labels"),
            "dev_labels": str(directory / "dev_labels"), "pnmi": report.pnmi, "phone_purity": report.phone_purity,
            "cluster_purity": report.cluster_purity}


def stage_pretrain(directory: Path, split: dict, labels: dict, settings: dict) -> dict:
    from .recipes.pretraining_pool import pretrain

    pool = {"pool": split["test"]["manifests"]["train"]["path"], "pool_dev": split["test"]["manifests"]["dev"]["path"]}
    return pretrain(directory, PRETRAIN_CONFIG, pool, labels, scale=settings["pretrain_steps"] / _steps(PRETRAIN_CONFIG),
                    dataloader_num_workers=WORKERS)


def stage_tokenizer(directory: Path, split: dict) -> dict:
    from .recipes.small_corpus import build_tokenizer

    return build_tokenizer(directory, split["finetune"]["manifests"]["train"]["path"])


def stage_finetune(directory: Path, split: dict, tokenizer: str, pretrained: str, settings: dict) -> dict:
    from .recipes.small_corpus import Run, finetune

    return finetune(directory, FINETUNE_CONFIG, Run("hubert_iter1", "all"), split["finetune"], tokenizer, pretrained,
                    scale=settings["finetune_steps"] / _steps(FINETUNE_CONFIG), dataloader_num_workers=WORKERS)


def stage_lm(directory: Path, split: dict, tokenizer: str) -> dict:
    from .recipes.small_corpus import build_lm

    return build_lm(directory, tokenizer, split["finetune"]["manifests"]["train"]["path"], order=4)


def stage_decode(directory: Path, split: dict, model_dir: str, lm_dir: str, settings: dict) -> dict:
    from .recipes.small_corpus import evaluate

    return evaluate(directory, model_dir, split["finetune"]["manifests"]["dev"]["path"], lm_dir, settings["trials"],
                    settings["beam_width"], test_manifest=split["test"]["manifests"]["dev"]["path"])


def _steps(config: Path) -> int:
    import yaml

    return int(yaml.safe_load(config.read_text())["max_steps"])


def run_stages(output: Path, settings: dict) -> tuple[dict, Path]:
    """Every stage in order, each reused when its result.json exists and was made with the same
    settings (once one stage runs again, every later one does too); returns results and the model dir."""
    from .recipes.pretraining_pool import _settings

    configs = {"finetune": _settings(FINETUNE_CONFIG), "pretrain": _settings(PRETRAIN_CONFIG)}
    stages = Stages(output, {"format": DEMO_FORMAT, "settings": settings, "configs": configs})
    chain: list[str] = []

    def stage(name: str, function: Callable[[Path], dict[str, Any]], work: tuple[str, float] | None = None) -> dict:
        result = stages.run(name, function, after=chain[-1:], work=work)
        chain.append(name)
        return result

    split = stage("split", lambda d: stage_split(d, settings))
    stage("pnmi", lambda d: stage_pnmi_corpus(d, settings))
    labels = stage("labels", lambda d: stage_labels(d, split, output / "pnmi"))
    pretrained = stage("pretrain", lambda d: stage_pretrain(d, split, labels, settings))["model"]
    tokenizer = stage("tokenizer", lambda d: stage_tokenizer(d, split))["tokenizer"]
    model_dir = stage("finetune", lambda d: stage_finetune(d, split, tokenizer, pretrained, settings))["model"]
    lm = stage("lm", lambda d: stage_lm(d, split, tokenizer))["lm"]
    stage("decode", lambda d: stage_decode(d, split, model_dir, lm, settings))
    return stages.results, Path(model_dir)


def format_summary(results: dict, model_dir: Path) -> str:
    split, decode, labels = results["split"], results["decode"], results["labels"]
    test, finetune = decode["test"], results["finetune"]
    manifests = split["finetune"]["manifests"]
    pretrain = results["pretrain"]
    masked = pretrain["dev_metrics"].get("masked_accuracy_0")
    lines = [
        "",
        "hfspeech demo — real voices (AN4: spelled letters, digits, short answers)",
        f"  trained on {manifests['train']['speakers']} speakers ({60 * manifests['train']['hours']:.1f} min), "
        f"tested on {split['test']['manifests']['dev']['speakers']} speakers never heard "
        f"({test['utterances']} utterances)",
        "",
        f"  test WER, greedy CTC        {100 * test['wer_greedy']:6.1f} %   (CER {100 * test['cer_greedy']:.1f} %)",
        f"  test WER, 4-gram LM beam    {100 * test['wer_lm']:6.1f} %   (CER {100 * test['cer_lm']:.1f} %; alpha "
        f"{test['alpha']:.2f}, beta {test['beta']:.2f} tuned on {manifests['dev']['speakers']} other speaker(s))",
        f"  HuBERT masked-frame accuracy on the test audio {100 * masked:.1f} % "
        f"(most frequent cluster: {100 * pretrain['dev_data']['majority_cluster_rate']['100']:.1f} %)"
        if masked is not None else "",
        f"  PNMI of the MFCC K=100 labels {labels['pnmi']:.3f} (phone purity {labels['phone_purity']:.3f}, "
        f"cluster purity {labels['cluster_purity']:.3f}; on flite speech with phone timings)",
        f"  fine-tuning CTC loss        {finetune['first_loss']:.2f} -> {finetune['last_loss']:.2f} "
        f"({finetune['updates']} updates)",
        "",
        "  stage       seconds",
    ]
    names = ("split", "pnmi", "labels", "pretrain", "tokenizer", "finetune", "lm", "decode")
    lines += [f"  {name:<10} {results[name]['seconds']:8.1f}" for name in names]
    lines += [f"  total      {sum(results[name]['seconds'] for name in names):8.1f}", "",
              f"  model directory: {model_dir}  (transformers.pipeline('automatic-speech-recognition', model=...))"]
    if test.get("examples"):
        example = test["examples"][0]
        lines += [f"  e.g. reference: {example['reference']}", f"       greedy:    {example['greedy']}",
                  f"       with LM:   {example['lm']}"]
    return "\n".join(line for line in lines if line is not None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("runs/demo"))
    parser.add_argument("--quick", action="store_true", help="a few steps of everything on part of AN4 (test suite)")
    parser.add_argument("--threads", type=int, default=1, help=(
        "torch threads; the demo model is small, so more threads gain little and, on a machine "
        "busy with other jobs, oversubscribed threads made steps up to 10x slower"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    settings = QUICK if args.quick else FULL
    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        results, model_dir = run_stages(args.output, settings)
    finally:  # a caller's (e.g. the test suite's) thread setting is left as it was
        torch.set_num_threads(previous_threads)
    (args.output / "summary.json").write_text(json.dumps(results, indent=2))
    print(format_summary(results, model_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

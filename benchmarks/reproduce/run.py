"""CPU-scale reproduction of the papers' three claims on real speech (issue 8).

    .venv/bin/python benchmarks/reproduce/run.py [--output runs/reproduce] [--data ../shared/data] [--scale 1.0]

1. Pretraining on unlabeled audio makes a few labeled minutes go further: a small model is
   pretrained with wav2vec 2.0 and with HuBERT (two iterations) on an unlabeled pool
   (LibriSpeech clips + AN4 training-speaker audio + FSDD resampled to 16 kHz, ~2 h), then
   fine-tuned with CTC on AN4 (10-minute subset and all 36 min of the training speakers), with
   the same number of updates from random init, wav2vec 2.0 and HuBERT; dev = 10 held-out
   AN4 speakers.
2. HuBERT's second iteration has better targets than MFCC: PNMI of MFCC k-means labels vs
   k-means labels of the iteration-1 model's layer, on flite speech with phone timings.
3. An n-gram LM lowers WER: dev WER greedy vs 4-gram beam search (AN4 training transcripts +
   Gutenberg text).

Every stage is cached in OUTPUT/<stage>/result.json (training stages also resume from their
checkpoints), so an interrupted run continues where it stopped. `--scale` multiplies every
step count (0.05 for a smoke test). `report.py` turns OUTPUT/summary.json into plots and a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from hfspeech.stages import run_stage  # noqa: E402

logger = logging.getLogger("reproduce")

# One small backbone for every run (BASE is 12 x 768 with the same code). Pre-LN with
# layer-norm conv blocks (the LARGE layout): the post-LN BASE layout did not leave the CTC
# blank plateau from random init within our CPU budget in either hfspeech or transformers.
BACKBONE = dict(conv_dim=[64] * 7, hidden_size=128, intermediate_size=256, num_attention_heads=4, num_hidden_layers=4,
                num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=4, layerdrop=0.0, layer_norm_first=True,
                feat_extract_norm="layer")
STEPS = dict(hubert_iteration=500, wav2vec2=1000, finetune=1200)  # wav2vec2 = both HuBERT iterations together
HUBERT_LAYER = 2  # of 4 (the paper takes layer 6 of 12 for iteration 2, 9 of 12 for LARGE)
DEV_SPEAKERS = 10
SUBSET_SECONDS = 600.0
INITS = ("random", "wav2vec2", "hubert")
SUBSETS = ("10min", "all")
EXTRA_INITS = ("random", "hubert")


def split_an4(an4: Path, output: Path, seed: int = 0) -> dict:
    """Speaker-disjoint AN4 split (symlinked audiofolders) and a ~10-minute training subset."""
    rows = list(csv.DictReader(open(an4 / "metadata.csv", newline="")))
    speakers = sorted({row["speaker_id"] for row in rows})
    random.Random(seed).shuffle(speakers)
    dev_speakers = set(speakers[:DEV_SPEAKERS])
    train = [row for row in rows if row["speaker_id"] not in dev_speakers]
    dev = [row for row in rows if row["speaker_id"] in dev_speakers]
    import soundfile

    durations = {row["file_name"]: soundfile.info(str(an4 / row["file_name"])).duration for row in rows}
    shuffled = train[:]
    random.Random(seed + 1).shuffle(shuffled)
    subset, total = [], 0.0
    for row in shuffled:
        if total >= SUBSET_SECONDS:
            break
        subset.append(row)
        total += durations[row["file_name"]]
    summary = {}
    for name, selected in (("train_all", train), ("train_10min", subset), ("dev", dev)):
        folder = output / name
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "metadata.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, ["file_name", "text", "speaker_id"])
            writer.writeheader()
            for row in selected:
                target = folder / row["file_name"]
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.exists():
                    os.symlink((an4 / row["file_name"]).resolve(), target)
                writer.writerow({key: row[key] for key in ("file_name", "text", "speaker_id")})
        summary[name] = {"utterances": len(selected), "speakers": len({r["speaker_id"] for r in selected}),
                         "minutes": sum(durations[r["file_name"]] for r in selected) / 60}
    (output / "train_transcripts.txt").write_text("\n".join(row["text"] for row in train) + "\n")
    return summary


def pool_spec(data: Path, splits: Path) -> str:
    return ",".join(str(path) for path in (data / "librispeech-unlabeled", splits / "train_all", data / "fsdd"))


def pool_stream(spec: str):
    from hfspeech.training.arguments import load_sources

    import numpy as np

    def utterances():
        for example in load_sources(spec):
            yield str(example["id"]), np.asarray(example["audio"], dtype=np.float32)
    return utterances


def stage_labels(directory: Path, pool: str, feature: str, k: int) -> dict:
    from hfspeech.targets.assign import make_feature_extractor
    from hfspeech.targets.fit_assign import fit_and_assign

    seconds: dict[str, float] = {}
    _, metadata = fit_and_assign(pool_stream(pool), make_feature_extractor(feature), [k], directory / "labels",
                                 kmeans_dir=directory / "kmeans", seed=0, data_spec=pool, stage_seconds=seconds)
    return {"feature": feature, "k": k, "label_rate": metadata.label_rate, "labels": str(directory / "labels"),
            "kmeans": str(directory / "kmeans"), "stage_seconds": seconds}


def stage_pretrain(directory: Path, objective: str, pool: str, steps: int, labels: dict | None = None) -> dict:
    from accelerate import Accelerator

    from hfspeech.configuration import SpeechEncoderConfig
    from hfspeech.modeling.pretraining import SpeechEncoderForPreTraining
    from hfspeech.training.arguments import PretrainingArguments
    from hfspeech.training.pretrain_data import build_pretraining_batches
    from hfspeech.training.pretrain_loop import run_pretraining

    overrides = dict(BACKBONE)
    if objective == "hubert":
        overrides.update(hubert_num_clusters=[labels["k"]], label_rate=int(labels["label_rate"]), hubert_final_dim=64)
    else:
        overrides.update(num_negatives=50)
    args = PretrainingArguments(
        output_dir=str(directory), model="tiny", objective=objective, model_overrides=overrides, train_data=pool,
        labels=labels["labels"] if labels else "", max_batch_seconds=40.0, max_sample_seconds=5.0,
        min_sample_seconds=0.3, learning_rate=2e-3, max_steps=steps, save_steps=max(1, steps // 4), logging_steps=10)
    torch.manual_seed(0)
    model = SpeechEncoderForPreTraining(SpeechEncoderConfig.from_preset("tiny", objective=objective, **overrides))
    batches, summary = build_pretraining_batches(args, model.config)
    result = run_pretraining(model, batches, args, Accelerator(cpu=True))
    return {"objective": objective, "steps": steps, "data": summary, "final_metrics": result["metrics"],
            "skipped_updates": result.get("skipped_updates", 0), "model": str(directory / "final"),
            "curves": read_scalars(directory / "tensorboard")}


def write_random_init(directory: Path) -> dict:
    from hfspeech.configuration import SpeechEncoderConfig
    from hfspeech.modeling.models import SpeechEncoderModel

    torch.manual_seed(0)
    SpeechEncoderModel(SpeechEncoderConfig.from_preset("tiny", objective="hubert", **BACKBONE)).save_pretrained(directory)
    return {"model": str(directory)}


def stage_tokenizer(directory: Path, splits: Path) -> dict:
    """One character vocabulary (from all AN4 training transcripts) for every fine-tuning run,
    so the 10-minute runs, the LM and the comparison share an alphabet."""
    from hfspeech.data import TextNormalizer, load_source
    from hfspeech.processing import CharacterCTCTokenizer

    train = load_source(str(splits / "train_all"))
    normalizer = TextNormalizer()
    tokenizer = CharacterCTCTokenizer.from_transcripts([normalizer(t, i) for t, i in zip(train["text"], train["id"])])
    tokenizer.save_pretrained(directory)
    return {"directory": str(directory), "vocab_size": len(tokenizer)}


def stage_finetune(directory: Path, init_model: str, tokenizer_dir: Path, train: Path, dev: Path, steps: int) -> dict:
    import shutil

    from hfspeech.training.arguments import FinetuningArguments
    from hfspeech.training.finetune_loop import run_finetuning

    init = directory / "init"  # the pretrained (or random) weights + the shared tokenizer
    if not init.exists():
        shutil.copytree(init_model, init, ignore=shutil.ignore_patterns("checkpoints", "kmeans"))
        for file in tokenizer_dir.iterdir():
            if file.name != "result.json":
                shutil.copy(file, init / file.name)
    result = run_finetuning(FinetuningArguments(
        output_dir=str(directory), model=str(init), train_data=str(train), dev_data=str(dev), learning_rate=2e-3,
        max_steps=steps, freeze_transformer_steps=0, freeze_feature_encoder=False, max_batch_seconds=30.0,
        eval_steps=max(1, steps // 5), save_steps=max(1, steps // 5), mask_time_prob=0.05, mask_time_length=5,
        mask_feature_prob=0.0, layerdrop=0.0))
    losses = result.pop("train_losses")
    return {**result, "losses": losses, "model": str(directory / "final"),
            "dev_curve": read_scalars(directory / "tensorboard", prefix="dev/")}


def stage_lm(directory: Path, splits: Path, data: Path, model_dir: Path) -> dict:
    from hfspeech.decoding import CTCVocabulary, build_language_model
    from hfspeech.processing import CharacterCTCTokenizer

    vocabulary = CTCVocabulary.from_tokenizer(CharacterCTCTokenizer.from_pretrained(model_dir))
    texts = [splits / "train_transcripts.txt", *sorted((data / "text" / "gutenberg").glob("*.txt"))]
    # the Gutenberg books are ASCII or ISO-8859-1 (latin-1 reads both, and the AN4 transcripts)
    files = build_language_model(texts, directory, vocabulary, order=4, encoding="latin-1")
    return {"directory": str(directory), "texts": [str(t) for t in texts], "order": files.order,
            "unigrams": files.num_unigrams}


def stage_decode(directory: Path, model_dir: str, dev: Path, lm_dir: str) -> dict:
    from hfspeech.decoding import DecoderSpec, load_vocabulary
    from hfspeech.decoding.model_emissions import compute_emissions, evaluate_emissions

    cache = compute_emissions(model_dir, str(dev), require_transcripts=True)
    vocabulary = load_vocabulary(model_dir)
    result = {}
    for name, backend, lm in (("greedy", "greedy", None), ("lm", "pyctcdecode", lm_dir)):
        spec = DecoderSpec(vocabulary.labels, backend, vocabulary.blank_index, lm_path=lm, alpha=0.5, beta=1.0,
                           beam_width=32)
        evaluation = evaluate_emissions(cache, spec)
        result[name] = {"wer": evaluation.report.wer, "cer": evaluation.report.cer,
                        "examples": [(r, h.text) for r, h in zip(cache.references[:3], evaluation.hypotheses[:3])]}
    cache.save(directory / "emissions.npz")  # real emissions for benchmarks/decoding.py --emissions
    return result


def stage_pnmi(directory: Path, label_stages: dict[str, dict]) -> dict:
    from hfspeech.demo_corpus import build_corpus
    from hfspeech.targets import assign_label_sets, measure_quality, read_label_directory, read_phn_directory

    corpus = directory / "corpus"
    if not (corpus / "train" / "metadata.csv").exists():
        build_corpus(corpus, train_sentences=30, dev_sentences=1, seed=7)
    alignments = read_phn_directory(corpus / "alignments")
    result = {}
    for name, labels in label_stages.items():
        metadata = assign_label_sets(labels["kmeans"], str(corpus / "train"), directory / name)
        _, ids, label_sets = read_label_directory(directory / name)
        report, _, _ = measure_quality(dict(zip(ids, label_sets[labels["k"]])), alignments, metadata.label_rate)
        result[name] = {"feature": labels["feature"], "k": labels["k"], "pnmi": report.pnmi,
                        "phone_purity": report.phone_purity, "cluster_purity": report.cluster_purity,
                        "frames": report.num_frames}
    return result


def read_scalars(log_dir: Path, prefix: str = "train/") -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not log_dir.exists():
        return {}
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag[len(prefix):]: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"] if tag.startswith(prefix)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("runs/reproduce"))
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "data")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every step count")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids oversubscription)")
    parser.add_argument("--extra-finetune", type=int, default=0, metavar="N",
                        help="also fine-tune random and HuBERT inits on all AN4 training speakers for N updates")
    parser.add_argument("--extra-only", action="store_true",
                        help="with --extra-finetune: run only those fine-tunings (decoding needs a full run)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    steps = {key: max(2, int(round(value * args.scale))) for key, value in STEPS.items()}
    out = args.output
    if not (args.data / "an4" / "train" / "metadata.csv").exists():
        raise FileNotFoundError(f"{args.data}/an4/train/metadata.csv not found; pass --data (the shared data folder).")
    results: dict = {"steps": steps, "backbone": BACKBONE}
    results["split"] = run_stage(out, "split", lambda d: split_an4(args.data / "an4" / "train", d))
    splits = out / "split"
    pool = pool_spec(args.data, splits)
    results["labels_mfcc"] = run_stage(out, "labels_mfcc", lambda d: stage_labels(d, pool, "mfcc", 100))
    results["hubert_iter1"] = run_stage(out, "hubert_iter1", lambda d: stage_pretrain(
        d, "hubert", pool, steps["hubert_iteration"], results["labels_mfcc"]))
    layer_feature = f"{results['hubert_iter1']['model']}:{HUBERT_LAYER}"
    results["labels_hubert"] = run_stage(out, "labels_hubert", lambda d: stage_labels(d, pool, layer_feature, 500))
    results["hubert_iter2"] = run_stage(out, "hubert_iter2", lambda d: stage_pretrain(
        d, "hubert", pool, steps["hubert_iteration"], results["labels_hubert"]))
    results["wav2vec2"] = run_stage(out, "wav2vec2", lambda d: stage_pretrain(d, "wav2vec2", pool, steps["wav2vec2"]))
    results["random"] = run_stage(out, "random", lambda d: write_random_init(d / "model"))
    results["pnmi"] = run_stage(out, "pnmi", lambda d: stage_pnmi(
        d, {"mfcc": results["labels_mfcc"], "hubert_layer": results["labels_hubert"]}))
    inits = {"random": results["random"]["model"], "wav2vec2": results["wav2vec2"]["model"],
             "hubert": results["hubert_iter2"]["model"]}
    results["tokenizer"] = run_stage(out, "tokenizer", lambda d: stage_tokenizer(d, splits))
    extra = [f"{init}_all_{args.extra_finetune}" for init in EXTRA_INITS] if args.extra_finetune else []
    for name in extra:  # longer fine-tuning on all training speakers (same data, more updates)
        init = name.split("_")[0]
        results[f"finetune_{name}"] = run_stage(out, f"finetune_{name}", lambda d: stage_finetune(
            d, inits[init], out / "tokenizer", splits / "train_all", splits / "dev", args.extra_finetune))
    if args.extra_only:
        return 0
    for subset in SUBSETS:
        for init in INITS:
            name = f"finetune_{init}_{subset}"
            results[name] = run_stage(out, name, lambda d: stage_finetune(
                d, inits[init], out / "tokenizer", splits / f"train_{subset}", splits / "dev", steps["finetune"]))
    results["lm"] = run_stage(out, "lm", lambda d: stage_lm(d, splits, args.data, Path(results["finetune_random_all"]["model"])))
    for subset in SUBSETS:
        for init in INITS:
            name = f"decode_{init}_{subset}"
            results[name] = run_stage(out, name, lambda d: stage_decode(
                d, results[f"finetune_{init}_{subset}"]["model"], splits / "dev", results["lm"]["directory"]))
    for name in extra:
        results[f"decode_{name}"] = run_stage(out, f"decode_{name}", lambda d: stage_decode(
            d, results[f"finetune_{name}"]["model"], splits / "dev", results["lm"]["directory"]))
    (out / "summary.json").write_text(json.dumps(results, indent=2))
    from report import write_report  # benchmarks/reproduce/report.py

    print(write_report(out / "summary.json", out / "report"))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    raise SystemExit(main())

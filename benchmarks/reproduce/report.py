"""Plots and Markdown tables from a reproduction run's summary.json (see run.py).

    .venv/bin/python benchmarks/reproduce/report.py runs/reproduce/summary.json OUT_DIR

Writes OUT_DIR/pretraining_curves.png, finetuning_curves.png, wer_bars.png and report.md (the
tables benchmarks/RESULTS.md quotes), and returns the Markdown text.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

INITS = ("random", "hubert_iter1", "hubert_iter2", "wav2vec2")


def _plot_pretraining(summary: dict, path: Path) -> None:
    panels = [("hubert_iter1", "dev/masked_accuracy_0", "HuBERT iter. 1: held-out masked-frame accuracy"),
              ("hubert_iter2", "dev/masked_accuracy_0", "HuBERT iter. 2: held-out masked-frame accuracy"),
              ("wav2vec2", "dev/accuracy", "wav2vec 2.0: held-out contrastive accuracy"),
              ("hubert_iter1", "train/loss", "HuBERT iter. 1: training loss"),
              ("hubert_iter2", "train/loss", "HuBERT iter. 2: training loss"),
              ("wav2vec2", "train/loss", "wav2vec 2.0: training loss")]
    figure, axes = plt.subplots(2, 3, figsize=(15, 7))
    for axis, (run, tag, title) in zip(axes.flat, panels):
        run_summary = summary["pretraining"].get(run, {})
        series = run_summary.get("curves", {}).get(tag, [])
        if series:
            steps, values = zip(*series)
            axis.plot(steps, values)
        if tag == "dev/masked_accuracy_0" and run_summary:
            for k, rate in run_summary["dev_data"].get("majority_cluster_rate", {}).items():
                axis.axhline(rate, linestyle="--", color="grey", label=f"most frequent of K={k}")
            axis.legend(fontsize=8)
        if tag == "dev/accuracy":
            axis.axhline(1 / 101, linestyle="--", color="grey", label="chance (1 of 101)")
            axis.legend(fontsize=8)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("update")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _panels(summary: dict) -> list[tuple[str, str]]:
    return [(corpus, labels) for corpus, data in summary["corpora"].items()
            for labels in sorted({run.split("-", 1)[1] for run in data["runs"]}, key=lambda name: (name == "all", name))]


def _plot_finetuning(summary: dict, path: Path) -> None:
    panels = _panels(summary)
    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for axis, (corpus, labels) in zip(axes[0], panels):
        for init in INITS:
            run = summary["corpora"][corpus]["runs"].get(f"{init}-{labels}")
            series = (run or {}).get("curves", {}).get("dev/wer", [])
            if series:
                steps, values = zip(*series)
                axis.plot(steps, [100 * value for value in values], label=init)
        axis.set_title(f"{corpus}, {labels} of labels: dev WER (greedy)", fontsize=10)
        axis.set_xlabel("update")
        axis.set_ylim(0, 105)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _plot_wer(summary: dict, path: Path) -> None:
    panels = _panels(summary)
    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for axis, (corpus, labels) in zip(axes[0], panels):
        runs = summary["corpora"][corpus]["runs"]
        inits = [init for init in INITS if f"{init}-{labels}" in runs]
        for offset, key in ((-0.2, "wer_greedy"), (0.2, "wer_lm")):
            axis.bar([i + offset for i in range(len(inits))],
                     [100 * runs[f"{init}-{labels}"]["evaluate"][key] for init in inits], 0.4,
                     label="greedy" if key == "wer_greedy" else "4-gram LM")
        axis.set_xticks(range(len(inits)), inits, fontsize=8)
        axis.set_title(f"{corpus}, {labels} of labels: dev WER %", fontsize=10)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def write_report(summary_path: Path, output_dir: Path) -> str:
    summary = json.loads(Path(summary_path).read_text())
    output_dir.mkdir(parents=True, exist_ok=True)
    _plot_pretraining(summary, output_dir / "pretraining_curves.png")
    _plot_finetuning(summary, output_dir / "finetuning_curves.png")
    _plot_wer(summary, output_dir / "wer_bars.png")
    lines = []
    for corpus, data in summary["corpora"].items():
        manifests = data["split"]["manifests"]
        lines += [f"### {corpus}", "",
                  f"dev: {manifests['dev']['utterances']} utterances of {manifests['dev']['speakers']} held-out "
                  f"speakers; labels: " + ", ".join(f"{name.removeprefix('train_') if name != 'train' else 'all'} = "
                                                    f"{60 * part['hours']:.1f} min" for name, part in manifests.items()
                                                    if name.startswith("train")), "",
                  "| init | labels | updates | dev WER greedy | vs random | dev WER 4-gram LM | vs random | LM vs greedy "
                  "| CER greedy | fine-tuning min |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        runs = data["runs"]
        for name, run in runs.items():
            init, labels = name.split("-", 1)
            scores, baseline = run["evaluate"], runs.get(f"random-{labels}", {}).get("evaluate")

            def relative(key, scores=scores, baseline=baseline, init=init):
                if baseline is None or init == "random":
                    return "-"
                return f"{100 * (scores[key] - baseline[key]) / baseline[key]:+.0f} %"

            lm_gain = 100 * (scores["wer_lm"] - scores["wer_greedy"]) / scores["wer_greedy"]
            lines.append(f"| {init} | {labels} | {run['finetune']['updates']} | {100 * scores['wer_greedy']:.1f} | "
                         f"{relative('wer_greedy')} | {100 * scores['wer_lm']:.1f} | {relative('wer_lm')} | "
                         f"{lm_gain:+.0f} % | {100 * scores['cer_greedy']:.1f} | {run['finetune']['seconds'] / 60:.1f} |")
        lines.append("")
    lines += ["### Pretraining on the pool (held-out dev audio of both corpora)", "",
              "| run | updates | minutes | held-out accuracy | reference | loss |", "|---|---:|---:|---:|---|---:|"]
    for name, run in summary["pretraining"].items():
        metrics = run["dev_metrics"]
        if "masked_accuracy_0" in metrics:
            rates = run["dev_data"]["majority_cluster_rate"]
            accuracy = f"{100 * metrics['masked_accuracy_0']:.1f} % (masked frames)"
            reference = ", ".join(f"most frequent of K={k}: {100 * rate:.1f} %" for k, rate in rates.items())
        else:
            accuracy = f"{100 * metrics['accuracy']:.1f} % (contrastive)"
            reference = f"chance 1/101 = 1.0 % ({metrics['accuracy'] * 101:.1f}x); codebook perplexity " \
                        f"{metrics['codevector_perplexity']:.0f} of 640"
        lines.append(f"| {name} | {run['updates']} | {run['seconds'] / 60:.1f} | {accuracy} | {reference} | "
                     f"{metrics['loss']:.3f} |")
    quality = summary.get("label_quality", {})
    if quality:
        lines += ["", "### Label quality (flite speech with phone timings)", "",
                  "| labels | features | K | PNMI | phone purity | cluster purity |", "|---|---|---:|---:|---:|---:|"]
        for name, row in quality.items():
            if isinstance(row, dict):
                lines.append(f"| {name} | {row['feature']} | {row['clusters']} | {row['pnmi']:.3f} | "
                             f"{row['phone_purity']:.3f} | {row['cluster_purity']:.3f} |")
    text = "\n".join(lines) + "\n"
    (output_dir / "report.md").write_text(text)
    return text


if __name__ == "__main__":
    print(write_report(Path(sys.argv[1]), Path(sys.argv[2])))

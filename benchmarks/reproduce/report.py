"""Plots and a Markdown table from a reproduction run's summary.json (see run.py).

    .venv/bin/python benchmarks/reproduce/report.py runs/reproduce/summary.json OUT_DIR

Writes OUT_DIR/pretraining_curves.png, finetuning_curves.png, wer_bars.png and report.md
(the table that benchmarks/RESULTS.md quotes), and returns the Markdown text.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

INITS = ("random", "wav2vec2", "hubert")
SUBSETS = ("10min", "all")


def _plot_pretraining(summary: dict, path: Path) -> None:
    runs = [("hubert_iter1", "loss", "HuBERT iter. 1 (MFCC K=100): loss"),
            ("hubert_iter2", "loss", "HuBERT iter. 2 (layer K=500): loss"),
            ("wav2vec2", "loss", "wav2vec 2.0: loss"),
            ("hubert_iter1", "masked_accuracy_0", "HuBERT iter. 1: masked accuracy"),
            ("hubert_iter2", "masked_accuracy_0", "HuBERT iter. 2: masked accuracy"),
            ("wav2vec2", "codevector_perplexity", "wav2vec 2.0: codebook perplexity")]
    figure, axes = plt.subplots(2, 3, figsize=(15, 7))
    for axis, (run, key, title) in zip(axes.flat, runs):
        series = summary.get(run, {}).get("curves", {}).get(key, [])
        if series:
            steps, values = zip(*series)
            axis.plot(steps, values)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("update")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _plot_finetuning(summary: dict, path: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(13, 4))
    for axis, subset in zip(axes, SUBSETS):
        for init in INITS:
            losses = summary.get(f"finetune_{init}_{subset}", {}).get("losses", [])
            if losses:
                window = max(1, len(losses) // 50)
                smoothed = [sum(losses[i:i + window]) / window for i in range(0, len(losses) - window + 1, window)]
                axis.plot([i * window for i in range(len(smoothed))], smoothed, label=init)
        axis.set_title(f"CTC loss, AN4 {subset} (mean over {max(1, len(losses) // 50)} updates)", fontsize=10)
        axis.set_xlabel("update")
        axis.set_ylim(0, 6)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _plot_wer(summary: dict, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(9, 4))
    width = 0.13
    for index, (subset, decoder) in enumerate([(s, d) for s in SUBSETS for d in ("greedy", "lm")]):
        values = [100 * summary.get(f"decode_{init}_{subset}", {}).get(decoder, {}).get("wer", float("nan"))
                  for init in INITS]
        axis.bar([i + (index - 1.5) * width for i in range(len(INITS))], values, width, label=f"{subset}, {decoder}")
    axis.set_xticks(range(len(INITS)), [f"init: {init}" for init in INITS])
    axis.set_ylabel("dev WER %")
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
    split = summary["split"]
    lines = [f"Fine-tuning data: AN4 10-minute subset ({split['train_10min']['minutes']:.1f} min, "
             f"{split['train_10min']['speakers']} speakers) and all training speakers ({split['train_all']['minutes']:.1f} "
             f"min, {split['train_all']['speakers']} speakers); dev: {split['dev']['utterances']} utterances of "
             f"{split['dev']['speakers']} other speakers. Updates: {summary['steps']}.", "",
             "| init | labeled | dev WER greedy | dev CER greedy | dev WER 4-gram | dev CER 4-gram | best dev WER during training |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for subset in SUBSETS:
        for init in INITS:
            decode = summary.get(f"decode_{init}_{subset}", {})
            best = summary.get(f"finetune_{init}_{subset}", {}).get("best_wer")
            if not decode:
                continue
            lines.append(f"| {init} | {subset} | {100 * decode['greedy']['wer']:.1f} | {100 * decode['greedy']['cer']:.1f} | "
                         f"{100 * decode['lm']['wer']:.1f} | {100 * decode['lm']['cer']:.1f} | "
                         f"{'-' if best is None else f'{100 * best:.1f}'} |")
    for key in sorted(k for k in summary if k.startswith("decode_") and k.count("_") == 3):
        _, init, subset, updates = key.split("_")  # longer runs: decode_{init}_all_{updates}
        decode, best = summary[key], summary.get(f"finetune_{init}_{subset}_{updates}", {}).get("best_wer")
        lines.append(f"| {init} ({updates} updates) | {subset} | {100 * decode['greedy']['wer']:.1f} | "
                     f"{100 * decode['greedy']['cer']:.1f} | {100 * decode['lm']['wer']:.1f} | {100 * decode['lm']['cer']:.1f} | "
                     f"{'-' if best is None else f'{100 * best:.1f}'} |")
    pnmi = summary.get("pnmi", {})
    if pnmi:
        lines += ["", "| labels (flite speech, phone timings) | K | PNMI | phone purity | cluster purity |", "|---|---:|---:|---:|---:|"]
        for name, row in ((n, r) for n, r in pnmi.items() if isinstance(r, dict)):
            lines.append(f"| {name} ({row['feature']}) | {row['k']} | {row['pnmi']:.3f} | {row['phone_purity']:.3f} | "
                         f"{row['cluster_purity']:.3f} |")
    pretraining = []
    for run in ("hubert_iter1", "hubert_iter2", "wav2vec2"):
        metrics = summary.get(run, {}).get("final_metrics", {})
        curves = summary.get(run, {}).get("curves", {}).get("loss", [])
        if metrics and curves:
            extra = (f", masked accuracy {metrics.get('masked_accuracy_0', float('nan')):.3f}" if "hubert" in run else
                     f", accuracy {metrics.get('accuracy', float('nan')):.3f}, perplexity "
                     f"{metrics.get('codevector_perplexity', float('nan')):.0f}")
            pretraining.append(f"- {run}: loss {curves[0][1]:.2f} (update {curves[0][0]}) -> {curves[-1][1]:.2f} "
                               f"(update {curves[-1][0]}){extra}; {summary[run]['data']['hours']:.2f} h of audio")
    text = "\n".join(lines + ([""] + pretraining if pretraining else [])) + "\n"
    (output_dir / "report.md").write_text(text)
    return text


if __name__ == "__main__":
    print(write_report(Path(sys.argv[1]), Path(sys.argv[2])))

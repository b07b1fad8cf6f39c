"""Tiny pretraining runs on real speech (../shared/data): loss and codebook-perplexity curves.

    .venv/bin/python benchmarks/pretrain_curves.py --data ../shared/data/librispeech-unlabeled \
        --steps 300 --output benchmarks/results

Trains the `tiny` preset with the wav2vec 2.0 objective through the real pretraining loop
(`hfspeech.training.run_pretraining`: bucketed batches, random crops, masking, Gumbel
annealing, checkpoints, TensorBoard), then plots the logged curves to
``OUTPUT/pretrain_curves.png`` and writes the first/last values to ``pretrain_curves.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/librispeech-unlabeled")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/pretrain-curves"))
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()

    from accelerate import Accelerator

    import torch

    from hfspeech import SpeechEncoderConfig, SpeechEncoderForPreTraining
    from hfspeech.training.arguments import PretrainingArguments
    from hfspeech.training.pretrain_data import build_pretraining_batches
    from hfspeech.training.pretrain_loop import run_pretraining

    training = PretrainingArguments(
        output_dir=str(args.run_dir), model="tiny", objective="wav2vec2", train_data=args.data,
        max_batch_seconds=40.0, max_sample_seconds=5.0, min_sample_seconds=2.0, learning_rate=1e-3,
        max_steps=args.steps, save_steps=max(1, args.steps // 2), logging_steps=5)
    torch.manual_seed(0)
    model = SpeechEncoderForPreTraining(SpeechEncoderConfig.from_preset("tiny", objective="wav2vec2", num_negatives=50))
    batches, summary = build_pretraining_batches(training, model.config)
    run_pretraining(model, batches, training, Accelerator(cpu=True))

    events = EventAccumulator(str(args.run_dir / "tensorboard"))
    events.Reload()
    series = {tag.split("/", 1)[1]: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    codebook = model.config.num_codevector_groups * model.config.num_codevectors_per_group
    figure, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for axis, key, title in ((axes[0], "loss", "loss per masked frame"), (axes[1], "accuracy", "contrastive accuracy"),
                             (axes[2], "codevector_perplexity", f"codebook perplexity (G*V = {codebook})")):
        steps, values = zip(*series[key])
        axis.plot(steps, values)
        axis.set_title(title)
        axis.set_xlabel("update")
    axes[2].axhline(codebook, linestyle="--", color="gray")
    figure.suptitle(f"tiny wav2vec 2.0 on {summary['utterances']} real clips ({summary['hours']:.2f} h): {args.data}")
    figure.tight_layout()
    args.output.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output / "pretrain_curves.png", dpi=110)

    def window(key: str, first: bool) -> float:
        values = [value for _, value in series[key]]
        part = values[:5] if first else values[-5:]
        return sum(part) / len(part)

    report = {"data": args.data, "steps": args.steps, "data_summary": summary, "codebook_size": codebook,
              **{f"{key}_{'first' if first else 'last'}5": window(key, first)
                 for key in ("loss", "accuracy", "codevector_perplexity") for first in (True, False)},
              "min_codevector_perplexity": min(value for _, value in series["codevector_perplexity"])}
    (args.output / "pretrain_curves.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

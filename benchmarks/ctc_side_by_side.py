"""hfspeech vs transformers' Wav2Vec2ForCTC, step for step: same weights, batches and optimizer.

    .venv/bin/python benchmarks/ctc_side_by_side.py [--steps 60] [--dropout 0.0] [--data ../shared/data/an4/train]

A 4 x 128 pre-LN model with 128-channel layer-norm conv blocks is built in transformers, converted
to hfspeech (`convert_transformers_checkpoint`), and both are trained on the same 16 AN4 utterances
(16 s batches, AdamW 1e-3 after 20 warm-up updates). Without dropout and masking the CTC losses must
agree update by update (float32 rounding aside); the time per update is printed for both.
"""

from __future__ import annotations

import argparse
import csv
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from hfspeech import SpeechEncoderForCTC
from hfspeech.data.batching import pack_by_duration
from hfspeech.modeling.convert import convert_transformers_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/an4/train"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = list(csv.DictReader(open(args.data / "metadata.csv")))
    rows = [rows[i] for i in sorted(random.Random(0).sample(range(len(rows)), 16))]
    audio = [soundfile.read(args.data / row["file_name"], dtype="float32")[0] for row in rows]
    audio = [(a - a.mean()) / np.sqrt(a.var() + 1e-7) for a in audio]
    vocab = ["<pad>", "<s>", "</s>", "<unk>", "|"] + sorted(set("".join(row["text"] for row in rows)) - {" "})
    labels = [[vocab.index("|" if c == " " else c) for c in row["text"]] for row in rows]
    config = Wav2Vec2Config(
        vocab_size=len(vocab), conv_dim=[128] * 7, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=512, num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=4, do_stable_layer_norm=True,
        feat_extract_norm="layer", conv_bias=True, hidden_dropout=args.dropout, attention_dropout=args.dropout,
        activation_dropout=args.dropout, feat_proj_dropout=args.dropout, final_dropout=args.dropout, layerdrop=0.0,
        mask_time_prob=0.0, pad_token_id=0, ctc_loss_reduction="mean", ctc_zero_infinity=True)
    torch.manual_seed(0)
    reference = Wav2Vec2ForCTC(config)
    scratch = Path(tempfile.mkdtemp())
    reference.save_pretrained(scratch / "transformers")
    convert_transformers_checkpoint(scratch / "transformers", scratch / "hfspeech")
    ours = SpeechEncoderForCTC.from_pretrained(scratch / "hfspeech")
    durations = np.array([len(a) / 16000 for a in audio])
    rng, plan = np.random.RandomState(1), []
    while len(plan) < args.steps:
        plan += [plan_batch for plan_batch in pack_by_duration(rng.permutation(16), durations, 16.0, None)]

    def train(model):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 20))
        losses, seconds = [], 0.0
        torch.manual_seed(5)
        for batch in plan[:args.steps]:
            values = torch.zeros(len(batch), max(len(audio[i]) for i in batch))
            mask = torch.zeros(values.shape, dtype=torch.long)
            targets = torch.full((len(batch), max(len(labels[i]) for i in batch)), -100)
            for r, i in enumerate(batch):
                values[r, :len(audio[i])], mask[r, :len(audio[i])] = torch.from_numpy(audio[i]), 1
                targets[r, :len(labels[i])] = torch.tensor(labels[i])
            began = time.perf_counter()
            model.train()
            loss = model(input_values=values, attention_mask=mask, labels=targets).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            seconds += time.perf_counter() - began
            losses.append(float(loss.detach()))
        return losses, seconds

    theirs, their_seconds = train(reference)
    mine, my_seconds = train(ours)
    print("update  transformers  hfspeech")
    for step in range(0, args.steps, max(1, args.steps // 12)):
        print(f"{step + 1:6d}  {theirs[step]:12.4f}  {mine[step]:8.4f}")
    print(f"largest |difference| of the CTC losses: {max(abs(a - b) for a, b in zip(theirs, mine)):.2e}")
    print(f"seconds per update: transformers {their_seconds / args.steps:.3f}, hfspeech {my_seconds / args.steps:.3f}")


if __name__ == "__main__":
    main()

"""Learning curves of CTC training from random initialisation on real speech (AN4), one variable at a time.

    .venv/bin/python benchmarks/ctc_learning.py --out runs/ctc/NAME.jsonl [options]   # 1 thread by default

A plain loop (AdamW, warm-up then constant/tri-stage, greedy dev WER every --eval updates) around
hfspeech's `SpeechEncoderForCTC`, so that one setting changes at a time; the library's own loop is
`hfspeech finetune` (recipes/an4). The split is AN4's 10 dev speakers (seed 0), as in recipes/an4.

Front-ends (--frontend):
  wave     the papers' conv feature encoder (here 7 x 128 channels, layer-norm blocks)
  fbank    80 log-mel bins (librosa's Slaney filters, Hann window) on the conv stack's frames (25/20 ms)
  fbank10  two 10 ms frames stacked per 20 ms frame;  fbank40  four 10 ms frames per 40 ms frame
  fbankconv, fbank40conv   the same log-mels, then --conv "width,layers,kernel" 1-D convs with GELU
  lstm     a 3 x 160 BiLSTM on the same log-mels: the reference learner
The library's filterbank front-end (feature_frontend="filterbank") is Kaldi's fbank on the fbank frames.
Each line of --out: update, seconds, mean train CTC loss since the last line, dev loss, WER, CER.
Results of the runs in benchmarks/RESULTS.md are in benchmarks/results/ctc_learning/.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import time
from pathlib import Path
from types import SimpleNamespace

import jiwer
import numpy as np
import soundfile
import torch
import torch.nn.functional as F

from hfspeech import SpeechEncoderConfig, SpeechEncoderForCTC
from hfspeech.data.batching import pack_by_duration


def load_corpus(folder: Path):
    rows = list(csv.DictReader(open(folder / "metadata.csv")))
    audio = [soundfile.read(folder / row["file_name"], dtype="float32")[0] for row in rows]
    return audio, [row["text"].strip().upper() for row in rows], [row["speaker_id"] for row in rows]


def speaker_split(speakers, dev_speakers=10, seed=0):
    names = sorted(set(speakers))
    random.Random(seed).shuffle(names)
    dev = set(names[:dev_speakers])
    return [i for i, s in enumerate(speakers) if s not in dev], [i for i, s in enumerate(speakers) if s in dev]


class LogMel(torch.nn.Module):
    """(B, S) -> (B, T, 80 * stack) log-mel; stack > 1: 10 ms frames, ``stack`` per output frame."""

    def __init__(self, stack: int, frames):
        super().__init__()
        import librosa

        self.stack, self.frames = stack, frames
        self.hop = 320 if stack == 1 else 160
        self.register_buffer("mel", torch.tensor(librosa.filters.mel(sr=16000, n_fft=512, n_mels=80), dtype=torch.float32))
        self.register_buffer("window", torch.hann_window(400))

    def forward(self, x, lengths=None):
        frames = int(self.frames(torch.tensor(x.shape[1])))
        spec = torch.stft(x, 512, hop_length=self.hop, win_length=400, window=self.window, center=False,
                          return_complex=True).abs().pow(2)
        feats = torch.log(self.mel @ spec + 1e-6).transpose(1, 2)
        need = frames * self.stack  # the 512-point STFT frames can run out before the 400-sample ones
        if feats.shape[1] < need:
            feats = F.pad(feats, (0, 0, 0, need - feats.shape[1]), mode="replicate")
        return feats[:, :need].reshape(feats.shape[0], frames, -1)


class ConvOnLogMel(torch.nn.Module):
    """Log-mels followed by ``layers`` 1-D convs (kernel ``kernel``, GELU) over time: local context
    before the Transformer, as ESPnet's conv subsampling gives it (frames unchanged)."""

    def __init__(self, logmel: LogMel, width: int, layers: int, kernel: int):
        super().__init__()
        self.logmel = logmel
        channels = [80 * logmel.stack] + [width] * layers
        self.convs = torch.nn.ModuleList(
            torch.nn.Conv1d(a, b, kernel, padding=kernel // 2) for a, b in zip(channels[:-1], channels[1:]))

    def forward(self, x, lengths=None):
        h = self.logmel(x).transpose(1, 2)
        for conv in self.convs:
            h = F.gelu(conv(h))
        return h.transpose(1, 2)


class BiLSTMCTC(torch.nn.Module):
    def __init__(self, vocab_size: int):
        super().__init__()
        self.front = LogMel(1, self.frame_lengths)
        self.norm = torch.nn.LayerNorm(80)
        self.rnn = torch.nn.LSTM(80, 160, num_layers=3, bidirectional=True, batch_first=True, dropout=0.1)
        self.head = torch.nn.Linear(320, vocab_size)

    def frame_lengths(self, samples):
        return (samples - 400) // 320 + 1

    def forward(self, input_values, attention_mask, labels):
        logits = self.head(self.rnn(self.norm(self.front(input_values)))[0])
        valid = labels >= 0
        log_probs = torch.log_softmax(logits, -1).transpose(0, 1)
        loss = F.ctc_loss(log_probs, labels.masked_select(valid), self.frame_lengths(attention_mask.sum(-1)),
                          valid.sum(-1), zero_infinity=True)
        return SimpleNamespace(loss=loss, logits=logits)


def build_model(args, vocab_size: int):
    if args.frontend == "lstm":
        return BiLSTMCTC(vocab_size)
    fields = dict(conv_dim=[128] * 7, hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
                  num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=4, layer_norm_first=True,
                  feat_extract_norm="layer", conv_bias=True, layerdrop=0.0, mask_time_prob=0.05, mask_time_length=5,
                  mask_feature_prob=0.0, hidden_dropout=0.1, attention_dropout=0.1, activation_dropout=0.0,
                  feat_proj_dropout=0.1, final_dropout=0.0, vocab_size=vocab_size, pad_token_id=0)
    widths = {"fbank": 80, "fbank10": 160, "fbank40": 320, "fbankconv": 80, "fbank40conv": 320}
    conv_width, conv_layers, conv_kernel = (int(v) for v in args.conv.split(","))
    if args.frontend.endswith("conv"):
        widths[args.frontend] = conv_width
    if args.frontend in widths:
        fields["conv_dim"] = [widths[args.frontend]] * 7  # the projection's input width
    if args.frontend.startswith("fbank40"):
        fields["conv_stride"] = [5, 2, 2, 2, 2, 2, 4]
    if args.no_regularisation:
        fields.update(hidden_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0, mask_time_prob=0.0)
    for item in args.set:
        key, value = item.split("=", 1)
        fields[key] = json.loads(value)
    model = SpeechEncoderForCTC(SpeechEncoderConfig(**fields))
    if args.frontend in widths:
        stack = 1 if args.frontend in ("fbank", "fbankconv") else model.config.inputs_to_logits_ratio // 160
        model.speech_encoder.feature_encoder = LogMel(stack, model.frame_lengths)
        if args.frontend.endswith("conv"):
            model.speech_encoder.feature_encoder = ConvOnLogMel(
                model.speech_encoder.feature_encoder, conv_width, conv_layers, conv_kernel)
    if args.positional_conv_scale != 1.0:
        with torch.no_grad():
            model.speech_encoder.encoder.pos_conv.conv.parametrizations.weight.original0.mul_(args.positional_conv_scale)
    return model


def batches(rows, durations, max_seconds, rng, buckets=16):
    rows, durations = np.array(rows), np.asarray(durations)
    edges = np.quantile(durations[rows], np.linspace(0, 1, buckets + 1)[1:-1])
    bucket = np.searchsorted(edges, durations[rows], side="right")
    out = []
    for k in range(buckets):
        members = rows[bucket == k]
        out += pack_by_duration(members[rng.permutation(len(members))], durations, max_seconds, None)
    return [out[i] for i in rng.permutation(len(out))]


def collate(audio, labels, rows):
    waves = [(audio[i] - audio[i].mean()) / np.sqrt(audio[i].var() + 1e-7) for i in rows]
    values = torch.zeros(len(rows), max(len(w) for w in waves))
    mask = torch.zeros(values.shape, dtype=torch.long)
    for r, w in enumerate(waves):
        values[r, :len(w)], mask[r, :len(w)] = torch.from_numpy(w.astype(np.float32)), 1
    targets = torch.full((len(rows), max(len(labels[i]) for i in rows)), -100)
    for r, i in enumerate(rows):
        targets[r, :len(labels[i])] = torch.tensor(labels[i])
    return values, mask, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/an4/train"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--frontend", choices=("wave", "fbank", "fbank10", "fbank40", "fbankconv", "fbank40conv", "lstm"), default="wave")
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--schedule", choices=("const", "tri"), default="const")
    parser.add_argument("--batch", type=float, default=16.0, help="audio seconds per batch")
    parser.add_argument("--eval", type=int, default=500)
    parser.add_argument("--subset", type=int, default=0, help="train on N random training utterances (<= 32: also score them)")
    parser.add_argument("--no-regularisation", action="store_true", help="no dropout, no SpecAugment")
    parser.add_argument("--positional-conv-scale", type=float, default=1.0)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=JSON", help="config field")
    parser.add_argument("--conv", default="256,2,5", help="fbank*conv: width,layers,kernel")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    audio, text, speakers = load_corpus(args.data)
    train, dev = speaker_split(speakers)
    if args.subset:
        train = list(np.random.RandomState(0).choice(train, args.subset, replace=False))
        dev = train if args.subset <= 32 else dev
    vocab = ["<pad>", "<s>", "</s>", "<unk>", "|"] + sorted(set("".join(text)) - {" "})
    index = {c: i for i, c in enumerate(vocab)}
    labels = [[index["|"] if c == " " else index[c] for c in t] for t in text]
    durations = [len(a) / 16000 for a in audio]
    model = build_model(args, len(vocab))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.0)

    def factor(step):
        if step < args.warmup:
            return (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 1.0 if args.schedule == "const" or progress < 0.4 else math.exp(math.log(0.05) * (progress - 0.4) / 0.6)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def evaluate():
        model.eval()
        references, hypotheses, loss = [], [], 0.0
        with torch.no_grad():
            for rows in batches(dev, durations, 32.0, np.random.RandomState(0)):
                values, mask, targets = collate(audio, labels, rows)
                out = model(input_values=values, attention_mask=mask, labels=targets)
                loss += float(out.loss) * len(rows)
                frames, best = model.frame_lengths(mask.sum(-1)), out.logits.argmax(-1)
                for r, i in enumerate(rows):
                    path = [int(t) for t in best[r, :frames[r]]]
                    chars = [vocab[t] for j, t in enumerate(path) if t != 0 and (j == 0 or t != path[j - 1])]
                    hypotheses.append(" ".join("".join(chars).replace("|", " ").split()))
                    references.append(text[i])
        return jiwer.wer(references, hypotheses), jiwer.cer(references, hypotheses), loss / len(dev)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    rng, plan, recent, began = np.random.RandomState(args.seed), [], [], time.perf_counter()
    with open(args.out, "w") as log:
        for step in range(args.steps):
            plan = plan or batches(train, durations, args.batch, rng)
            model.train()
            values, mask, targets = collate(audio, labels, plan.pop())
            loss = model(input_values=values, attention_mask=mask, labels=targets).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            recent.append(float(loss.detach()))
            if (step + 1) % args.eval == 0 or step + 1 == args.steps:
                wer, cer, dev_loss = evaluate()
                line = {"step": step + 1, "seconds": round(time.perf_counter() - began, 1),
                        "train_loss": round(float(np.mean(recent)), 3), "dev_loss": round(dev_loss, 3),
                        "wer": round(wer, 4), "cer": round(cer, 4)}
                recent = []
                print(json.dumps(line), flush=True)
                log.write(json.dumps(line) + "\n")
                log.flush()


if __name__ == "__main__":
    main()

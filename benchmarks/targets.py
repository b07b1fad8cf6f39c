"""HuBERT iteration-1 targets on real speech: ours (batched MFCC, torch k-means, streaming
assignment) vs the fairseq recipe (per-utterance MFCC dumped to memory, sklearn
MiniBatchKMeans with learn_kmeans.py's settings, ApplyKmeans-style NumPy assignment).

    .venv/bin/python benchmarks/targets.py --k 100 --threads 1 --out benchmarks/results/targets.md

Each pipeline runs in its own subprocess so its peak RSS (ru_maxrss) is its own. Audio is
decoded before the clock starts (identical for both). Both pipelines write k{K}.km files.
Inertia of both is computed on the same full set of frames. torchaudio cannot be installed
here, so the reference MFCC is hfspeech's Kaldi-compatible MFCC called per utterance, as
fairseq's dump_mfcc_feature.py calls torchaudio.compliance.kaldi.mfcc per utterance.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile

DATA = Path("/work/shared/data")
SOURCES = ["an4/train", "librispeech-mini/LibriSpeech", "librispeech-unlabeled"]


def load_audio(limit: int | None) -> list[tuple[str, np.ndarray]]:
    files = sorted(p for source in SOURCES for p in (DATA / source).rglob("*.flac"))[:limit]
    utterances = []
    for path in files:
        waveform, rate = soundfile.read(path, dtype="float32")
        if rate != 16000:
            raise ValueError(f"{path}: {rate} Hz, the benchmark expects 16 kHz audio")
        utterances.append((str(path.relative_to(DATA).with_suffix("")), waveform))
    return utterances


class Clock:
    """Wall and CPU seconds of consecutive named steps."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def lap(self, name: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.times[f"{name}_s"] = wall - self._wall
        self.times[f"{name}_cpu_s"] = cpu - self._cpu
        self._wall, self._cpu = wall, cpu


def run_fairseq(utterances, k: int, out: Path, seed: int) -> dict:
    import torch

    from hfspeech.targets.kmeans import fit_kmeans
    from hfspeech.targets.mfcc import compute_mfcc

    clock = Clock()
    dumped = [compute_mfcc(torch.from_numpy(w)).numpy() for _, w in utterances]  # dump_mfcc_feature.py
    features = np.concatenate(dumped)
    clock.lap("mfcc")
    model = fit_kmeans(features, k, backend="sklearn", seed=seed)  # learn_kmeans.py settings
    clock.lap("fit")
    centroids = model.centroids.numpy().T  # ApplyKmeans in dump_km_label.py
    centroid_norms = (centroids**2).sum(0, keepdims=True)
    with open(out / f"k{k}.km", "w") as handle:
        for feature in dumped:
            distance = (feature**2).sum(1, keepdims=True) - 2 * feature @ centroids + centroid_norms
            handle.write(" ".join(map(str, distance.argmin(1).tolist())) + "\n")
    clock.lap("assign")
    return {**clock.times, "centroids": model.centroids}


def run_ours(utterances, k: int, out: Path, seed: int) -> dict:
    from hfspeech.targets.assign import sample_fit_frames, write_label_files
    from hfspeech.targets.kmeans import fit_kmeans
    from hfspeech.targets.mfcc import MFCCFeatureExtractor

    extractor = MFCCFeatureExtractor()
    clock = Clock()
    frames = sample_fit_frames(iter(utterances), extractor, fraction=1.0, seed=seed)
    clock.lap("mfcc")
    model = fit_kmeans(frames, k, backend="torch", seed=seed)
    clock.lap("fit")
    del frames
    write_label_files(iter(utterances), extractor, [model], out)  # recomputes MFCC on the fly
    clock.lap("assign")
    return {**clock.times, "centroids": model.centroids}


def child(args: argparse.Namespace) -> None:
    import torch
    from threadpoolctl import threadpool_limits

    import hfspeech.targets  # noqa: F401 - imports stay outside the timed region
    import sklearn.cluster  # noqa: F401

    torch.set_num_threads(args.threads)
    utterances = load_audio(args.limit)
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = Path(args.workdir) / args.mode
    out.mkdir(parents=True, exist_ok=True)
    with threadpool_limits(args.threads):
        result = (run_ours if args.mode == "ours" else run_fairseq)(utterances, args.k, out, args.seed)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # before the (untimed) inertia evaluation
    from hfspeech.targets.kmeans import compute_inertia
    from hfspeech.targets.mfcc import compute_mfcc_batch

    with threadpool_limits(args.threads):
        all_frames = torch.cat(compute_mfcc_batch([w for _, w in utterances]))
        inertia = compute_inertia(all_frames, result.pop("centroids"))
    print(json.dumps({
        **result, "total_s": sum(result[f"{step}_s"] for step in ("mfcc", "fit", "assign")),
        "total_cpu_s": sum(result[f"{step}_cpu_s"] for step in ("mfcc", "fit", "assign")), "inertia": inertia, "frames": int(all_frames.shape[0]),
        "utterances": len(utterances), "hours": sum(len(w) for _, w in utterances) / 16000 / 3600,
        "peak_rss_mib": peak_kib / 1024, "audio_loaded_rss_mib": baseline_kib / 1024,
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="first N files only (smoke runs)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per pipeline; the table shows medians")
    parser.add_argument("--workdir", default="/tmp/hfspeech_targets_bench")
    parser.add_argument("--out", type=Path, default=None, help="write a markdown table here")
    parser.add_argument("--mode", choices=("ours", "fairseq"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode is not None:
        child(args)
        return
    runs: dict[str, list[dict]] = {"fairseq": [], "ours": []}
    for repeat in range(args.repeats):  # alternate the pipelines so load changes hit both
        for mode in ("fairseq", "ours"):
            command = [sys.executable, __file__, "--mode", mode, "--k", str(args.k), "--threads", str(args.threads),
                       "--seed", str(args.seed), "--workdir", args.workdir]
            if args.limit is not None:
                command += ["--limit", str(args.limit)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            runs[mode].append(json.loads(output.strip().splitlines()[-1]))
            print(repeat, mode, runs[mode][-1], flush=True)
    # median over repeats of every number (the inertia is identical across repeats: seeded)
    results = {mode: {key: float(np.median([r[key] for r in rs])) for key in rs[0]} for mode, rs in runs.items()}
    ours, ref = results["ours"], results["fairseq"]
    lines = [
        f"Medians of {args.repeats} runs per pipeline. K={args.k}, {ours['utterances']:.0f} utterances, {ours['hours']:.2f} h, {ours['frames']:.0f} MFCC frames; "
        f"{args.threads} thread(s) each; {platform.processor() or platform.machine()}",
        "",
        "| pipeline | MFCC s | fit s | assign s | total s | peak RSS MiB (audio alone) | inertia / frame |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in (("fairseq recipe (sklearn MiniBatchKMeans)", ref), ("hfspeech (torch k-means, streaming)", ours)):
        cells = " | ".join(f"{r[f'{step}_cpu_s']:.2f} ({r[f'{step}_s']:.1f})" for step in ("mfcc", "fit", "assign", "total"))
        lines.append(f"| {name} | {cells} | {r['peak_rss_mib']:.0f} ({r['audio_loaded_rss_mib']:.0f}) | "
                     f"{r['inertia'] / r['frames']:.2f} |")
    lines += [
        "",
        "Times: CPU seconds of the process (wall seconds in parentheses; the machine is shared, so wall",
        "times include waiting for the CPU).",
        "",
        f"Speed-up, CPU time: total {ref['total_cpu_s'] / ours['total_cpu_s']:.1f}x, fit "
        f"{ref['fit_cpu_s'] / ours['fit_cpu_s']:.1f}x; wall time: total {ref['total_s'] / ours['total_s']:.1f}x, "
        f"fit {ref['fit_s'] / ours['fit_s']:.1f}x. Inertia ours / fairseq: {ours['inertia'] / ref['inertia']:.4f}.",
    ]
    table = "\n".join(lines)
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        command = f".venv/bin/python benchmarks/targets.py --k {args.k} --threads {args.threads} --repeats {args.repeats}"
        args.out.write_text(f"# HuBERT targets benchmark\n\nCommand: `{command}`\n\n{table}\n")


if __name__ == "__main__":
    main()

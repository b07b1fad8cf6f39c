"""HuBERT iteration-1 targets on real speech: ours (batched MFCC computed once, torch k-means,
labels from the feature cache) vs the fairseq recipe (examples/hubert/simple_kmeans:
dump_mfcc_feature.py per utterance, learn_kmeans.py = sklearn MiniBatchKMeans with its
settings on ``--percent`` of the utterances, dump_km_label.py's ApplyKmeans in NumPy).

    pip download --no-deps torchaudio==2.11.1 -d /tmp/torchaudio_wheel
    .venv/bin/python benchmarks/targets.py --k 100 --threads 1 --repeats 3 \
        --torchaudio-wheel /tmp/torchaudio_wheel/torchaudio-2.11.1-py3-none-manylinux_2_28_x86_64.whl

With ``--torchaudio-wheel`` the recipe's MFCC is torchaudio's own ``compliance.kaldi.mfcc``
(see benchmarks/torchaudio_reference.py for why it is loaded from the wheel); without it,
hfspeech's Kaldi-compatible MFCC called per utterance stands in. The recipe runs once per
``--fairseq-percent`` (-1: all utterances, learn_kmeans.py's default; 0.1: the README's
command). Each pipeline runs in its own subprocess so its peak RSS (ru_maxrss) is its own.
Audio is decoded before the clock starts (identical for both); the recipe keeps its feature
"dump" in memory instead of writing .npy files (which favours it). Both write k{K}.km files.
Inertia of both is computed on the same full set of frames with the same code.
``--fairseq-shards N`` runs the recipe's MFCC dump as N processes at once (the README's
``nshard`` jobs; forked with the audio already decoded, one torch thread each, started before
the clock), which is how the recipe uses several cores; the fit (MiniBatchKMeans) is one job
either way.

    .venv/bin/python benchmarks/targets.py --k 100 --threads 2 --fairseq-shards 2 --repeats 5 \
        --torchaudio-wheel ... --out benchmarks/results/targets_2threads.md
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


_SHARD: dict = {}  # what forked shard workers inherit: the decoded utterances and the MFCC function


def _dump_shard(bounds: tuple[int, int]) -> tuple[list[np.ndarray], float]:
    """dump_mfcc_feature.py for one shard (a contiguous block of utterances), in a worker process;
    also returns the worker's CPU seconds for it."""
    began = time.process_time()
    start, stop = bounds
    return [_SHARD["mfcc"](w).numpy() for _, w in _SHARD["utterances"][start:stop]], time.process_time() - began


def _shard_pool(utterances, mfcc, shards: int):
    """``shards`` forked processes of one torch thread each, started (and warmed) before any clock."""
    import multiprocessing

    import torch

    _SHARD.update(utterances=utterances, mfcc=mfcc)
    pool = multiprocessing.get_context("fork").Pool(shards, initializer=torch.set_num_threads, initargs=(1,))
    pool.map(_dump_shard, [(0, 1)] * shards)  # warm-up: imports and first calls outside the timed region
    return pool


def run_fairseq(utterances, k: int, out: Path, seed: int, percent: float, mfcc, pool=None, shards: int = 1) -> dict:
    from hfspeech.labels.kmeans import fit_kmeans

    clock = Clock()
    if pool is None:
        dumped = [mfcc(w).numpy() for _, w in utterances]  # dump_mfcc_feature.py, one utterance at a time
    else:  # the README's `for rank in range(nshard)` jobs, run at once; features come back pickled (~ .npy I/O)
        edges = np.linspace(0, len(utterances), shards + 1).astype(int)
        results = pool.map(_dump_shard, list(zip(edges[:-1], edges[1:])))
        dumped = [f for shard, _ in results for f in shard]
    clock.lap("mfcc")
    if pool is not None:  # the shard processes' CPU time counts too
        clock.times["mfcc_cpu_s"] += sum(cpu for _, cpu in results)
    np.random.seed(seed)  # learn_kmeans.py: load_feature_shard's --percent sampling of utterances
    if percent < 0:
        features = np.concatenate(dumped)
    else:
        chosen = np.random.choice(len(dumped), int(np.ceil(len(dumped) * percent)), replace=False)
        features = np.concatenate([dumped[i] for i in chosen])
    model = fit_kmeans(features, k, backend="sklearn", seed=seed)  # learn_kmeans.py settings (+ its inertia)
    clock.lap("fit")
    centroids = model.centroids.numpy().T  # ApplyKmeans in dump_km_label.py
    centroid_norms = (centroids**2).sum(0, keepdims=True)
    with open(out / f"k{k}.km", "w") as handle:
        for feature in dumped:
            distance = (feature**2).sum(1, keepdims=True) - 2 * feature @ centroids + centroid_norms
            handle.write(" ".join(map(str, distance.argmin(1).tolist())) + "\n")
    clock.lap("assign")
    return {**clock.times, "centroids": model.centroids, "fit_frames": int(features.shape[0])}


def run_ours(utterances, k: int, out: Path, seed: int, fraction: float) -> dict:
    from hfspeech.labels.fit_assign import fit_and_assign
    from hfspeech.labels.mfcc import MFCCFrameFeatures

    stages: dict[str, float] = {}
    models, _ = fit_and_assign(lambda: iter(utterances), MFCCFrameFeatures(), [k], out, fraction=fraction,
                               max_frames=None, seed=seed, stage_seconds=stages)
    names = {"features": "mfcc", "fit": "fit", "labels": "assign"}  # features_s also holds sampling + caching
    times = {key.replace(stage, names[stage], 1): value for key, value in stages.items() for stage in names
             if key.startswith(stage + "_")}
    return {**times, "centroids": models[0].centroids, "fit_frames": models[0].num_fit_frames}


def reference_mfcc(args: argparse.Namespace):
    """dump_mfcc_feature.py's per-utterance MFCC: torchaudio's if a wheel is given, else ours."""
    if args.torchaudio_wheel is not None:
        from torchaudio_reference import fairseq_mfcc, import_torchaudio_from_wheel

        return fairseq_mfcc(import_torchaudio_from_wheel(args.torchaudio_wheel, Path(args.workdir) / "wheels"))
    import torch

    from hfspeech.labels.mfcc import compute_mfcc

    return lambda waveform: compute_mfcc(torch.from_numpy(waveform))


def child(args: argparse.Namespace) -> None:
    import torch
    from threadpoolctl import threadpool_limits

    import hfspeech.labels  # noqa: F401 - imports stay outside the timed region
    import sklearn.cluster  # noqa: F401

    torch.set_num_threads(args.threads)
    utterances = load_audio(args.limit)
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = Path(args.workdir) / args.mode
    out.mkdir(parents=True, exist_ok=True)
    pool = None
    if args.mode == "fairseq":
        mfcc = reference_mfcc(args)
        if args.fairseq_shards > 1:
            pool = _shard_pool(utterances, mfcc, args.fairseq_shards)
    with threadpool_limits(args.threads):
        if args.mode == "ours":
            result = run_ours(utterances, args.k, out, args.seed, args.fraction)
        else:
            result = run_fairseq(utterances, args.k, out, args.seed, args.percent, mfcc, pool, args.fairseq_shards)
    if pool is not None:
        pool.close()
        pool.join()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # before the (untimed) inertia evaluation
    from hfspeech.labels.kmeans import compute_inertia
    from hfspeech.labels.mfcc import compute_mfcc_batch

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
    parser.add_argument("--fairseq-percent", type=float, nargs="+", default=[-1.0, 0.1],
                        help="learn_kmeans.py --percent values to run the recipe with (-1: all utterances)")
    parser.add_argument("--fraction", type=float, default=0.1, help="ours: fraction of frames sampled for the fit")
    parser.add_argument("--fairseq-shards", type=int, default=1,
                        help="recipe: run dump_mfcc_feature.py as this many shard processes at once (its nshard), "
                             "one torch thread each; their CPU time is not in the CPU column")
    parser.add_argument("--torchaudio-wheel", default=None, help="torchaudio wheel for the recipe's MFCC")
    parser.add_argument("--workdir", default="/tmp/hfspeech_targets_bench")
    parser.add_argument("--out", type=Path, default=None, help="write a markdown table here")
    parser.add_argument("--mode", choices=("ours", "fairseq"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--percent", type=float, default=-1.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode is not None:
        child(args)
        return
    pipelines = [(f"fairseq{percent:g}", "fairseq", percent) for percent in args.fairseq_percent] + [("ours", "ours", 0)]
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in pipelines}
    for repeat in range(args.repeats):  # alternate the pipelines so load changes hit all
        for name, mode, percent in pipelines:
            command = [sys.executable, __file__, "--mode", mode, "--k", str(args.k), "--threads", str(args.threads),
                       "--seed", str(args.seed), "--workdir", args.workdir, "--percent", str(percent),
                       "--fraction", str(args.fraction), "--fairseq-shards", str(args.fairseq_shards)]
            if args.limit is not None:
                command += ["--limit", str(args.limit)]
            if args.torchaudio_wheel is not None:
                command += ["--torchaudio-wheel", args.torchaudio_wheel]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            runs[name].append(json.loads(output.strip().splitlines()[-1]))
            print(repeat, name, runs[name][-1], flush=True)
    # median over repeats of every number (the inertia is identical across repeats: seeded)
    results = {name: {key: float(np.median([r[key] for r in rs])) for key in rs[0]} for name, rs in runs.items()}
    ours = results["ours"]
    mfcc_name = "torchaudio.compliance.kaldi.mfcc" if args.torchaudio_wheel else "hfspeech compute_mfcc (stand-in)"
    lines = [
        f"Medians of {args.repeats} runs per pipeline. K={args.k}, {ours['utterances']:.0f} utterances, "
        f"{ours['hours']:.2f} h, {ours['frames']:.0f} MFCC frames; {args.threads} thread(s) each; "
        f"{platform.processor() or platform.machine()}. Recipe MFCC: {mfcc_name}, per utterance"
        + (f", as {args.fairseq_shards} shard processes at once (their CPU time is in the recipe's CPU column, "
           "their memory is not in its RSS column)." if args.fairseq_shards > 1 else "."),
        "",
        "| pipeline | fit frames | MFCC s | fit s | assign s | total s | peak RSS MiB (audio alone) | inertia / frame |",
        "|---|---|---|---|---|---|---|---|",
    ]
    labels = {name: f"fairseq recipe, --percent {percent:g}" for name, _, percent in pipelines if name != "ours"}
    labels["ours"] = f"hfspeech fit_and_assign (torch k-means, {args.fraction:g} of frames)"
    for name, r in results.items():
        cells = " | ".join(f"{r[f'{step}_cpu_s']:.2f} ({r[f'{step}_s']:.1f})" for step in ("mfcc", "fit", "assign", "total"))
        lines.append(f"| {labels[name]} | {r['fit_frames']:.0f} | {cells} | {r['peak_rss_mib']:.0f} "
                     f"({r['audio_loaded_rss_mib']:.0f}) | {r['inertia'] / r['frames']:.2f} |")
    lines += ["", "Times: CPU seconds of the process (wall seconds in parentheses; the machine is shared, so wall",
              "times include waiting for the CPU). Ours' MFCC column also holds frame sampling and caching.", ""]
    for name, ref in results.items():
        if name != "ours":
            lines.append(
                f"- vs {labels[name]}: CPU time total {ref['total_cpu_s'] / ours['total_cpu_s']:.1f}x "
                f"(MFCC {ref['mfcc_cpu_s'] / ours['mfcc_cpu_s']:.1f}x, fit {ref['fit_cpu_s'] / ours['fit_cpu_s']:.1f}x, "
                f"assign {ref['assign_cpu_s'] / ours['assign_cpu_s']:.1f}x); wall time total "
                f"{ref['total_s'] / ours['total_s']:.1f}x; inertia ours / recipe {ours['inertia'] / ref['inertia']:.4f}.")
    table = "\n".join(lines)
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        command = " ".join([".venv/bin/python", *sys.argv])
        args.out.write_text(f"# HuBERT targets benchmark\n\nCommand: `{command}`\n\n{table}\n")


if __name__ == "__main__":
    main()

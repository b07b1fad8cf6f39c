"""CLI verbs for HuBERT targets: `hfspeech labels fit|assign|quality|iterate`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .quality import DEFAULT_MAX_UNCOVERED_SECONDS


WORKERS_HELP = "threads computing and labelling MFCC feature groups at once (default: torch's thread count, one per core)"


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    labels = subparsers.add_parser(
        "labels", help="HuBERT targets: k-means on MFCC/layer features, label files, cluster quality",
        description="Fit k-means on MFCC or model-layer features, assign labels streaming over a "
                    "data source, and measure PNMI/purity against phone alignments.",
    )
    actions = labels.add_subparsers(dest="labels_action", metavar="ACTION")
    actions.required = True

    fit = actions.add_parser("fit", help="fit k-means (one per --k) on a random sample of frames")
    fit.add_argument("data", help="data source: a directory of audio files, audiofolder, LibriSpeech dir, manifest")
    fit.add_argument("kmeans_out", type=Path, help="output directory (one k{K}/ sub-directory per --k)")
    fit.add_argument("--features", default="mfcc", help="'mfcc' (100 Hz) or 'MODEL_DIR:LAYER' (50 Hz)")
    fit.add_argument("--k", type=int, action="append", required=True, help="clusters; repeat for an ensemble")
    fit.add_argument("--backend", choices=("torch", "sklearn"), default="torch",
                     help="torch: fast Lloyd; sklearn: MiniBatchKMeans with fairseq's settings")
    fit.add_argument("--fraction", type=float, default=1.0, help="fraction of frames to sample")
    fit.add_argument("--max-frames", type=int, default=1_000_000,
                     help="cap on sampled frames (uniform reservoir sample; bounds memory to 2x this many frames)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--device", default=None, help="torch device (default cpu)")
    fit.add_argument("--split", default=None, help="LibriSpeech split / Libri-light subset of DATA")
    fit.add_argument("--workers", type=_positive_int, default=None, help=WORKERS_HELP)
    fit.set_defaults(func=run_fit)

    assign = actions.add_parser("assign", help="write k{K}.km, ids.txt and labels.json for a data source")
    assign.add_argument("kmeans", type=Path, help="k-means directory (one model, or several k{K}/)")
    assign.add_argument("data", help="data source")
    assign.add_argument("output_dir", type=Path)
    assign.add_argument("--device", default=None)
    assign.add_argument("--split", default=None, help="LibriSpeech split / Libri-light subset of DATA")
    assign.add_argument("--workers", type=_positive_int, default=None, help=WORKERS_HELP)
    assign.set_defaults(func=run_assign)

    check = actions.add_parser("check", help="verify that a label directory matches its audio (ids, lengths, rate)")
    check.add_argument("labels", type=Path, help="label directory written by `labels assign`")
    check.add_argument("data", help="data source the labels were made from")
    check.add_argument("--split", default=None, help="LibriSpeech split / Libri-light subset of DATA")
    check.set_defaults(func=run_check)

    quality = actions.add_parser("quality", help="PNMI, phone purity and cluster purity of a label directory")
    quality.add_argument("labels", type=Path, help="label directory written by `labels assign`")
    quality.add_argument("--alignments", type=Path, required=True,
                         help="directory of TIMIT-style .phn files, or a frame-level .tsv (ID<TAB>phones)")
    quality.add_argument("--alignment-rate", type=float, default=100.0, help="frame rate of a .tsv alignment (Hz)")
    quality.add_argument("--max-uncovered", type=_non_negative_float, default=DEFAULT_MAX_UNCOVERED_SECONDS,
                         metavar="SECONDS",
                         help="audio an utterance's alignment may leave uncovered (trailing/leading silence, gaps); "
                              "uncovered frames are not scored but reported; an utterance with more is refused "
                              f"(default {DEFAULT_MAX_UNCOVERED_SECONDS:g} s)")
    quality.add_argument("--heatmap", type=Path, default=None, help="write p(phone|cluster) PNGs with this prefix")
    quality.add_argument("--json", action="store_true", help="print JSON instead of a table")
    quality.set_defaults(func=run_quality)

    iterate = actions.add_parser("iterate", help="iteration 1 (MFCC, K=100) and, with --model, iteration 2 (layer 6, K=500)")
    iterate.add_argument("data", help="data source")
    iterate.add_argument("output_dir", type=Path)
    iterate.add_argument("--model", type=Path, default=None, help="pretrained model directory for iteration 2")
    iterate.add_argument("--layer", type=int, default=6)
    iterate.add_argument("--k1", type=int, default=100)
    iterate.add_argument("--k2", type=int, default=500)
    iterate.add_argument("--backend", choices=("torch", "sklearn"), default="torch")
    iterate.add_argument("--fraction", type=float, default=1.0)
    iterate.add_argument("--max-frames", type=int, default=1_000_000, help="cap on frames sampled for k-means")
    iterate.add_argument("--cache-mib", type=float, default=1024.0,
                         help="keep computed features up to this many MiB so they are not recomputed for labelling")
    iterate.add_argument("--seed", type=int, default=0)
    iterate.add_argument("--device", default=None)
    iterate.add_argument("--split", default=None, help="LibriSpeech split / Libri-light subset of DATA")
    iterate.add_argument("--workers", type=_positive_int, default=None, help=WORKERS_HELP)
    iterate.set_defaults(func=run_iterate)


def run_fit(args: argparse.Namespace) -> int:
    from .iterations import fit_label_sets

    models = fit_label_sets(args.data, args.features, args.k, args.kmeans_out, backend=args.backend,
                            fraction=args.fraction, max_frames=args.max_frames, seed=args.seed, device=args.device, split=args.split,
                            workers=args.workers)
    for model in models:
        print(f"K={model.num_clusters}\tinertia={model.inertia:.6g}\tframes={model.num_fit_frames}\t"
              f"per_frame={model.inertia / model.num_fit_frames:.4f}\t{args.kmeans_out / f'k{model.num_clusters}'}")
    return 0


def run_assign(args: argparse.Namespace) -> int:
    from .iterations import assign_label_sets

    metadata = assign_label_sets(args.kmeans, args.data, args.output_dir, device=args.device, split=args.split,
                                 workers=args.workers)
    print(f"labelled {metadata.num_utterances} utterances ({metadata.num_frames} frames at {metadata.label_rate:g} Hz, "
          f"K={metadata.num_clusters}) -> {args.output_dir}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from .iterations import verify_labels

    metadata = verify_labels(args.labels, args.data, split=args.split)
    print(f"ok: {metadata.num_utterances} utterances, K={metadata.num_clusters} at {metadata.label_rate:g} Hz")
    return 0


def run_quality(args: argparse.Namespace) -> int:
    from .assign import read_label_directory
    from .quality import measure_quality, plot_co_occurrence, read_frame_tsv, read_phn_directory

    metadata, ids, label_sets = read_label_directory(args.labels)
    if args.alignments.suffix == ".tsv":
        alignments = read_frame_tsv(args.alignments, args.alignment_rate)
    else:
        alignments = read_phn_directory(args.alignments)
    results = {}
    for k, rows in label_sets.items():
        report, counts, phones = measure_quality(dict(zip(ids, rows)), alignments, metadata.label_rate,
                                                 max_uncovered_seconds=args.max_uncovered,
                                                 rate_source=str(args.labels / "labels.json"))
        results[f"k{k}"] = report.to_dict()
        if args.heatmap is not None:
            path = plot_co_occurrence(counts, phones, f"{args.heatmap}_k{k}.png", title=f"{metadata.feature} K={k}")
            results[f"k{k}"]["heatmap"] = str(path)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print("labels\tPNMI\tphone_purity\tcluster_purity\tframes\tutterances\tuncovered_frames\tuncovered_utterances")
    for name, r in results.items():
        print(f"{name}\t{r['pnmi']:.4f}\t{r['phone_purity']:.4f}\t{r['cluster_purity']:.4f}\t"
              f"{r['num_frames']}\t{r['num_utterances']}\t{r['uncovered_frames']}\t{r['uncovered_utterances']}")
    first = next(iter(results.values()))
    if first["uncovered_frames"]:
        rate = metadata.label_rate
        print(f"not scored: {first['uncovered_frames']} frames ({first['uncovered_frames'] / rate:.2f} s) that no "
              f"alignment segment covers, in {first['uncovered_utterances']} of {first['num_utterances']} utterances; "
              f"largest {first['largest_uncovered_frames']} frames ({first['largest_uncovered_frames'] / rate:.2f} s) "
              f"in {first['largest_uncovered_utterance']} (allowed per utterance: --max-uncovered "
              f"{first['max_uncovered_seconds']:g} s)")
    return 0


def run_iterate(args: argparse.Namespace) -> int:
    from .iterations import run_iterations

    results = run_iterations(args.data, args.output_dir, pretrained_model=args.model, layer=args.layer,
                             k_first=args.k1, k_second=args.k2, backend=args.backend, fraction=args.fraction,
                             max_frames=args.max_frames, seed=args.seed, device=args.device, split=args.split,
                             cache_mib=args.cache_mib, workers=args.workers)
    for name, metadata in results.items():
        print(f"{name}: {metadata.feature} K={metadata.num_clusters} at {metadata.label_rate:g} Hz, "
              f"{metadata.num_utterances} utterances -> {args.output_dir / name / 'labels'}")
    return 0

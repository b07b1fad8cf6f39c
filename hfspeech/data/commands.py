"""`hfspeech data info SOURCE`: describe a speech source; `hfspeech data split`: speaker-disjoint manifests."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from .audio import SkippedItems
from .sources import load_source

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data info``."""
    data = subparsers.add_parser("data", help="inspect speech data sources")
    verbs = data.add_subparsers(dest="data_verb", metavar="DATA_VERB")
    verbs.required = True
    info = verbs.add_parser(
        "info",
        help="utterances, hours, sample rates, speakers and out-of-vocabulary characters of a source",
        description="SOURCE is a path (LibriSpeech native layout, Libri-light finetuning folder, "
        "audiofolder with metadata.csv, folder of audio files, .tsv/.csv manifest) or "
        "librispeech:CONFIG/SPLIT (Hub, streamed).",
    )
    info.add_argument("source")
    info.add_argument("--split", default=None, help="LibriSpeech split folder or Libri-light subset")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.add_argument("--skip-bad", action="store_true", help="skip bad files and transcript mismatches instead of failing, and list every skipped item at the "
                      "end (map-style sources decode every file once to find corrupt audio)")
    info.add_argument("--verify", action="store_true",
                      help="decode every file (in parallel on the available cores; map-style sources) and list each "
                           "corrupt, empty or undecodable one with its reason; exit status 1 when any is found "
                           "(0 with --skip-bad, which leaves them out of the summary)")
    info.add_argument("--streaming", action="store_true", help="stream local sources too (Hub specs always stream)")
    info.add_argument("--limit", type=int, default=None, help="read at most this many utterances when streaming")
    info.set_defaults(func=run_info)
    split = verbs.add_parser(
        "split", help="speaker-disjoint train/dev manifests (and fixed-duration training subsets) of a labeled source",
        description="Draws DEV_SPEAKERS speakers (seeded) for dev.tsv, the others for train.tsv, and for each "
                    "--subset NAME=SECONDS a random part of train.tsv lasting that long (train_NAME.tsv); writes "
                    "TSV manifests with absolute audio paths and split.json into OUT_DIR.")
    split.add_argument("source", help="a local labeled source (audiofolder, manifest, LibriSpeech layout ...)")
    split.add_argument("output_dir", help="directory for train.tsv, dev.tsv, train_NAME.tsv and split.json")
    split.add_argument("--dev-speakers", type=int, required=True, help="number of speakers held out for dev")
    split.add_argument("--subset", action="append", default=[], metavar="NAME=SECONDS",
                       help="a training subset of about SECONDS of audio, e.g. 10min=600 (repeatable)")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--split", default=None, help="LibriSpeech split folder or Libri-light subset of SOURCE")
    split.set_defaults(func=run_split)


def _parse_subsets(pairs: list[str]) -> dict[str, float]:
    subsets = {}
    for pair in pairs:
        name, _, seconds = pair.partition("=")
        try:
            subsets[name.strip()] = float(seconds)
        except ValueError:
            raise ValueError(f"--subset {pair!r}: expected NAME=SECONDS, e.g. 10min=600") from None
        if not name.strip() or subsets[name.strip()] <= 0:
            raise ValueError(f"--subset {pair!r}: expected a name and a positive number of seconds, e.g. 10min=600")
    return subsets


def run_split(args: argparse.Namespace) -> int:
    from .splits import write_split

    summary = write_split(args.source, args.output_dir, args.dev_speakers, _parse_subsets(args.subset), args.seed,
                          args.split)
    for name, part in summary["manifests"].items():
        print(f"{part['path']}: {part['utterances']} utterances, {60 * part['hours']:.1f} min, "
              f"{part['speakers']} speakers")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from .info import summarize_source

    streaming = args.streaming or args.source.startswith("librispeech:")
    skipped = SkippedItems()
    started = time.perf_counter()
    # --verify collects every bad item (skip_bad decodes each file once) and decides the exit status below
    dataset = load_source(args.source, split=args.split, streaming=streaming, skip_bad=args.skip_bad or args.verify,
                          skipped=skipped)
    summary = summarize_source(dataset, limit=args.limit)
    summary["source"] = args.source
    summary["skipped"] = skipped.as_dicts()
    failed = args.verify and not args.skip_bad and bool(skipped)
    if args.verify:
        summary["verified"] = {"bad_items": len(skipped), "seconds": time.perf_counter() - started,
                               "limit": args.limit if streaming else None}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 1 if failed else 0
    print(f"source:       {args.source}")
    print(f"utterances:   {summary['utterances']}")
    print(f"hours:        {summary['hours']:.4f}")
    print("sample rates: " + ", ".join(f"{rate} Hz ({count})" for rate, count in summary["sample_rates"].items()))
    print(f"speakers:     {summary['speakers']}")
    if not summary["labeled"]:
        print("transcripts:  none (unlabeled source)")
    elif not summary["out_of_vocabulary"]:
        print("OOV chars:    none")
    else:
        print(f"OOV chars:    {summary['affected_utterances']} utterance(s) affected")
        for char, stats in summary["out_of_vocabulary"].items():
            print(f"  {char!r}: {stats['occurrences']} times in {stats['utterances']} utterance(s), "
                  f"e.g. {stats['example_id']}")
    if summary["skipped"]:
        label = "skipped:     " if args.skip_bad or not args.verify else "bad:         "
        print(f"{label} {len(summary['skipped'])} bad item(s)" + (" (not counted above)" if args.verify else ""))
        for item in summary["skipped"]:
            print(f"  {item['location']}: {item['reason']}")
    if args.verify:
        checked = f"the first {args.limit} utterances" if streaming and args.limit is not None else "every file"
        print(f"verified:     {checked} decoded in {summary['verified']['seconds']:.1f} s; "
              + (f"{len(skipped)} bad item(s)" if skipped else "no bad item"))
    if failed:
        print(f"hfspeech data: {len(skipped)} bad item(s) in {args.source}: remove or re-export the files listed "
              "above (or fix their rows), or pass --skip-bad to leave them out", file=sys.stderr)
        return 1
    return 0

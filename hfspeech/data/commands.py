"""`hfspeech data info SOURCE`: describe a speech source."""

from __future__ import annotations

import argparse
import json
import logging

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
    info.add_argument("--streaming", action="store_true", help="stream local sources too (Hub specs always stream)")
    info.add_argument("--limit", type=int, default=None, help="read at most this many utterances when streaming")
    info.set_defaults(func=run_info)


def run_info(args: argparse.Namespace) -> int:
    from .info import summarize_source

    streaming = args.streaming or args.source.startswith("librispeech:")
    skipped = SkippedItems()
    dataset = load_source(args.source, split=args.split, streaming=streaming, skip_bad=args.skip_bad, skipped=skipped)
    summary = summarize_source(dataset, limit=args.limit)
    summary["source"] = args.source
    summary["skipped"] = skipped.as_dicts()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
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
        print(f"skipped:      {len(summary['skipped'])} bad item(s)")
        for item in summary["skipped"]:
            print(f"  {item['location']}: {item['reason']}")
    return 0

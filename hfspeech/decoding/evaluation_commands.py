"""CLI verbs running a CTC model end to end: `hfspeech transcribe` and `hfspeech evaluate`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .decoder_arguments import add_decoder_arguments, decoder_overrides


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, metavar="MODEL", help="CTC model directory (e.g. RUN/final)")
    parser.add_argument("--lm", type=Path, default=None,
                        help="LM directory from `hfspeech lm build` (default: the decoder saved in MODEL, else greedy)")
    add_decoder_arguments(parser)
    parser.add_argument("--device", default="cpu", help="torch device for the model, e.g. cuda")


def register(subparsers: argparse._SubParsersAction) -> None:
    transcribe = subparsers.add_parser(
        "transcribe", help="transcribe audio files with a CTC model (and LM)",
        description="Print one line per AUDIO file: the path, a tab, the transcript.",
    )
    _add_model_arguments(transcribe)
    transcribe.add_argument("audio", nargs="+", type=Path, metavar="AUDIO", help="audio files (any FFmpeg format)")
    transcribe.set_defaults(func=run_transcribe)

    evaluate = subparsers.add_parser(
        "evaluate", help="WER/CER of a CTC model (and LM) on a labelled data set",
        description=("Compute the model's emissions on DATA (cached under MODEL/emissions or --cache), decode them "
                     "and print WER/CER with substitutions/deletions/insertions, the worst utterances and the "
                     "real-time factor of decoding and of model + decoding."),
    )
    _add_model_arguments(evaluate)
    evaluate.add_argument("data", metavar="DATA", help="data source: audiofolder, LibriSpeech dir, manifest, librispeech:...")
    evaluate.add_argument("--cache", type=Path, default=None, help="emissions cache file (.npz)")
    evaluate.add_argument("--no-cache", action="store_true", help="always recompute the emissions")
    evaluate.add_argument("--batch-seconds", type=float, default=60.0, help="padded audio seconds per forward pass")
    evaluate.add_argument("--workers", type=int, default=1, help="decoder processes")
    evaluate.add_argument("--worst", type=int, default=5, help="show this many worst utterances")
    evaluate.add_argument("--json", action="store_true", help="print the result as one JSON object")
    evaluate.add_argument("--save", action="store_true",
                          help="also record the result in MODEL/evaluation/ (the model card of `hfspeech push` lists it)")
    evaluate.set_defaults(func=run_evaluate)


def _spec(args: argparse.Namespace, loaded):
    from hfspeech.decoding.inference import resolve_decoder_spec

    return resolve_decoder_spec(args.model, loaded.vocabulary, loaded.seconds_per_frame, lm=args.lm,
                                **decoder_overrides(args))


def run_transcribe(args: argparse.Namespace) -> int:
    from hfspeech.decoding.inference import load_ctc_model, transcribe_audio_files

    loaded = load_ctc_model(args.model, args.device)
    spec = _spec(args, loaded)
    for path, result in zip(args.audio, transcribe_audio_files(loaded, args.audio, spec)):
        print(f"{path}\t{result.text}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from hfspeech.decoding.emissions import cached_emissions
    from hfspeech.decoding.evaluation import evaluate_emissions
    from hfspeech.decoding.inference import compute_emissions, load_ctc_model, model_emissions_cache_path

    loaded = load_ctc_model(args.model, args.device)
    spec = _spec(args, loaded)

    def compute():
        return compute_emissions(loaded, args.data, batch_seconds=args.batch_seconds, device=args.device,
                                 require_transcripts=True)

    cache = compute() if args.no_cache else cached_emissions(
        args.cache or model_emissions_cache_path(args.model, args.data), compute)
    result = evaluate_emissions(cache, spec, num_workers=args.workers)
    if args.save:
        from hfspeech.sharing.evaluations import save_evaluation_result

        saved = save_evaluation_result(args.model, args.data, result.to_dict(args.worst))
        print(f"saved {saved}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict(args.worst), indent=2))
        return 0
    lm = f", LM {spec.lm_path} (alpha {spec.alpha:g}, beta {spec.beta:g})" if spec.lm_path else ""
    print(f"{args.model} on {args.data}: {result.decoding.utterances} utterances, {result.audio_seconds:.1f} s; "
          f"decoder {spec.backend}{lm}")
    print(result.report.summary())
    print(f"RTF decoding {result.decoding_real_time_factor:.4f}, model + decoding "
          f"{result.end_to_end_real_time_factor:.4f} (model {result.model_seconds:.2f} s, decoding "
          f"{result.decoding.decode_seconds:.2f} s)")
    for utterance in result.report.worst(args.worst):
        print(f"  {utterance.utterance_id}: {utterance.words.errors} errors\n"
              f"    REF: {utterance.reference}\n    HYP: {utterance.hypothesis}")
    return 0

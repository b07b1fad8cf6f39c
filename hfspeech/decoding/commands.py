"""CLI verbs of the decoding area: `hfspeech lm build`, `hfspeech lm tune`, `hfspeech lm decode`."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

from .decoder_arguments import add_decoder_arguments, decoder_overrides

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    lm = subparsers.add_parser("lm", help="n-gram LMs: build, tune alpha/beta, decode cached emissions",
                               description="KenLM language models for CTC beam search.")
    verbs = lm.add_subparsers(dest="lm_verb", metavar="LM_VERB")
    verbs.required = True

    build = verbs.add_parser(
        "build", help="build a KenLM model from text",
        description=("Normalise TEXT files to the model's vocabulary and build OUT_DIR/lm.arpa, lm.bin "
                     "(KenLM binary), unigrams.txt and lm_build.json."),
    )
    build.add_argument("texts", nargs="+", type=Path, metavar="TEXT", help="plain-text files")
    build.add_argument("output_dir", type=Path, metavar="OUT_DIR", help="directory to write")
    build.add_argument("--order", type=int, default=4)
    build.add_argument("--vocab", type=Path, default=None,
                       help="tokenizer vocab.json or model directory (default: LibriSpeech A-Z ' |)")
    build.add_argument("--memory", default="20%", help="lmplz -S memory bound, e.g. 20%% or 2G")
    build.add_argument("--prune", type=int, nargs="+", default=None, metavar="COUNT",
                       help="lmplz --prune thresholds per order, unigrams first (e.g. 0 0 1)")
    build.add_argument("--no-discount-fallback", action="store_true",
                       help="do not pass --discount_fallback (fails on small corpora)")
    build.add_argument("--line-per-sentence", action="store_true",
                       help="each line is a sentence (transcripts) instead of wrapped prose")
    build.add_argument("--encoding", default="utf-8", help="text encoding (e.g. latin-1)")
    build.set_defaults(func=run_build)

    tune = verbs.add_parser(
        "tune", help="search alpha/beta on a dev set (cached emissions, or a model + data)",
        description=("Search the LM weight alpha and word bonus beta (optuna TPE, seeded) that minimise WER and "
                     "print the WER table. Two forms: `lm tune EMISSIONS LM` tunes on an .npz emissions cache "
                     "and writes the best values as JSON (--output); `lm tune MODEL DATA --lm LM_DIR` computes "
                     "the model's emissions on DATA once (cached under MODEL/emissions or --cache) and saves the "
                     "LM with the best alpha/beta into MODEL (AutoProcessor and the ASR pipeline then use it)."),
    )
    tune.add_argument("inputs", nargs=2, metavar="INPUT",
                      help="EMISSIONS LM: an emissions cache (.npz) and an LM; or, with --lm, MODEL DATA: a CTC "
                           "model directory and a data source")
    tune.add_argument("--lm", dest="lm_dir", type=Path, default=None,
                      help="LM directory from `hfspeech lm build`: selects the MODEL DATA form")
    tune.add_argument("--cache", type=Path, default=None, help="MODEL DATA form: emissions cache file (.npz)")
    tune.add_argument("--device", default="cpu", help="MODEL DATA form: torch device for the model")
    tune.add_argument("--output", type=Path, default=None,
                      help="result JSON (default: lm_weights.json; MODEL/lm_tuning.json in the MODEL DATA form)")
    tune.add_argument("--trials", type=int, default=30)
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("--alpha-range", type=float, nargs=2, default=(0.0, 5.0))
    tune.add_argument("--beta-range", type=float, nargs=2, default=(-5.0, 5.0))
    tune.add_argument("--workers", type=int, default=1)
    add_decoder_arguments(tune, ("flashlight", "pyctcdecode"))  # --alpha/--beta: the first values tried
    tune.set_defaults(func=run_tune)

    decode = verbs.add_parser(
        "decode", help="decode cached emissions and report WER/CER and speed",
        description="Decode an emissions cache; print WER/CER (when it has references), the worst "
                    "utterances and the real-time factor; optionally write the hypotheses as JSON lines.",
    )
    decode.add_argument("emissions", type=Path)
    decode.add_argument("--lm", type=Path, default=None, help="LM directory/file (none: no LM)")
    decode.add_argument("--weights", type=Path, default=None, help="JSON from `hfspeech lm tune`: its alpha, beta and (flashlight) lookahead")
    decode.add_argument("--workers", type=int, default=1)
    decode.add_argument("--worst", type=int, default=5, help="show this many worst utterances")
    decode.add_argument("--output", type=Path, default=None, help="write hypotheses + timestamps (JSON lines)")
    add_decoder_arguments(decode)
    decode.set_defaults(func=run_decode)


def run_build(args: argparse.Namespace) -> int:
    from hfspeech.decoding.lm_build import build_language_model
    from hfspeech.decoding.vocabulary import load_vocabulary

    files = build_language_model(
        args.texts, args.output_dir, load_vocabulary(args.vocab), order=args.order, memory=args.memory,
        prune=args.prune, discount_fallback=not args.no_discount_fallback,
        line_per_sentence=args.line_per_sentence, encoding=args.encoding,
    )
    print(f"{files.order}-gram LM: {files.num_unigrams} words, {files.num_sentences} sentences, "
          f"{files.num_words} running words")
    print(f"  binary:   {files.binary_path}\n  arpa:     {files.arpa_path}\n  unigrams: {files.unigrams_path}")
    if files.removed_characters:
        print(f"  removed characters: {dict(list(files.removed_characters.items())[:10])}")
    return 0


def _spec(args: argparse.Namespace, cache, lm: Path | None):
    """The decoder for an emissions cache: flashlight with an LM, greedy without, then the options given."""
    from hfspeech.decoding.decoders import DecoderSpec

    spec = DecoderSpec(cache.vocabulary.labels, "flashlight" if lm else "greedy", cache.vocabulary.blank_index,
                       lm_path=str(lm) if lm else None, seconds_per_frame=cache.seconds_per_frame)
    return replace(spec, **decoder_overrides(args))


def run_tune(args: argparse.Namespace) -> int:
    from hfspeech.decoding.emissions import EmissionsCache, cached_emissions
    from hfspeech.decoding.tuning import tune_lm_weights

    first, second = args.inputs
    model_dir = None
    if args.lm_dir is not None:
        from hfspeech.decoding.inference import compute_emissions, load_ctc_model, model_emissions_cache_path

        model_dir, data, lm = Path(first), second, args.lm_dir
        cache_path = args.cache or model_emissions_cache_path(model_dir, data)
        cache = cached_emissions(cache_path, lambda: compute_emissions(
            load_ctc_model(model_dir, args.device), data, device=args.device, require_transcripts=True))
        output = args.output or model_dir / "lm_tuning.json"
    else:
        if Path(first).is_dir():
            raise ValueError(f"{first} is a directory, not an emissions cache (.npz); to tune on a model and a "
                             f"data source use `hfspeech lm tune {first} {second} --lm LM_DIR`.")
        cache, lm = EmissionsCache.load(Path(first)), Path(second)
        output = args.output or Path("lm_weights.json")
    spec = _spec(args, cache, lm)
    result = tune_lm_weights(cache, spec, num_trials=args.trials, seed=args.seed,
                             alpha_range=tuple(args.alpha_range), beta_range=tuple(args.beta_range),
                             num_workers=args.workers)
    result.to_json(output)
    print(result.table())
    shown = f" lookahead={result.lexicon_lookahead}" if spec.backend == "flashlight" else ""
    print(f"best alpha={result.alpha:.4f} beta={result.beta:.4f}{shown} WER {100 * result.wer:.2f}% -> {output}")
    if model_dir is not None:
        from hfspeech.decoding.processor_with_lm import attach_language_model

        attach_language_model(model_dir, result.apply(spec))
        print(f"saved the {spec.backend} decoder with the LM and these weights into {model_dir}")
    return 0


def run_decode(args: argparse.Namespace) -> int:
    from hfspeech.decoding.beam_pool import DecoderPool
    from hfspeech.decoding.decoders import build_decoder
    from hfspeech.decoding.emissions import EmissionsCache
    from hfspeech.decoding.wer import error_report, measure_decoding_speed

    cache = EmissionsCache.load(args.emissions)
    if args.weights is not None:
        if not args.weights.is_file():
            raise FileNotFoundError(f"--weights {args.weights} does not exist; write it with `hfspeech lm tune`.")
        weights = json.loads(args.weights.read_text(encoding="utf-8"))
        args.alpha, args.beta = float(weights["alpha"]), float(weights["beta"])
        if weights.get("backend") == "flashlight" and "lexicon_lookahead" in weights:
            args.lexicon_lookahead = weights["lexicon_lookahead"]
    if args.backend not in (None, "greedy") and args.lm is None:
        logger.info("no --lm: %s searches without a language model", args.backend)
    spec = _spec(args, cache, args.lm if args.backend != "greedy" else None)
    if args.workers > 1:
        with DecoderPool(spec, args.workers) as pool:
            results, speed = measure_decoding_speed(lambda items: pool.decode_batch(items, progress=True),
                                                    cache.log_probs, cache.audio_seconds)
    else:
        decoder = build_decoder(spec)
        results, speed = measure_decoding_speed(decoder.decode_batch, cache.log_probs, cache.audio_seconds)
    print(f"{spec.backend}: {speed.utterances} utterances, {speed.audio_seconds:.1f} s of audio in "
          f"{speed.decode_seconds:.2f} s: {speed.utterances_per_second:.1f} utt/s, RTF {speed.real_time_factor:.4f}")
    if all(reference.strip() for reference in cache.references):
        report = error_report(cache.references, [r.text for r in results], cache.utterance_ids)
        print(report.summary())
        for utterance in report.worst(args.worst):
            print(f"  {utterance.utterance_id}: {utterance.words.errors} errors\n"
                  f"    REF: {utterance.reference}\n    HYP: {utterance.hypothesis}")
    else:
        print("(some references are empty: WER not computed)")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as handle:
            for name, result in zip(cache.utterance_ids, results):
                handle.write(json.dumps({
                    "utterance_id": name, "text": result.text, "score": result.score,
                    "words": [[w.text, round(w.start_time, 3), round(w.end_time, 3)] for w in result.words],
                }) + "\n")
        print(f"hypotheses -> {args.output}")
    return 0

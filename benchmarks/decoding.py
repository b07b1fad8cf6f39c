"""CTC decoding: throughput and WER of greedy vs pyctcdecode vs flashlight-text, with KenLM.

Input is an emissions cache (``hfspeech.decoding.EmissionsCache``, .npz). With ``--real``
it is a fine-tuned model's (``benchmarks/reproduce/run.py`` saves one per model) and
``--lm-dir`` an LM built for that model's vocabulary. Otherwise, when ``--emissions`` does not
exist, the script SIMULATES one (see
``hfspeech.decoding.simulation``): noisy peaky CTC posteriors of held-out Gutenberg
sentences (Jane Austen's *Persuasion*) with acoustically confusable letter substitutions
and weak letters. The LM is a KenLM 4-gram built by ``build_language_model`` from the
other 12 Gutenberg books (Persuasion excluded), so the test sentences are unseen by the LM.
Test (every 3rd sentence) and dev (the sentence after each) sets are disjoint.

Each backend's (alpha, beta) is tuned on the dev set (optuna, seeded, or ``--grid N``;
``--tune-trials 0`` uses --alpha/--beta for both); for flashlight the lexicon lookahead
(``max`` or ``none``, see ``DecoderSpec.lexicon_lookahead``) is tuned on dev with them. On
the test set both beam backends get the same emissions, beam width and pruning threshold; they decode single-process, alternating per utterance
so background load hits both alike. Reported: utterances/s, real-time factor (decode time
/ simulated audio time at 20 ms per frame), WER/CER (also on the utterances whose words are
all in the LM vocabulary: flashlight's lexicon search cannot output other words), and the
speed ratio against pyctcdecode at the same beam.

    .venv/bin/python benchmarks/decoding.py --utterances 200 --dev-utterances 60 --beams 8 32 --tune-trials 12
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

from hfspeech.decoding import (
    DecoderSpec,
    DecodingSpeed,
    EmissionsCache,
    SimulationConfig,
    build_decoder,
    build_language_model,
    error_report,
    load_vocabulary,
    simulate_emissions,
    tune_lm_weights,
)
from hfspeech.decoding.lm_build import BINARY_NAME, iter_sentences

GUTENBERG = Path("/work/shared/data/text/gutenberg")
TEST_BOOK = "austen-persuasion.txt"
# Generated inputs (simulated emissions, the LM) live outside the repository; both are
# reproducible (seeded simulation, deterministic lmplz).
CACHE = Path.home() / ".cache" / "hfspeech" / "decoding-benchmark"


def build_or_load_lm(lm_dir: Path, vocabulary) -> Path:
    if (lm_dir / BINARY_NAME).is_file():
        return lm_dir
    books = sorted(path for path in GUTENBERG.glob("*.txt") if path.name != TEST_BOOK)
    # The books are ASCII except shakespeare-caesar.txt (ISO-8859-1); latin-1 reads both.
    files = build_language_model(books, lm_dir, vocabulary, order=4, keep_arpa=False, encoding="latin-1")
    print(f"built LM: {files.num_unigrams} words from {files.num_words} running words ({len(books)} books)")
    return lm_dir


def persuasion_sentences(vocabulary) -> list[str]:
    sentences = [vocabulary.normalize_text(s)[0] for s in iter_sentences(GUTENBERG / TEST_BOOK, False, "latin-1")]
    return [s for s in sentences if 5 <= len(s.split()) <= 30]


def simulated_cache(path: Path, sentences: list[str], vocabulary, seed: int, name: str) -> EmissionsCache:
    if path.is_file():
        return EmissionsCache.load(path)
    cache = simulate_emissions(sentences, vocabulary, seed=seed, config=SimulationConfig(),
                               utterance_ids=[f"persuasion-{name}-{i:04d}" for i in range(len(sentences))])
    cache.metadata["transcripts"] = f"{TEST_BOOK}, {name} split: {len(sentences)} sentences of 5-30 words"
    cache.save(path)
    return cache


def split_cache(cache: EmissionsCache, parity: int) -> EmissionsCache:
    """Every other *sentence* of ``cache`` (parity 0: the 1st, 3rd, ... distinct reference in order of
    appearance; 1: the 2nd, 4th, ...), with all utterances of it: a sentence spoken by several voices
    never lands on both sides of the dev/test split."""
    rank: dict[str, int] = {}
    for reference in cache.references:
        rank.setdefault(reference, len(rank))
    keep = [i for i, reference in enumerate(cache.references) if rank[reference] % 2 == parity]
    return EmissionsCache([cache.log_probs[i] for i in keep], [cache.references[i] for i in keep],
                          [cache.utterance_ids[i] for i in keep], cache.vocabulary, cache.seconds_per_frame,
                          {**cache.metadata, "subset": f"{'even' if parity == 0 else 'odd'} sentences"})


def lookaheads(backend: str) -> tuple[str, ...]:
    """The lexicon lookahead modes tuned on dev (flashlight only; pyctcdecode has none)."""
    return ("max", "none") if backend == "flashlight" else ("max",)


def grid_search(dev: EmissionsCache, backend: str, points: int, beam: int, base: dict) -> tuple[float, float, str]:
    """Best (alpha, beta, lookahead) on ``dev`` over a points x points grid of alpha in [0, 5], beta in [-5, 5]."""
    import numpy as np

    scored = []
    for lookahead in lookaheads(backend):
        for alpha in np.linspace(0.0, 5.0, points):
            for beta in np.linspace(-5.0, 5.0, points):
                decoder = build_decoder(DecoderSpec(backend=backend, beam_width=beam, alpha=float(alpha),
                                                    beta=float(beta), lexicon_lookahead=lookahead, **base))
                report = error_report(dev.references, [decoder.decode(item).text for item in dev.log_probs])
                scored.append((report.wer, float(alpha), float(beta), lookahead))
    wer, alpha, beta, lookahead = min(scored)
    shown = f" lookahead={lookahead}" if backend == "flashlight" else ""
    print(f"{backend}: grid ({points}x{points}) on dev alpha={alpha:.2f} beta={beta:.2f}{shown} "
          f"(dev WER {100 * wer:.2f}%)", flush=True)
    return alpha, beta, lookahead


def timed_side_by_side(decoders: dict, cache: EmissionsCache) -> dict[str, dict]:
    """Decode every utterance with every decoder, alternating their order per utterance so
    that load from other processes on the machine hits all of them alike."""
    names = list(decoders)
    for decoder in decoders.values():
        decoder.decode(cache.log_probs[0])  # warm-up (lazy allocations, caches)
    seconds = dict.fromkeys(names, 0.0)
    texts: dict[str, list[str]] = {name: [] for name in names}
    for index, log_probs in enumerate(cache.log_probs):
        for name in (names if index % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            result = decoders[name].decode(log_probs)
            seconds[name] += time.perf_counter() - start
            texts[name].append(result.text)
    rows = {}
    for name in names:
        report = error_report(cache.references, texts[name], cache.utterance_ids)
        speed = DecodingSpeed(len(cache), cache.audio_seconds, seconds[name])
        rows[name] = {"decoder": name, "utt_per_s": speed.utterances_per_second, "rtf": speed.real_time_factor,
                      "seconds": seconds[name], "wer": report.wer, "cer": report.cer, "texts": texts[name]}
    return rows


def in_vocabulary_wer(cache: EmissionsCache, texts: list[str], unigrams: set[str]) -> tuple[float, int]:
    keep = [i for i, reference in enumerate(cache.references) if set(reference.split()) <= unigrams]
    report = error_report([cache.references[i] for i in keep], [texts[i] for i in keep])
    return report.wer, len(keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emissions", type=Path, default=CACHE / "persuasion_test_sim.npz",
                        help="test-set emissions cache (simulated and saved here when missing)")
    parser.add_argument("--dev-emissions", type=Path, default=CACHE / "persuasion_dev_sim.npz",
                        help="dev-set emissions cache for tuning alpha/beta (simulated when missing)")
    parser.add_argument("--lm-dir", type=Path, default=CACHE / "gutenberg_4gram")
    parser.add_argument("--real", action="store_true",
                        help="--emissions is a real model's cache and --lm-dir an LM built for its vocabulary; "
                             "odd sentences tune alpha/beta, even ones are the test set")
    parser.add_argument("--utterances", type=int, default=200)
    parser.add_argument("--dev-utterances", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--beams", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--tune-beam", type=int, default=8)
    parser.add_argument("--tune-trials", type=int, default=12, help="0: use --alpha/--beta for both backends")
    parser.add_argument("--grid", type=int, default=0, metavar="N",
                        help="tune alpha/beta by an N x N grid on dev instead of optuna (exhaustive, slower)")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--beam-prune-logp", type=float, default=-10.0)
    parser.add_argument("--token-min-logp", type=float, default=-5.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    if args.real:
        # Real emissions of a fine-tuned model (e.g. runs/reproduce/decode_*/emissions.npz) and an LM
        # built for its vocabulary: even sentences are the test set, odd ones tune alpha/beta.
        cache = EmissionsCache.load(args.emissions)
        vocabulary = cache.vocabulary
        lm_dir = args.lm_dir
        test, dev = split_cache(cache, 0), split_cache(cache, 1)
    else:
        vocabulary = load_vocabulary(None)
        lm_dir = build_or_load_lm(args.lm_dir, vocabulary)
        sentences = persuasion_sentences(vocabulary)
        # Test: every 3rd sentence; dev: the ones right after them (disjoint, both span the book).
        test = simulated_cache(args.emissions, sentences[::3][: args.utterances], vocabulary, args.seed, "test")
        dev = simulated_cache(args.dev_emissions, sentences[1::3][: args.dev_utterances], vocabulary, args.seed + 1,
                              "dev")
    unigrams = set((lm_dir / "unigrams.txt").read_text(encoding="utf-8").split())
    words = [word for reference in test.references for word in reference.split()]
    oov = sum(word not in unigrams for word in words) / len(words)
    print(f"test: {len(test)} utterances, {test.audio_seconds:.1f} s, source={test.metadata.get('source')}; "
          f"OOV rate vs LM unigrams {100 * oov:.2f}%; dev: {len(dev)} utterances")
    base = dict(labels=vocabulary.labels, blank_index=vocabulary.blank_index, beam_prune_logp=args.beam_prune_logp, token_min_logp=args.token_min_logp,
                seconds_per_frame=test.seconds_per_frame, lm_path=str(lm_dir))

    weights = {backend: (args.alpha, args.beta, "max") for backend in ("pyctcdecode", "flashlight")}
    if args.grid:
        for backend in weights:
            weights[backend] = grid_search(dev, backend, args.grid, args.tune_beam, base)
    elif args.tune_trials:
        for backend in weights:
            spec = DecoderSpec(backend=backend, beam_width=args.tune_beam, alpha=args.alpha, beta=args.beta, **base)
            tuned = tune_lm_weights(dev, spec, num_trials=args.tune_trials, seed=args.seed)  # flashlight: both lookaheads
            lookahead = tuned.lexicon_lookahead
            weights[backend] = (tuned.alpha, tuned.beta, lookahead)
            shown = f" lookahead={lookahead}" if backend == "flashlight" else ""
            print(f"{backend}: tuned on dev alpha={tuned.alpha:.3f} beta={tuned.beta:.3f}{shown} "
                  f"(dev WER {100 * tuned.wer:.2f}%, defaults {100 * tuned.default_wer:.2f}%)", flush=True)

    greedy = timed_side_by_side({"greedy": build_decoder(DecoderSpec(vocabulary.labels))}, test)["greedy"]
    rows = [{**greedy, "beam": 1, "weights": "-"}]
    for beam in args.beams:
        decoders = {backend: build_decoder(DecoderSpec(backend=backend, beam_width=beam, alpha=alpha, beta=beta,
                                                       lexicon_lookahead=lookahead, **base))
                    for backend, (alpha, beta, lookahead) in weights.items()}
        results = timed_side_by_side(decoders, test)
        for backend, row in results.items():
            row.update(beam=beam, weights=f"{weights[backend][0]:.2f}/{weights[backend][1]:.2f}"
                       + (f" ({weights[backend][2]})" if backend == "flashlight" else ""))
            row["speedup"] = results["pyctcdecode"]["seconds"] / row["seconds"]
            rows.append(row)
            print({key: value for key, value in row.items() if key != "texts"}, flush=True)

    print(f"\nplatform: {platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"1 process; beam_prune_logp={args.beam_prune_logp} token_min_logp={args.token_min_logp} (pyctcdecode)")
    print("| decoder | beam | alpha/beta | utt/s | RTF | WER % | CER % | WER % in-vocab utts | speed vs pyctcdecode |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        name = row["decoder"] + (" + 4-gram" if row["decoder"] != "greedy" else "")
        in_vocab, count = in_vocabulary_wer(test, row["texts"], unigrams)
        ratio = f"{row['speedup']:.1f}x" if "speedup" in row else "-"
        print(f"| {name} | {row['beam']} | {row['weights']} | {row['utt_per_s']:.1f} | {row['rtf']:.5f} | "
              f"{100 * row['wer']:.2f} | {100 * row['cer']:.2f} | {100 * in_vocab:.2f} (n={count}) | {ratio} |")
    if args.json:
        args.json.write_text(json.dumps([{k: v for k, v in row.items() if k != "texts"} for row in rows], indent=2))


if __name__ == "__main__":
    main()

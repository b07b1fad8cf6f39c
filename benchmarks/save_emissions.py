"""Save a CTC model's emissions on a data source, for `benchmarks/decoding.py --real`.

    .venv/bin/python benchmarks/save_emissions.py MODEL_DIR DATA OUT.npz [--flite-dev N --seed S]
        [--seen-voices --exclude-transcripts runs/demo/corpus/train_transcripts.txt]

With ``--flite-dev N`` DATA is created first: N sentences of the demo's command grammar
spoken by its held-out voice (`hfspeech.demo_corpus`, phone timings included). With
``--seen-voices`` the N sentences are spoken by each of the demo's three training voices
instead (speaker-dependent test: new renderings, and with ``--exclude-transcripts`` only
sentences that are not in that file).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("data")
    parser.add_argument("output", type=Path)
    parser.add_argument("--flite-dev", type=int, default=0, help="synthesise DATA: this many held-out-voice sentences")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--seen-voices", action="store_true",
                        help="with --flite-dev: the training voices speak the sentences, not the held-out voice")
    parser.add_argument("--exclude-transcripts", type=Path, default=None,
                        help="with --flite-dev: never draw a sentence listed in this file (one per line)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from hfspeech.decoding.inference import compute_emissions

    data = args.data
    if args.flite_dev:
        from hfspeech.demo_corpus import DEV_VOICE, TRAIN_VOICES, build_corpus

        exclude = frozenset()
        if args.exclude_transcripts is not None:
            exclude = frozenset(line.strip() for line in args.exclude_transcripts.read_text().splitlines() if line.strip())
        if not (Path(data) / "dev" / "metadata.csv").exists():
            build_corpus(Path(data), train_sentences=1, dev_sentences=args.flite_dev, seed=args.seed,
                         dev_voices=TRAIN_VOICES if args.seen_voices else (DEV_VOICE,), exclude_dev=exclude)
        data = str(Path(data) / "dev")
    cache = compute_emissions(args.model_dir, data, require_transcripts=True)
    cache.save(args.output)
    print(f"{len(cache)} utterances, {cache.audio_seconds:.1f} s -> {args.output}")


if __name__ == "__main__":
    main()

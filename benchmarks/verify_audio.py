"""Cost of verifying audio (`hfspeech data info SOURCE --verify`, `verify_data: true`): seconds of
decoding per hour of audio, with one thread and with every available core.

Times :func:`hfspeech.data.verification.find_bad_audio` alone (the decoding pass) on a source
already listed, best of ``--repeats`` runs.

Usage:
    .venv/bin/python benchmarks/verify_audio.py [--data /work/shared/data/an4/train] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

from hfspeech.data import load_source
from hfspeech.data.verification import available_cores, find_bad_audio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/shared/data/an4/train")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    table = load_source(args.data).with_format(None)  # encoded audio: reading a column decodes nothing
    hours = sum(table["duration"]) / 3600
    print(f"{args.data}: {len(table)} files, {hours:.3f} h")
    for workers in sorted({1, available_cores()}):
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            bad = find_bad_audio(table, args.data, workers)
            times.append(time.perf_counter() - started)
        print(f"{workers} thread(s): {min(times):.2f} s -> {min(times) / hours:.2f} s per hour of audio "
              f"(runs {', '.join(f'{t:.2f}' for t in times)}; {len(bad)} bad)")


if __name__ == "__main__":
    main()

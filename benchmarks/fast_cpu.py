"""The fast CPU backend on and off (``HFSPEECH_FAST_CPU``) in one process: CTC forward + backward time.

One model, one batch, fp32 CPU, dropout as the preset has it (layerdrop and masking off);
steps alternate backend on / off so background load hits both alike. Reports the median
step time of each and their ratio. The allocator setting (`fast_cpu.allocator`) is
process-wide and is not applied here: this measures the compute paths only.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fast_cpu.py --presets tiny base --batch 2 --seconds 4 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from hfspeech.configuration import SpeechEncoderConfig
from hfspeech.modeling.fast_cpu import FAST_CPU_ENV
from hfspeech.modeling.models import SpeechEncoderForCTC


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "base"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per setting (after one warm-up each)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for preset in args.presets:
        config = SpeechEncoderConfig.from_preset(preset, vocab_size=32, layerdrop=0.0, mask_time_prob=0.0,
                                                 apply_spec_augment=False)
        torch.manual_seed(0)
        model = SpeechEncoderForCTC(config).train()
        generator = torch.Generator().manual_seed(0)
        audio = torch.randn(args.batch, int(args.seconds * 16000), generator=generator)
        labels = torch.randint(1, 32, (args.batch, int(args.seconds * 12)), generator=generator)

        def step(switch: str) -> float:
            os.environ[FAST_CPU_ENV] = switch
            model.zero_grad(set_to_none=True)
            began = time.perf_counter()
            model(audio, labels=labels).loss.backward()
            return time.perf_counter() - began

        step("1"), step("0")  # warm-up
        times: dict[str, list[float]] = {"1": [], "0": []}
        for index in range(args.repeats):
            for switch in (("1", "0") if index % 2 == 0 else ("0", "1")):
                times[switch].append(step(switch))
        on, off = statistics.median(times["1"]), statistics.median(times["0"])
        print(json.dumps({"preset": preset, "batch": args.batch, "seconds": args.seconds, "threads": args.threads,
                          "fast_cpu_median_s": on, "plain_median_s": off, "speedup": off / on}), flush=True)
    os.environ.pop(FAST_CPU_ENV, None)


if __name__ == "__main__":
    main()

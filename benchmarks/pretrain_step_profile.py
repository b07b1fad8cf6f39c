"""Where a pretraining step's CPU time goes: the share spent in GEMM and convolution kernels.

Both implementations compute the same matrix products and convolutions (same shapes); the
rest (activations, norms, dropout, the objective, AdamW, oneDNN's layout copies, dispatch) is
where one implementation can be cheaper than the other without faster kernels. If ours spends
G in those kernels, it cannot be faster than ``reference_step / G`` even with everything else
free. This prints, per implementation, the median step CPU time and the profiler's self CPU
time of the GEMM/conv kernels (`aten::mm`, `addmm`, `bmm`, oneDNN's `_linear_pointwise`, which
hfspeech's `Linear` uses for wide fp32 layers, `mkldnn_convolution`, `convolution_backward`)
against the total. It also times the step with the conv feature encoder replaced by its cached
output, which splits the step into the encoder's forward + backward and everything else.

    .venv/bin/python benchmarks/pretrain_step_profile.py --size tiny --steps 15 --profiled 5
    .venv/bin/python benchmarks/pretrain_step_profile.py --size base --warmup 1 --steps 2 --profiled 2

Each implementation runs in its own process (like `pretrain_step.py`), one torch thread, the
allocator setting in both (the like-for-like comparison).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from pretrain_step import apply_allocator_setting, make_step, prepare  # noqa: E402

SHARED_KERNELS = ("aten::mm", "aten::addmm", "aten::bmm", "mkldnn::_linear_pointwise", "aten::mkldnn_convolution",
                  "aten::convolution_backward")


def profile_one(directory: Path, implementation: str, objective: str, args: argparse.Namespace) -> dict:
    from torch.profiler import profile

    apply_allocator_setting(implementation, "both")
    torch.set_num_threads(1)
    step = make_step(directory, implementation, objective, args.batch, args.seconds)
    median_ms = _median_step_cpu_ms(step, args)
    with profile() as profiler:
        for _ in range(args.profiled):
            step()
    self_times = {event.key: event.self_cpu_time_total for event in profiler.key_averages()}
    total = sum(self_times.values())
    shared = {name: self_times.get(name, 0.0) / args.profiled / 1e3 for name in SHARED_KERNELS}
    return {"median_step_cpu_ms": median_ms, "profiled_step_ms": total / args.profiled / 1e3,
            "shared_kernels_ms": shared, "shared_fraction": sum(shared.values()) * args.profiled * 1e3 / total,
            "without_feature_encoder_ms": _step_without_feature_encoder(directory, implementation, objective, args)}


def _step_without_feature_encoder(directory: Path, implementation: str, objective: str,
                                  args: argparse.Namespace) -> float:
    """Median step CPU time (ms) with the conv feature encoder replaced by its cached output.

    The output is computed once and handed out as a fresh leaf that requires grad, so the rest of
    the step (projection, Transformer, objective, backward down to the features, AdamW) runs as
    before; the difference to the full step is the feature encoder's forward + backward.
    """
    if implementation == "hfspeech":
        from hfspeech.modeling.feature_encoder import FeatureEncoder as encoder_class
    elif objective == "wav2vec2":
        from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2FeatureEncoder as encoder_class
    else:
        from transformers.models.hubert.modeling_hubert import HubertFeatureEncoder as encoder_class
    compute, cached = encoder_class.forward, {}

    def cached_forward(self, *inputs, **kwargs):
        if "features" not in cached:
            with torch.no_grad():
                cached["features"] = compute(self, *inputs, **kwargs)
        return cached["features"].clone().requires_grad_()

    encoder_class.forward = cached_forward
    try:
        return _median_step_cpu_ms(make_step(directory, implementation, objective, args.batch, args.seconds), args)
    finally:
        encoder_class.forward = compute


def _median_step_cpu_ms(step, args: argparse.Namespace) -> float:
    """``args.warmup`` untimed steps, then the median CPU time (ms) of ``args.steps`` steps."""
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        began = time.process_time()
        step()
        times.append(time.process_time() - began)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--objective", default="hubert", choices=("hubert", "wav2vec2"))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=15, help="timed steps (median CPU time)")
    parser.add_argument("--profiled", type=int, default=5, help="steps under torch.profiler")
    parser.add_argument("--child", nargs=2, metavar=("DIR", "IMPLEMENTATION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(profile_one(Path(args.child[0]), args.child[1], args.objective, args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        prepare(Path(tmp), args.size)
        results = {}
        for implementation in ("transformers", "hfspeech"):
            command = [sys.executable, __file__, "--child", tmp, implementation, *sys.argv[1:]]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[implementation] = json.loads(output.strip().splitlines()[-1])
    reference, ours = results["transformers"], results["hfspeech"]
    for name, result in results.items():
        kernels = ", ".join(f"{k.split('::')[1]} {v:.1f}" for k, v in result["shared_kernels_ms"].items())
        print(f"{name}: step {result['median_step_cpu_ms']:.1f} ms CPU (profiled {result['profiled_step_ms']:.1f} ms); "
              f"GEMM/conv kernels {result['shared_fraction']:.1%} ({kernels} ms)")
        rest = result["without_feature_encoder_ms"]
        print(f"  without the conv feature encoder (output cached): {rest:.1f} ms, so the encoder's forward + "
              f"backward is {result['median_step_cpu_ms'] - rest:.1f} ms")
    shared_ours = sum(ours["shared_kernels_ms"].values())
    print(f"speed-up now {reference['median_step_cpu_ms'] / ours['median_step_cpu_ms']:.2f}x; bound with every "
          f"non-GEMM/conv op of ours free: {reference['profiled_step_ms'] / shared_ours:.2f}x")
    print(f"GEMM/conv kernels, ours vs reference: {shared_ours:.1f} vs {sum(reference['shared_kernels_ms'].values()):.1f} ms")


if __name__ == "__main__":
    main()

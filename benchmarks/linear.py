"""`hfspeech.modeling.linear.Linear` on the fast CPU backend (oneDNN inner product) vs ``F.linear`` (BLAS sgemm) on the CPU.

For each shape (rows x in -> out): the forward product's rate in GFLOP/s on both backends, and
forward + backward (input and weight gradients) time of the layer, one thread, CPU time.

    .venv/bin/python benchmarks/linear.py
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from hfspeech.modeling.fast_cpu.linear import _inner_product
from hfspeech.modeling.linear import Linear

SHAPES = [(796, 768, 3072), (796, 3072, 768), (796, 768, 768), (796, 32, 32)]  # base FFN / attention, tiny


def cpu_ms(function, repeats: int) -> float:
    function()
    began = time.process_time()
    for _ in range(repeats):
        function()
    return 1e3 * (time.process_time() - began) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print("| rows x in -> out | forward GFLOP/s, MKL (F.linear) | forward GFLOP/s, oneDNN | fwd+bwd ms, F.linear | fwd+bwd ms, Linear | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for rows, inputs, outputs in SHAPES:
        layer = Linear(inputs, outputs)
        x = torch.randn(rows, inputs, requires_grad=True)
        grad = torch.randn(rows, outputs)
        flops = 2 * rows * inputs * outputs
        with torch.no_grad():
            mkl = cpu_ms(lambda: F.linear(x, layer.weight, layer.bias), args.repeats)
            onednn = cpu_ms(lambda: _inner_product(x, layer.weight, layer.bias), args.repeats)

        def step(forward):
            x.grad = None
            layer.zero_grad(set_to_none=True)
            forward(x).backward(grad)

        plain = cpu_ms(lambda: step(lambda t: F.linear(t, layer.weight, layer.bias)), args.repeats)
        ours = cpu_ms(lambda: step(layer), args.repeats)
        print(f"| {rows} x {inputs} -> {outputs} | {flops / mkl / 1e6:.0f} | {flops / onednn / 1e6:.0f} | {plain:.2f} | "
              f"{ours:.2f}{'' if layer._use_onednn(x) else ' (F.linear: narrow)'} | {plain / ours:.2f}x |")


if __name__ == "__main__":
    main()

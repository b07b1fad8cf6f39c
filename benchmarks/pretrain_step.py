"""Pretraining step time and peak memory: hfspeech vs transformers, same weights, batch, fp32 CPU.

wav2vec 2.0: `SpeechEncoderForPreTraining` vs `Wav2Vec2ForPreTraining` (weights converted
with `hfspeech convert`). transformers needs its masks and negatives from NumPy
(`_compute_mask_indices`, `_sample_negative_indices`, as its pretraining example's collator
does for every batch), so that work is inside its timed step; ours draws them in torch
inside `forward`.
HuBERT: ours vs transformers' `HubertModel` + a plain linear head with cross-entropy over
the masked frames (transformers has no HuBERT pretraining), masks from NumPy likewise.

Each (implementation, size) runs in its own process with ``--threads`` torch threads (default 1:
the machine is shared, so one thread per process keeps the two comparable). ``--rounds`` runs
that many process pairs, alternating which implementation goes first; we report the median
step time (forward + backward + optimizer step) over all timed steps of all rounds, in wall
and in process CPU seconds, the median of the processes' peak resident memory, and the minor
page faults per step (glibc returns freed large blocks to the kernel, and touching fresh
pages again costs ~1 us each; this varies from process to process and moves step times).
Our training loops (`hfspeech.training.pretrain_loop`, ``finetune_loop``) switch that off with
`hfspeech.training.acceleration.reuse_freed_memory`; ``--reuse-freed-memory`` says which
processes here call it: ``hfspeech`` (default, as our loops run), ``none`` or ``both`` (the
allocator setting given to transformers' process too, the like-for-like compute comparison).

    .venv/bin/python benchmarks/pretrain_step.py --sizes tiny base --batch 4 --seconds 4 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def _config(size: str, objective: str):
    from hfspeech.configuration import SpeechEncoderConfig

    return SpeechEncoderConfig.from_preset(size, objective=objective, layerdrop=0.0, mask_time_min_masks=2)


def prepare(directory: Path, size: str) -> None:
    """Write the transformers reference checkpoints and their hfspeech conversions."""
    import transformers

    from hfspeech.modeling.convert import config_to_transformers, convert_transformers_checkpoint

    wav2vec2 = config_to_transformers(_config(size, "wav2vec2"))
    wav2vec2.architectures = ["Wav2Vec2ForPreTraining"]
    torch.manual_seed(0)
    transformers.Wav2Vec2ForPreTraining(wav2vec2).save_pretrained(directory / "tf-wav2vec2")
    convert_transformers_checkpoint(directory / "tf-wav2vec2", directory / "hf-wav2vec2")
    hubert = config_to_transformers(_config(size, "hubert"))
    hubert.architectures = ["HubertModel"]
    transformers.HubertModel(hubert).save_pretrained(directory / "tf-hubert")
    from hfspeech.modeling.convert import transformers_to_hfspeech_state_dict
    from hfspeech.modeling.pretraining import SpeechEncoderForPreTraining

    ours = SpeechEncoderForPreTraining(_config(size, "hubert"))
    transformers_state = transformers.HubertModel.from_pretrained(directory / "tf-hubert").state_dict()
    ours.speech_encoder.load_state_dict(transformers_to_hfspeech_state_dict(transformers_state, "hubert", False))
    ours.save_pretrained(directory / "hf-hubert")


def make_step(directory: Path, implementation: str, objective: str, batch: int, seconds: float):
    """One training step (forward + backward + AdamW) of ``implementation`` on a fixed random batch;
    returns ``step()``, which runs it and returns nothing."""
    import numpy as np
    import transformers
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

    import hfspeech  # noqa: F401  (registers classes)
    from hfspeech.modeling.pretraining import SpeechEncoderForPreTraining

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    samples = int(seconds * 16000)
    audio = torch.randn(batch, samples, generator=generator)
    if implementation == "hfspeech":
        model = SpeechEncoderForPreTraining.from_pretrained(directory / f"hf-{objective}")
    elif objective == "wav2vec2":
        model = transformers.Wav2Vec2ForPreTraining.from_pretrained(directory / "tf-wav2vec2")
    else:
        model = transformers.HubertModel.from_pretrained(directory / "tf-hubert")
        model.head = torch.nn.Linear(model.config.hidden_size, 100)
    config = model.config
    frames = (samples - 400) // 320 + 1
    labels = torch.randint(0, 100, (batch, frames), generator=generator)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step() -> None:
        if implementation == "hfspeech":
            extra = {"labels": labels} if objective == "hubert" else {}
            loss = model(audio, generator=generator, **extra).loss
        else:
            mask = _compute_mask_indices((batch, frames), config.mask_time_prob, config.mask_time_length, min_masks=2)
            mask_tensor = torch.from_numpy(mask)
            if objective == "wav2vec2":
                negatives = _sample_negative_indices((batch, frames), config.num_negatives, mask_time_indices=mask)
                loss = model(audio, mask_time_indices=mask_tensor,
                             sampled_negative_indices=torch.from_numpy(negatives.astype(np.int64))).loss
            else:
                hidden = model(audio, mask_time_indices=mask_tensor).last_hidden_state
                loss = torch.nn.functional.cross_entropy(model.head(hidden[mask_tensor]), labels[mask_tensor], reduction="sum")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def apply_allocator_setting(implementation: str, reuse_freed: str) -> None:
    """Call `reuse_freed_memory` in this process if ``reuse_freed`` names it (or is ``both``)."""
    if reuse_freed in (implementation, "both"):
        from hfspeech.training.acceleration import reuse_freed_memory

        if not reuse_freed_memory():
            raise RuntimeError("reuse_freed_memory() did not apply (no glibc, or HFSPEECH_FAST_CPU=0: pass --reuse-freed-memory none).")


def run_one(directory: Path, implementation: str, objective: str, batch: int, seconds: float, repeats: int,
            threads: int, reuse_freed: str = "hfspeech") -> dict:
    apply_allocator_setting(implementation, reuse_freed)
    torch.set_num_threads(threads)
    train_step = make_step(directory, implementation, objective, batch, seconds)

    def step() -> tuple[float, float, int]:
        began, began_cpu = time.perf_counter(), time.process_time()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        train_step()
        return (time.perf_counter() - began, time.process_time() - began_cpu,
                resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)

    step()  # warm-up
    wall, cpu, faults = zip(*[step() for _ in range(repeats)])
    return {"wall_s": list(wall), "cpu_s": list(cpu), "faults": list(faults),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def summarise(runs: list[dict]) -> dict:
    """Medians over every timed step of every process, and over the processes' peak RSS."""
    return {
        "median_s": statistics.median(t for run in runs for t in run["wall_s"]),
        "median_cpu_s": statistics.median(t for run in runs for t in run["cpu_s"]),
        "faults_per_step": statistics.median(f for run in runs for f in run["faults"]),
        "peak_rss_mb": statistics.median(run["peak_rss_mb"] for run in runs),
        "processes": len(runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "base"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per process (after one warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="process pairs per row, alternating the order")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--objectives", nargs="+", default=["wav2vec2", "hubert"])
    parser.add_argument("--reuse-freed-memory", choices=["hfspeech", "none", "both"], default="hfspeech",
                        help="processes that call hfspeech.training.acceleration.reuse_freed_memory (glibc keeps "
                             "freed blocks: no fresh-page faults); our training loops call it")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", nargs=3, metavar=("DIR", "IMPLEMENTATION", "OBJECTIVE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        directory, implementation, objective = args.child
        print(json.dumps(run_one(Path(directory), implementation, objective, args.batch, args.seconds, args.repeats,
                                 args.threads, args.reuse_freed_memory)))
        return
    results = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as directory:
            prepare(Path(directory), size)
            for objective in args.objectives:
                row = {"size": size, "objective": objective, "threads": args.threads, "batch": args.batch,
                       "reuse_freed_memory": args.reuse_freed_memory}
                runs: dict[str, list[dict]] = {"hfspeech": [], "transformers": []}
                for round_index in range(args.rounds):
                    order = ("hfspeech", "transformers") if round_index % 2 == 0 else ("transformers", "hfspeech")
                    for implementation in order:
                        output = subprocess.run(
                            [sys.executable, __file__, "--child", directory, implementation, objective,
                             "--batch", str(args.batch), "--seconds", str(args.seconds), "--repeats",
                             str(args.repeats), "--threads", str(args.threads),
                             "--reuse-freed-memory", args.reuse_freed_memory],
                            capture_output=True, text=True, check=True)
                        runs[implementation].append(json.loads(output.stdout.strip().splitlines()[-1]))
                for implementation, implementation_runs in runs.items():
                    row[implementation] = summarise(implementation_runs)
                row["speedup"] = row["transformers"]["median_s"] / row["hfspeech"]["median_s"]
                row["speedup_cpu"] = row["transformers"]["median_cpu_s"] / row["hfspeech"]["median_cpu_s"]
                row["memory_ratio"] = row["hfspeech"]["peak_rss_mb"] / row["transformers"]["peak_rss_mb"]
                results.append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Pretraining step time and peak memory: hfspeech vs transformers, same weights, batch, fp32 CPU.

wav2vec 2.0: `SpeechEncoderForPreTraining` vs `Wav2Vec2ForPreTraining` (weights converted
with `hfspeech convert`). transformers needs its masks and negatives from NumPy
(`_compute_mask_indices`, `_sample_negative_indices`, as its pretraining example's collator
does for every batch), so that work is inside its timed step; ours draws them in torch
inside `forward`.
HuBERT: ours vs transformers' `HubertModel` + a plain linear head with cross-entropy over
the masked frames (transformers has no HuBERT pretraining), masks from NumPy likewise.

Each (implementation, size) runs in its own process: we report the median step time
(forward + backward + optimizer step) and the process's peak resident memory.

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


def run_one(directory: Path, implementation: str, objective: str, batch: int, seconds: float, repeats: int) -> dict:
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

    def step() -> float:
        began = time.perf_counter()
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
        return time.perf_counter() - began

    step()  # warm-up
    times = [step() for _ in range(repeats)]
    return {"median_s": statistics.median(times), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "base"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", nargs=3, metavar=("DIR", "IMPLEMENTATION", "OBJECTIVE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        directory, implementation, objective = args.child
        print(json.dumps(run_one(Path(directory), implementation, objective, args.batch, args.seconds, args.repeats)))
        return
    results = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as directory:
            prepare(Path(directory), size)
            for objective in ("wav2vec2", "hubert"):
                row = {"size": size, "objective": objective}
                for implementation in ("hfspeech", "transformers"):
                    output = subprocess.run(
                        [sys.executable, __file__, "--child", directory, implementation, objective,
                         "--batch", str(args.batch), "--seconds", str(args.seconds), "--repeats", str(args.repeats)],
                        capture_output=True, text=True, check=True)
                    row[implementation] = json.loads(output.stdout.strip().splitlines()[-1])
                row["speedup"] = row["transformers"]["median_s"] / row["hfspeech"]["median_s"]
                row["memory_ratio"] = row["hfspeech"]["peak_rss_mb"] / row["transformers"]["peak_rss_mb"]
                results.append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

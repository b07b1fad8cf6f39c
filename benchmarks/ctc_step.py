"""Forward+backward time of SpeechEncoderForCTC vs transformers' Wav2Vec2ForCTC, same weights and input.

Both models are built from one random transformers checkpoint converted with
`hfspeech convert`, run in training mode with dropout/layerdrop/masking off (so both do
exactly the same arithmetic), fp32 on CPU. Runs alternate (ours, theirs, ours, ...) so
background load hits both equally; we report medians and the ratio.

    .venv/bin/python benchmarks/ctc_step.py --preset base --batch 2 --seconds 4 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers

from hfspeech.configuration import SpeechEncoderConfig
from hfspeech.modeling.convert import config_to_transformers, convert_transformers_checkpoint
from hfspeech.modeling.models import SpeechEncoderForCTC


def build_models(preset: str, layout_directory: Path):
    config = SpeechEncoderConfig.from_preset(
        preset, vocab_size=32, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        feat_proj_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0, apply_spec_augment=False,
        ctc_loss_reduction="mean",
    )
    reference_config = config_to_transformers(config)
    reference_config.architectures = ["Wav2Vec2ForCTC"]
    torch.manual_seed(0)
    reference = transformers.Wav2Vec2ForCTC(reference_config)
    reference.save_pretrained(layout_directory / "reference")
    convert_transformers_checkpoint(layout_directory / "reference", layout_directory / "ours")
    ours = SpeechEncoderForCTC.from_pretrained(layout_directory / "ours")
    reference.train()
    ours.train()
    return ours, reference


def step(model, audio, labels) -> float:
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    loss = model(audio, labels=labels).loss
    loss.backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        ours, reference = build_models(args.preset, Path(directory))
    generator = torch.Generator().manual_seed(0)
    audio = torch.randn(args.batch, int(args.seconds * 16000), generator=generator)
    labels = torch.randint(1, 32, (args.batch, int(args.seconds * 12)), generator=generator)
    with torch.no_grad():
        difference = (ours(audio).logits - reference(audio).logits).abs().max().item()
    step(ours, audio, labels), step(reference, audio, labels)  # warm-up
    times = {"hfspeech": [], "transformers": []}
    for _ in range(args.repeats):
        times["hfspeech"].append(step(ours, audio, labels))
        times["transformers"].append(step(reference, audio, labels))
    result = {
        "preset": args.preset, "batch": args.batch, "seconds": args.seconds, "repeats": args.repeats,
        "hfspeech_median_s": statistics.median(times["hfspeech"]),
        "transformers_median_s": statistics.median(times["transformers"]),
        "max_abs_logit_difference": difference,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
    }
    result["speedup"] = result["transformers_median_s"] / result["hfspeech_median_s"]
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

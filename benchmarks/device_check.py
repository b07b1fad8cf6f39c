"""The prepared device check: hfspeech vs transformers on one accelerator, in one short run.

    bash benchmarks/device_check.sh [--json OUT.json]     # on a GPU: BASE at fairseq's batch, bf16, SDPA
    bash benchmarks/device_check.sh --smoke               # tiny sizes on the CPU, seconds (the test suite runs it)

Prints one table and writes JSON (``--json``, default ``device_check.json``). Rows:

* pretraining step (forward + backward + AdamW) of BASE wav2vec 2.0 and HuBERT, hfspeech vs
  transformers' `Wav2Vec2ForPreTraining` / `HubertModel` + a linear head and cross-entropy (its
  example's NumPy masks and negatives included), same shapes, on the same random batch of fairseq's size
  (1.4M samples: 6 crops of 14.6 s), bf16 autocast, SDPA attention;
* the CTC fine-tuning step, hfspeech vs `Wav2Vec2ForCTC`, same batch;
* each hfspeech step again under ``torch.compile`` (inductor on a GPU, ``eager`` tracing with
  ``--smoke``; ``--no-compile`` skips them), with the first step's time (compilation) beside it;
* on a GPU, the host synchronisations of one hfspeech forward + backward, counted with
  ``torch.cuda.set_sync_debug_mode("warn")`` (expected: 0 for pretraining, the lengths copy inside
  torch's ``ctc_loss`` for CTC);
* k-means (K=500 on 768-dim frames, torch backend) on the device vs the host CPU;
* greedy and flashlight (no LM) decoding of simulated emissions on the host CPU.

Rows are printed and written to the JSON as they finish, so a run cut short keeps what it measured.
Each step row reports step time (median of the timed steps), audio seconds per second, peak device
memory and MFU: the backbone's analytic FLOPs (conv stack, projection, positional conv,
Transformer; training = 3x forward) per second over the accelerator's dense bf16 peak
(``--peak-tflops``; H100/H200 are recognised: 989). Needs nothing beyond the project's install.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import torch

FULL = {"preset": "base", "batch": 6, "samples": 233_333, "steps": 5, "warmup": 2,
        "kmeans_frames": 200_000, "kmeans_dim": 768, "kmeans_k": 500, "utterances": 200}
SMOKE = {"preset": "tiny", "batch": 2, "samples": 16_000, "steps": 1, "warmup": 1,
         "kmeans_frames": 2_000, "kmeans_dim": 32, "kmeans_k": 8, "utterances": 4}
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16, SXM


def backbone_flops(config, batch: int, samples: int) -> float:
    """Multiply-adds x 2 of one training step (forward x 3) of the backbone for (batch, samples) audio."""
    flops, length, channels = 0.0, samples, 1
    for width, kernel, stride in zip(config.conv_dim, config.conv_kernel, config.conv_stride):
        length = (length - kernel) // stride + 1
        flops += 2 * channels * kernel * width * length
        channels = width
    hidden, frames = config.hidden_size, length
    flops += 2 * channels * hidden * frames  # feature projection
    flops += 2 * hidden * (hidden // config.num_conv_pos_embedding_groups) * config.num_conv_pos_embeddings * frames
    per_layer = 2 * frames * (4 * hidden * hidden + 2 * hidden * config.intermediate_size) + 4 * frames * frames * hidden
    flops += config.num_hidden_layers * per_layer
    return 3 * batch * flops


def _models(kind: str, objective: str, preset: str, device: torch.device):
    """(model, config) of hfspeech or transformers with the same shape (random weights: timing only)."""
    import transformers

    import hfspeech  # noqa: F401 - registers the Auto classes
    from hfspeech.configuration import SpeechEncoderConfig
    from hfspeech.modeling.convert import config_to_transformers
    from hfspeech.modeling.models import SpeechEncoderForCTC
    from hfspeech.modeling.pretraining import SpeechEncoderForPreTraining

    torch.manual_seed(0)
    fields = dict(layerdrop=0.0, mask_time_min_masks=2)
    if objective == "ctc":
        config = SpeechEncoderConfig.from_preset(preset, vocab_size=32, ctc_loss_reduction="mean", **fields)
        ours = SpeechEncoderForCTC(config)
        reference_config = config_to_transformers(config)
        reference_config._attn_implementation = "sdpa"
        reference = transformers.Wav2Vec2ForCTC(reference_config)
    else:
        config = SpeechEncoderConfig.from_preset(preset, objective=objective, **fields)
        ours = SpeechEncoderForPreTraining(config)
        reference_config = config_to_transformers(config)
        reference_config._attn_implementation = "sdpa"
        reference = (transformers.Wav2Vec2ForPreTraining(reference_config) if objective == "wav2vec2"
                     else transformers.HubertModel(reference_config))
        if objective == "hubert":
            reference.head = torch.nn.Linear(config.hidden_size, 100)
    return (ours if kind == "hfspeech" else reference).to(device).train(), config


def step_row(kind: str, objective: str, settings: dict, device: torch.device, dtype: torch.dtype,
             peak_tflops: float | None, compile_backend: str | None = None) -> dict:
    """Time training steps of one implementation (``compile_backend``: hfspeech under torch.compile); returns the row."""
    import numpy as np
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

    model, config = _models(kind, objective, settings["preset"], device)
    batch, samples = settings["batch"], settings["samples"]
    generator = torch.Generator(device=device).manual_seed(0)
    audio = torch.randn(batch, samples, device=device, generator=generator)
    frames = (samples - 400) // 320 + 1
    labels = torch.randint(0, 100, (batch, frames), device=device, generator=generator)
    letters = torch.randint(1, 32, (batch, frames // 4), device=device, generator=generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    if compile_backend is not None:  # as the training loops do: no Generator argument (dynamo cannot trace one)
        model = torch.compile(model, backend=compile_backend)

    def loss():
        if objective == "ctc":
            return model(audio, labels=letters).loss
        if kind == "hfspeech":
            drawn = {} if compile_backend else {"generator": generator}
            return model(audio, **drawn, **({"labels": labels} if objective == "hubert" else {})).loss
        mask = _compute_mask_indices((batch, frames), config.mask_time_prob, config.mask_time_length, min_masks=2)
        mask_tensor = torch.from_numpy(mask).to(device)
        if objective == "wav2vec2":
            negatives = _sample_negative_indices((batch, frames), config.num_negatives, mask_time_indices=mask)
            return model(audio, mask_time_indices=mask_tensor,
                         sampled_negative_indices=torch.from_numpy(negatives.astype(np.int64)).to(device)).loss
        hidden = model(audio, mask_time_indices=mask_tensor).last_hidden_state
        return torch.nn.functional.cross_entropy(model.head(hidden[mask_tensor]).float(), labels[mask_tensor],
                                                 reduction="sum")

    def forward_backward():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            value = loss()
        value.backward()
        return value

    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for index in range(settings["warmup"] + settings["steps"]):
        _synchronize(device)
        began = time.perf_counter()
        value = forward_backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _synchronize(device)
        times.append(time.perf_counter() - began)
    seconds = statistics.median(times[settings["warmup"]:])
    flops = backbone_flops(config, batch, samples)
    syncs = None
    if device.type == "cuda" and kind == "hfspeech":
        syncs = count_host_syncs(forward_backward)
        optimizer.zero_grad(set_to_none=True)
    name = kind if compile_backend is None else f"{kind} compiled ({compile_backend})"
    return {"row": f"{objective} step", "implementation": name, "step_s": seconds, "first_step_s": times[0],
            "host_syncs": syncs,
            "audio_s_per_s": batch * samples / 16000 / seconds,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            "tflops": flops / seconds / 1e12, "mfu": flops / seconds / 1e12 / peak_tflops if peak_tflops else None,
            "loss_finite": bool(torch.isfinite(value.detach().float()))}


def count_host_syncs(run) -> int:
    """Host synchronisations while ``run()`` executes on the GPU (torch's sync debug mode warns on each)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(warning.message).lower() for warning in caught)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def kmeans_rows(settings: dict, device: torch.device) -> list[dict]:
    from hfspeech.labels.kmeans import fit_kmeans

    features = torch.randn(settings["kmeans_frames"], settings["kmeans_dim"], generator=torch.Generator().manual_seed(0))
    rows = []
    for where in dict.fromkeys([device, torch.device("cpu")]):
        data = features.to(where)
        _synchronize(where)
        began = time.perf_counter()
        model = fit_kmeans(data, settings["kmeans_k"], max_iter=10, seed=0)
        _synchronize(where)
        rows.append({"row": "k-means fit", "implementation": f"hfspeech torch on {where.type}",
                     "seconds": time.perf_counter() - began, "clusters": model.num_clusters})
    return rows


def decoding_rows(settings: dict) -> list[dict]:
    from hfspeech.decoding import DecoderSpec, build_decoder, load_vocabulary, simulate_emissions

    vocabulary = load_vocabulary(None)
    words = "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG AND KEEPS RUNNING THROUGH THE FIELD".split()
    texts = [" ".join(words[i % 7: i % 7 + 8]) for i in range(settings["utterances"])]
    cache = simulate_emissions(texts, vocabulary, seed=0)
    rows = []
    for backend in ("greedy", "flashlight"):
        decoder = build_decoder(DecoderSpec(vocabulary.labels, backend, vocabulary.blank_index, beam_width=32))
        began = time.perf_counter()
        decoder.decode_batch(cache.log_probs)
        seconds = time.perf_counter() - began
        rows.append({"row": "decoding (host CPU)", "implementation": f"{backend}, no LM, beam 32",
                     "seconds": seconds, "audio_s_per_s": cache.audio_seconds / seconds})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (seconds): the suite's check")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the accelerator's dense peak for MFU")
    parser.add_argument("--json", type=Path, default=Path("device_check.json"))
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    args = parser.parse_args(argv)
    settings = SMOKE if args.smoke else FULL
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.smoke else "cpu"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = args.peak_tflops or next((value for key, value in PEAK_TFLOPS.items() if key in name), None)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    result = {"device": name, "dtype": args.dtype, "settings": settings, "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "rows": []}
    print(f"device check on {name} ({args.dtype}, {settings['preset']}, batch {settings['batch']} x "
          f"{settings['samples'] / 16000:.1f} s)\n")
    print("| what | implementation | step / run (s) | first step (s) | audio s/s | peak GiB | MFU | host syncs |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|", flush=True)

    def add(row: dict) -> None:  # printed and saved at once: a run cut short keeps what it measured
        result["rows"].append(row)
        args.json.write_text(json.dumps(result, indent=2))
        seconds = row.get("step_s", row.get("seconds"))
        first = f"{row['first_step_s']:.2f}" if "first_step_s" in row else ""
        audio = f"{row['audio_s_per_s']:.0f}" if "audio_s_per_s" in row else ""
        memory = f"{row['peak_memory_gib']:.1f}" if row.get("peak_memory_gib") is not None else ""
        mfu = f"{100 * row['mfu']:.1f} %" if row.get("mfu") is not None else ""
        syncs = "" if row.get("host_syncs") is None else str(row["host_syncs"])
        print(f"| {row['row']} | {row['implementation']} | {seconds:.4f} | {first} | {audio} | {memory} | {mfu} | "
              f"{syncs} |", flush=True)

    backend = "eager" if args.smoke or device.type != "cuda" else "inductor"
    for objective in ("wav2vec2", "hubert", "ctc"):
        for kind in ("hfspeech", "transformers"):
            add(step_row(kind, objective, settings, device, dtype, peak))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for row in kmeans_rows(settings, device) + decoding_rows(settings):
        add(row)
    if not args.no_compile:  # last: compilation takes the longest
        for objective in ("wav2vec2", "hubert", "ctc"):
            add(step_row("hfspeech", objective, settings, device, dtype, peak, compile_backend=backend))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(f"\nJSON -> {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

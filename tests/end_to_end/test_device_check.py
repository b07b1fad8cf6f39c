"""The prepared GPU check (benchmarks/device_check.py) runs on the CPU with --smoke, so it cannot rot,
and its FLOP count (the MFU's numerator) agrees with torch's own FLOP counter."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import torch
from helpers import ROOT
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def _device_check():
    spec = importlib.util.spec_from_file_location("device_check", ROOT / "benchmarks" / "device_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["device_check"] = module
    spec.loader.exec_module(module)
    return module


def test_the_smoke_check_measures_every_row_on_the_cpu(tmp_path, single_thread):
    check = _device_check()
    assert check.main(["--smoke", "--json", str(tmp_path / "check.json")]) == 0
    result = json.loads((tmp_path / "check.json").read_text())
    steps = [row for row in result["rows"] if row["row"].endswith("step")]
    kinds = ("hfspeech", "transformers", "hfspeech compiled (eager)")
    assert sorted((row["row"], row["implementation"]) for row in steps) == sorted(
        (f"{objective} step", kind) for objective in ("wav2vec2", "hubert", "ctc") for kind in kinds)
    assert all(row["loss_finite"] and row["audio_s_per_s"] > 0 and row["tflops"] > 0 for row in steps)
    assert all(row["host_syncs"] is None for row in steps)  # counted on a GPU only
    assert [row["row"] for row in result["rows"][6:9]] == ["k-means fit", "decoding (host CPU)", "decoding (host CPU)"]


def test_the_flop_count_matches_torchs_flop_counter():
    from hfspeech.configuration import SpeechEncoderConfig
    from hfspeech.modeling.models import SpeechEncoderModel

    check = _device_check()
    config = SpeechEncoderConfig.from_preset("tiny", hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                                             num_attention_heads=4, apply_spec_augment=False)
    model = SpeechEncoderModel(config).eval()
    audio = torch.randn(2, 32000)
    # SDPA's math path decomposes attention into the bmm's the counter sees (its fused kernels are not counted)
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(audio)
    forward = check.backbone_flops(config, 2, 32000) / 3
    assert math.isclose(forward, counter.get_total_flops(), rel_tol=0.01), (forward, counter.get_total_flops())

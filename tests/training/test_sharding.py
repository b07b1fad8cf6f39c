"""FSDP2 (`hfspeech.training.sharding`) in 2 real processes (torchrun + gloo on the CPU).

The sharded runs are compared with unsharded ones that see the same global batches
(1 process x 2 accumulation steps, or 2 DDP processes): same losses and parameters, each
rank holding half of every tensor, ``final/`` and checkpoints in the unsharded layout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType

from hfspeech import SpeechEncoderConfig, SpeechEncoderForCTC, SpeechEncoderForPreTraining
from hfspeech.training.sharding import check_sharding, shard_dimension
from helpers import FIXTURES, ROOT
from test_training import _fresh_accelerator, _tiny_run, assert_same_params, load_params, run_script


def sharded_run(output_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_script(output_dir, "--fsdp", *extra, processes=2)


def losses(output_dir: Path) -> list[float]:
    return json.loads((output_dir / "result.json").read_text())["losses"]


def test_two_sharded_processes_hold_half_each_and_train_as_one_process(tmp_path):
    """2 FSDP2 processes x 1 micro-batch == 1 process x 2 accumulation steps; each holds half of every tensor.
    The gradient norm is clipped at 0.05 (below the tiny model's), so the norm of the shards must be the global one."""
    clipped = ("--max-grad-norm", "0.05")
    single = run_script(tmp_path / "single", "--accumulation", "2", "--steps", "3", "--save-steps", "2", *clipped)
    assert single.returncode == 0, single.stderr[-3000:]
    sharded = sharded_run(tmp_path / "sharded", "--steps", "3", "--save-steps", "2", *clipped)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert json.loads((tmp_path / "sharded" / "result.json").read_text())["num_processes"] == 2

    whole = load_params(tmp_path / "single")
    shards = [json.loads((tmp_path / "sharded" / f"shard-{rank}.json").read_text()) for rank in (0, 1)]
    assert shards[0].keys() == shards[1].keys() and shards[0].keys() <= whole.keys()
    for name in shards[0]:
        assert shards[0][name] + shards[1][name] == whole[name].numel(), name
        assert whole[name].numel() == 1 or max(shards[0][name], shards[1][name]) < whole[name].numel(), name  # split
    total = sum(whole[name].numel() for name in shards[0])
    assert all(abs(sum(shard.values()) - total / 2) <= 0.01 * total for shard in shards)

    assert losses(tmp_path / "sharded") == pytest.approx(losses(tmp_path / "single"), rel=1e-6)
    assert_same_params(whole, load_params(tmp_path / "sharded"), atol=2e-5)
    final = SpeechEncoderForPreTraining.from_pretrained(tmp_path / "sharded" / "final").state_dict()
    assert_same_params(final, load_params(tmp_path / "sharded"), atol=0)  # final/ = the gathered weights

    # the checkpoint holds the whole optimizer state, numbered as an unsharded run numbers it
    saved = [torch.load(tmp_path / run / "step-00000002" / "training_state.pt", weights_only=True)["optimizer"]
             for run in ("single", "sharded")]
    assert saved[0]["param_groups"] == saved[1]["param_groups"]
    assert saved[0]["state"].keys() == saved[1]["state"].keys()
    for index, moments in saved[0]["state"].items():
        for key, value in moments.items():
            torch.testing.assert_close(saved[1]["state"][index][key], value, atol=1e-6, rtol=0, msg=f"{index} {key}")


@pytest.mark.slow
def test_a_sharded_run_resumes_exactly_with_or_without_sharding(tmp_path):
    """Killed after the step-2 checkpoint, a sharded run resumes to the uninterrupted run's parameters,
    sharded again or under DDP (the checkpoint is in the unsharded layout)."""
    full = sharded_run(tmp_path / "full", "--steps", "4", "--save-steps", "2")
    assert full.returncode == 0, full.stderr[-3000:]
    crashed = sharded_run(tmp_path / "resumed", "--steps", "4", "--save-steps", "2", "--crash-after-batches", "2")
    assert crashed.returncode != 0 and (tmp_path / "resumed" / "latest").read_text() == "step-00000002"
    shutil.copytree(tmp_path / "resumed", tmp_path / "resumed_ddp")
    resumed = sharded_run(tmp_path / "resumed", "--steps", "4", "--save-steps", "2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_params(load_params(tmp_path / "full"), load_params(tmp_path / "resumed"), atol=0)
    as_ddp = run_script(tmp_path / "resumed_ddp", "--steps", "4", "--save-steps", "2", processes=2)
    assert as_ddp.returncode == 0, as_ddp.stderr[-3000:]
    assert_same_params(load_params(tmp_path / "full"), load_params(tmp_path / "resumed_ddp"), atol=1e-6)


@pytest.mark.slow
def test_sharded_bf16_tracks_a_one_process_bf16_run(tmp_path):
    """bf16 gathers and computes in bf16, reduces and keeps fp32 weights: close to 1 process under bf16 autocast."""
    single = run_script(tmp_path / "single", "--accumulation", "2", "--mixed-precision", "bf16")
    assert single.returncode == 0, single.stderr[-3000:]
    sharded = sharded_run(tmp_path / "sharded", "--mixed-precision", "bf16")
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    params = load_params(tmp_path / "sharded")
    assert all(value.dtype == torch.float32 and torch.isfinite(value).all() for value in params.values())
    assert losses(tmp_path / "sharded") == pytest.approx(losses(tmp_path / "single"), rel=1e-2)
    assert_same_params(load_params(tmp_path / "single"), params, atol=2e-2)


@pytest.mark.slow
def test_a_compiled_sharded_model_trains_as_the_plain_one(tmp_path):
    """torch.compile comes after fully_shard (eager backend here: traces, does not generate kernels)."""
    single = run_script(tmp_path / "single", "--accumulation", "2")
    assert single.returncode == 0, single.stderr[-3000:]
    compiled = sharded_run(tmp_path / "compiled", "--compile-backend", "eager")
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    assert_same_params(load_params(tmp_path / "single"), load_params(tmp_path / "compiled"), atol=2e-5)


@pytest.mark.slow
def test_sharded_finetuning_equals_ddp_finetuning(tmp_path):
    """`recipes/finetune.py` under torchrun: frozen backbone phase, dev WER, best/ and final/, sharded and not."""
    torch.manual_seed(0)
    pretrained = SpeechEncoderForPreTraining(SpeechEncoderConfig.from_preset("tiny", num_pretraining_updates=1))
    pretrained.save_pretrained(tmp_path / "pretrained")
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1", PYTHONPATH=str(ROOT))
    finals = []
    for name, extra in (("ddp", []), ("fsdp", ["fsdp=true"])):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   str(ROOT / "recipes" / "finetune.py"), str(ROOT / "recipes" / "tiny" / "finetune.yaml"),
                   f"model={tmp_path / 'pretrained'}", f"output_dir={tmp_path / name}",
                   f"train_data={FIXTURES / 'an4'}", f"dev_data={FIXTURES / 'an4'}", "max_steps=4",
                   "freeze_transformer_steps=2", "eval_steps=2", "save_steps=2", *extra]
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert (tmp_path / name / "best" / "model.safetensors").exists()
        finals.append(SpeechEncoderForCTC.from_pretrained(tmp_path / name / "final").state_dict())
    assert_same_params(finals[0], finals[1], atol=1e-6)
    start = SpeechEncoderForPreTraining.from_pretrained(tmp_path / "pretrained").state_dict()
    assert max((finals[1][key] - value).abs().max().item() for key, value in start.items() if key in finals[1]) > 1e-5


def test_fsdp_in_one_process_is_refused_naming_the_fix(tmp_path, single_thread):
    with pytest.raises(ValueError, match=r"fsdp: true needs at least 2 processes.*torchrun --nproc_per_node N"):
        _tiny_run(tmp_path, _fresh_accelerator(), max_steps=1, fsdp=True)
    assert not (tmp_path / "final").exists()


@pytest.mark.parametrize("setting, message", [
    ({"mixed_precision": "fp16"}, r"fp16 is not supported.*Use mixed_precision: bf16"),
    ({"layerdrop": 0.1}, r"layerdrop=0.1.*Set layerdrop to 0"),
    ({"distributed_type": DistributedType.FSDP}, r"distributed_type: FSDP.*set fsdp: true in the run config"),
])
def test_what_sharding_cannot_do_is_refused_naming_the_fix(setting, message):
    accelerator = SimpleNamespace(**{"distributed_type": DistributedType.MULTI_CPU, "num_processes": 2,
                                     "mixed_precision": "no", **setting})
    model = SimpleNamespace(config=SimpleNamespace(layerdrop=setting.get("layerdrop", 0.0)))
    with pytest.raises(ValueError, match=message):
        check_sharding(True, accelerator, model)
    if "distributed_type" not in setting:  # the same settings without fsdp are fine
        check_sharding(False, accelerator, model)


def test_averaging_checkpoints_under_fsdp_is_refused(tmp_path):
    from hfspeech.training.arguments import FinetuningArguments
    from hfspeech.training.finetune_loop import run_finetuning

    args = FinetuningArguments(output_dir=str(tmp_path), model="tiny", fsdp=True, average_checkpoints=3)
    with pytest.raises(ValueError, match=r"average_checkpoints=3.*Set average_checkpoints: 0"):
        run_finetuning(args, _fresh_accelerator())


def test_tensors_shorter_than_the_world_are_split_along_their_longest_dimension():
    assert shard_dimension(torch.empty(64, 3), 2).dim == 0
    assert shard_dimension(torch.empty(1, 640, 128), 2).dim == 1  # quantizer codebook
    assert shard_dimension(torch.empty(1, 1, 128), 8).dim == 2  # positional conv weight-norm gain
    assert shard_dimension(torch.empty(4, 16), 8).dim == 1

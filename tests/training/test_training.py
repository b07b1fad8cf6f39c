"""Pretraining loop: multi-process equivalence, exact resume, crash-safe checkpoints, schedules."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hfspeech.training.arguments import PretrainingArguments, parse_arguments
from hfspeech.training.checkpoints import latest_checkpoint
from hfspeech.training.schedules import polynomial_decay_factor, tri_stage_factor
from helpers import FIXTURES, HELPERS

SCRIPT = HELPERS / "pretrain_run.py"


def run_script(output_dir: Path, *extra: str, processes: int = 1) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if processes == 1:
        command = [sys.executable, str(SCRIPT), str(output_dir), *extra]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                   str(SCRIPT), str(output_dir), *extra]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def load_params(output_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(output_dir / "params.pt", weights_only=True)


def assert_same_params(first: dict, second: dict, atol: float) -> None:
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], atol=atol, rtol=0, msg=key)


@pytest.mark.parametrize("objective", ["wav2vec2", "hubert"])
def test_two_processes_equal_one_process_with_accumulation(tmp_path, objective):
    """2 processes x 1 micro-batch == 1 process x 2 accumulation steps (tolerance 2e-5 absolute)."""
    single = run_script(tmp_path / "single", "--accumulation", "2", "--objective", objective)
    assert single.returncode == 0, single.stderr[-3000:]
    double = run_script(tmp_path / "double", "--accumulation", "1", "--objective", objective, processes=2)
    assert double.returncode == 0, double.stderr[-3000:]
    assert json.loads((tmp_path / "double" / "result.json").read_text())["num_processes"] == 2
    assert json.loads((tmp_path / "single" / "result.json").read_text())["num_processes"] == 1
    assert_same_params(load_params(tmp_path / "single"), load_params(tmp_path / "double"), atol=2e-5)
    # and the run changed the model at all (guards against a loop that never steps)
    initial = run_script(tmp_path / "zero", "--steps", "0", "--objective", objective)
    assert initial.returncode == 0, initial.stderr[-3000:]
    moved = max((load_params(tmp_path / "single")[k] - v).abs().max().item()
                for k, v in load_params(tmp_path / "zero").items())
    assert moved > 1e-4


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path):
    full = run_script(tmp_path / "full", "--accumulation", "2", "--steps", "4", "--save-steps", "2")
    assert full.returncode == 0, full.stderr[-3000:]
    # 2 batches per update: crash while reading the 5th batch (update 3), after the step-2 checkpoint
    crashed = run_script(tmp_path / "resumed", "--accumulation", "2", "--steps", "4", "--save-steps", "2",
                         "--crash-after-batches", "4")
    assert crashed.returncode == 3
    assert latest_checkpoint(tmp_path / "resumed").name == "step-00000002"
    resumed = run_script(tmp_path / "resumed", "--accumulation", "2", "--steps", "4", "--save-steps", "2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_params(load_params(tmp_path / "full"), load_params(tmp_path / "resumed"), atol=0)


def test_a_save_killed_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    from hfspeech import SpeechEncoderConfig, SpeechEncoderForPreTraining
    from hfspeech.training import checkpoints

    model = SpeechEncoderForPreTraining(SpeechEncoderConfig.from_preset("tiny"))
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    checkpoints.save_checkpoint(tmp_path, 2, model, optimizer, scheduler, {"epoch": 0}, {"a": 1})

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(checkpoints.torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_checkpoint(tmp_path, 4, model, optimizer, scheduler, {"epoch": 0}, {"a": 1})
    monkeypatch.undo()
    latest = checkpoints.latest_checkpoint(tmp_path)
    assert latest.name == "step-00000002"
    assert not (tmp_path / "step-00000004").exists()
    assert not list(tmp_path.glob(".*partial"))  # the half-written copy is removed
    state = checkpoints.load_training_state(latest, optimizer, scheduler, {"a": 1})
    assert state["step"] == 2
    SpeechEncoderForPreTraining.from_pretrained(latest)  # the model loads


def test_resume_with_a_different_config_is_refused(tmp_path):
    from hfspeech import SpeechEncoderConfig, SpeechEncoderForPreTraining
    from hfspeech.training import checkpoints

    model = SpeechEncoderForPreTraining(SpeechEncoderConfig.from_preset("tiny"))
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    path = checkpoints.save_checkpoint(tmp_path, 1, model, optimizer, scheduler, {}, {"learning_rate": 0.1})
    with pytest.raises(ValueError, match="learning_rate: 0.1 -> 0.2"):
        checkpoints.load_training_state(path, optimizer, scheduler, {"learning_rate": 0.2})


def test_schedules_match_fairseq_shapes():
    assert polynomial_decay_factor(0, 10, 100) == pytest.approx(0.1)
    assert polynomial_decay_factor(9, 10, 100) == pytest.approx(1.0)
    assert polynomial_decay_factor(55, 10, 100) == pytest.approx(0.5)
    assert polynomial_decay_factor(100, 10, 100) == 0.0
    assert tri_stage_factor(0, 100) == pytest.approx(0.01)
    assert tri_stage_factor(10, 100) == 1.0 and tri_stage_factor(49, 100) == 1.0
    assert tri_stage_factor(100, 100) == pytest.approx(0.05)
    assert tri_stage_factor(75, 100) == pytest.approx(0.05**0.5)


def test_config_file_and_overrides(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("output_dir: out\nmax_steps: 100\nlearning_rate: 0.001\n")
    args = parse_arguments(PretrainingArguments, config, ["max_steps=7", "mixed_precision=bf16"])
    assert (args.max_steps, args.learning_rate, args.mixed_precision) == (7, 0.001, "bf16")
    with pytest.raises(ValueError, match=r"Unknown config key\(s\) \['max_step'\].*max_steps"):
        parse_arguments(PretrainingArguments, config, ["max_step=7"])


def test_layerdrop_works_under_two_process_ddp(tmp_path):
    """Skipped layers leave parameters without gradients on one rank; DDP must not hang or fail."""
    result = run_script(tmp_path / "run", "--accumulation", "1", "--layerdrop", "0.5", "--steps", "4", processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "result.json").read_text())["num_processes"] == 2
    params = load_params(tmp_path / "run")
    assert all(torch.isfinite(value).all() for value in params.values())


def _tiny_run(tmp_path, accelerator, max_steps=3, break_call=None, save_steps=1000, model_overrides=None, **arguments):
    from helpers.pretrain_run import global_batches

    from hfspeech import SpeechEncoderConfig, SpeechEncoderForPreTraining
    from hfspeech.training.pretrain_loop import run_pretraining

    torch.manual_seed(0)
    model = SpeechEncoderForPreTraining(SpeechEncoderConfig.from_preset(
        "tiny", **{"mask_time_prob": 0.4, "mask_time_length": 4, "num_negatives": 10, "layerdrop": 0.0,
                   **(model_overrides or {})}))
    if break_call is not None:
        original, calls = model.forward, {"count": 0}

        def forward(*args, **kwargs):
            output = original(*args, **kwargs)
            calls["count"] += 1
            if calls["count"] == break_call:
                output["loss"] = output["loss"] * float("nan")
            return output

        model.forward = forward
    batches = global_batches("wav2vec2")
    args = PretrainingArguments(**{"output_dir": str(tmp_path), "max_steps": max_steps, "learning_rate": 1e-3,
                                   "warmup_ratio": 0.0, "save_steps": save_steps, "seed": 1, **arguments})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = run_pretraining(model, lambda epoch: iter(batches), args, accelerator)
    return model, before, state


def _fresh_accelerator(**kwargs):
    """accelerate keeps one process-wide state; tests that change its settings start it anew."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=True, **kwargs)


def test_non_finite_updates_are_skipped_and_counted(tmp_path, single_thread):
    model, before, state = _tiny_run(tmp_path, _fresh_accelerator(), max_steps=3, break_call=2)
    assert state["skipped_updates"] == 1
    assert all(torch.isfinite(value).all() for value in model.state_dict().values())
    assert any(not torch.equal(value, before[key]) for key, value in model.state_dict().items())


def test_bf16_mixed_precision_trains_on_cpu(tmp_path, single_thread):
    model, before, state = _tiny_run(tmp_path, _fresh_accelerator(mixed_precision="bf16"), max_steps=2)
    assert state["skipped_updates"] == 0 and math.isfinite(state["metrics"]["loss"])
    assert all(value.dtype == before[key].dtype for key, value in model.state_dict().items())  # fp32 master weights
    assert any(not torch.equal(value, before[key]) for key, value in model.state_dict().items())
    _fresh_accelerator()  # leave the default (fp32) state to later tests


def test_resuming_a_run_with_another_config_is_refused_before_anything_loads(tmp_path, single_thread):
    _tiny_run(tmp_path, _fresh_accelerator(), max_steps=1, save_steps=1)
    checkpoint = tmp_path / "step-00000001"
    before = {path.name: path.read_bytes() for path in checkpoint.iterdir()}
    with pytest.raises(ValueError, match=r"different config \(learning_rate: 0.001 -> 0.002\).*new output_dir"):
        _tiny_run(tmp_path, _fresh_accelerator(), max_steps=2, learning_rate=2e-3)
    # another architecture under the same run config: named, not a state-dict size mismatch
    with pytest.raises(ValueError, match=r"model has a different config \(num_hidden_layers: 2 -> 1\)"):
        _tiny_run(tmp_path, _fresh_accelerator(), max_steps=2, model_overrides={"num_hidden_layers": 1})
    assert {path.name: path.read_bytes() for path in checkpoint.iterdir()} == before  # untouched
    _, _, state = _tiny_run(tmp_path, _fresh_accelerator(), max_steps=2)  # the same config still resumes
    assert state["step"] == 2


def test_pretraining_data_without_a_usable_utterance_is_refused(tmp_path):
    from hfspeech import SpeechEncoderConfig
    from hfspeech.training.pretrain_data import build_pretraining_batches

    fixtures = str(FIXTURES / "an4")
    args = PretrainingArguments(output_dir=str(tmp_path), train_data=fixtures, min_sample_seconds=60.0)
    with pytest.raises(ValueError, match=r"an4: no utterance is at least 60.0 s long; lower min_sample_seconds"):
        build_pretraining_batches(args, SpeechEncoderConfig.from_preset("tiny"))
    from hfspeech import SpeechEncoderForPreTraining
    from hfspeech.training.pretrain_loop import run_pretraining

    with pytest.raises(ValueError, match="yields no batch: no usable utterances"):
        run_pretraining(SpeechEncoderForPreTraining(SpeechEncoderConfig.from_preset("tiny")), lambda epoch: iter([]),
                        PretrainingArguments(output_dir=str(tmp_path), max_steps=1), _fresh_accelerator())


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint_and_the_run_resumes(tmp_path, monkeypatch,
                                                                                    single_thread):
    """OSError(ENOSPC) while the 2nd checkpoint is written: a clear error, no partial copy, step 1 loadable,
    and after space is freed the run resumes to the parameters of an uninterrupted run."""
    import errno

    from hfspeech import SpeechEncoderForPreTraining
    from hfspeech.training import checkpoints

    uninterrupted, _, _ = _tiny_run(tmp_path / "full", _fresh_accelerator(), max_steps=3, save_steps=1)
    real_save, calls = torch.save, {"count": 0}

    def save_until_the_disk_fills(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(checkpoints.torch, "save", save_until_the_disk_fills)
    with pytest.raises(OSError, match=r"No space left on the device while writing .*step-00000002.*Free disk space") as info:
        _tiny_run(tmp_path / "run", _fresh_accelerator(), max_steps=3, save_steps=1)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    run = tmp_path / "run"
    assert checkpoints.latest_checkpoint(run).name == "step-00000001"
    assert sorted(path.name for path in run.iterdir() if path.name.startswith((".", "step"))) == ["step-00000001"]
    SpeechEncoderForPreTraining.from_pretrained(run / "step-00000001")
    resumed, _, state = _tiny_run(run, _fresh_accelerator(), max_steps=3, save_steps=1)
    assert state["step"] == 3
    assert_same_params(uninterrupted.state_dict(), resumed.state_dict(), atol=0)


def test_a_full_disk_while_updating_latest_keeps_the_previous_pointer(tmp_path, monkeypatch):
    import errno

    from hfspeech import SpeechEncoderConfig, SpeechEncoderForPreTraining
    from hfspeech.training import checkpoints

    model = SpeechEncoderForPreTraining(SpeechEncoderConfig.from_preset("tiny"))
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    checkpoints.save_checkpoint(tmp_path, 1, model, optimizer, scheduler, {}, {"a": 1})
    real_fsync = os.fsync

    def fsync(descriptor):
        if os.readlink(f"/proc/self/fd/{descriptor}").endswith("latest.tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(descriptor)

    monkeypatch.setattr(checkpoints.os, "fsync", fsync)
    with pytest.raises(OSError, match="No space left on the device while writing .*latest"):
        checkpoints.save_checkpoint(tmp_path, 2, model, optimizer, scheduler, {}, {"a": 1})
    monkeypatch.undo()
    assert (tmp_path / "latest").read_text() == "step-00000001" and not (tmp_path / "latest.tmp").exists()
    assert checkpoints.latest_checkpoint(tmp_path).name == "step-00000001"

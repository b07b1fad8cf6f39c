"""Atomic, resumable training checkpoints.

A checkpoint is a directory ``step-NNNNNNNN`` holding the model (safetensors), the
optimizer, scheduler and (fp16) gradient-scaler states, every RNG state, the data position
and the run's config. It is written to a temporary sibling directory and renamed into place
only when complete, so a run killed while saving, or one whose disk fills up, leaves the
previous checkpoint intact (a failed write removes its partial copy); ``latest`` is a small
text file updated the same way.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

LATEST = "latest"


def rng_states() -> dict[str, Any]:
    """Every global RNG state, as plain Python data and tensors (loadable with weights_only=True)."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (name, keys.tolist(), position, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    python_state = states["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _no_space_error(error: OSError, path: Path) -> OSError:
    return OSError(errno.ENOSPC, f"No space left on the device while writing {path} ({error.strerror}); the "
                   "partial copy was removed and what was there before is intact. Free disk space (or lower "
                   "keep_checkpoints) and run again: the run resumes from the last complete checkpoint.")


def _write_text_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    try:
        with open(temporary, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            raise _no_space_error(error, path) from error
        raise


def write_directory_atomically(directory: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(temporary_directory)`` and move the result to ``directory`` only when it completed.

    The temporary sibling ``.NAME.partial`` is removed when ``write`` fails (disk full,
    interrupt), so ``directory`` either keeps its previous content or gets the new one in
    full. A full disk becomes an OSError(ENOSPC) saying so and what to do.
    """
    temporary = directory.with_name(f".{directory.name}.partial")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        temporary.mkdir(parents=True)
        write(temporary)
        for file in sorted(temporary.rglob("*")):
            if file.is_file():
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
    except BaseException as error:
        shutil.rmtree(temporary, ignore_errors=True)
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            raise _no_space_error(error, directory) from error
        raise
    previous = directory.with_name(f".{directory.name}.old")
    if directory.exists():
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(directory, previous)
    os.replace(temporary, directory)
    shutil.rmtree(previous, ignore_errors=True)
    return directory


def save_checkpoint(
    output_dir: Path, step: int, model, optimizer: torch.optim.Optimizer, scheduler, state: dict[str, Any],
    run_config: dict[str, Any], keep: int = 2, scaler: torch.amp.GradScaler | None = None,
    model_state: dict[str, torch.Tensor] | None = None, optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``output_dir/step-NNNNNNNN`` atomically and point ``latest`` at it.

    ``state`` holds the loop's own counters (data position, skipped steps, ...); it must
    be JSON-serialisable. ``scaler``: the fp16 gradient scaler, if any. ``model_state`` and
    ``optimizer_state``: the whole states to write in place of the live model's and optimizer's
    (a sharded model's, gathered by `sharding.full_states`). Keeps the newest ``keep`` checkpoints.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"

    def write(directory: Path) -> None:
        model.save_pretrained(directory, state_dict=model_state)
        training_state = {"optimizer": optimizer.state_dict() if optimizer_state is None else optimizer_state,
                          "scheduler": scheduler.state_dict(), "rng": rng_states()}
        if scaler is not None:
            training_state["scaler"] = scaler.state_dict()
        torch.save(training_state, directory / "training_state.pt")
        (directory / "trainer_state.json").write_text(json.dumps({"step": step, **state}, indent=2))
        (directory / "run_config.json").write_text(json.dumps(run_config, indent=2, sort_keys=True, default=str))

    final = write_directory_atomically(output_dir / name, write)
    _write_text_atomically(output_dir / LATEST, name)
    checkpoints = sorted(path for path in output_dir.glob("step-*") if path.is_dir())
    for old in checkpoints[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The directory ``latest`` points at, or None when the run has no checkpoint yet."""
    pointer = output_dir / LATEST
    if not pointer.exists():
        return None
    path = output_dir / pointer.read_text().strip()
    if not (path / "training_state.pt").exists():
        raise FileNotFoundError(
            f"{pointer} names {path.name}, which is missing or incomplete; delete {pointer} to start "
            "over or point it at an existing step-* directory."
        )
    return path


IGNORED_CONFIG_KEYS = ("max_steps", "output_dir", "resume", "logging_steps", "save_steps", "keep_checkpoints", "eval_steps",
                       "push_to_hub", "hub_model_id", "torch_compile", "torch_compile_backend", "fsdp",
                       "fsdp_reshard_after_forward")
"""Run-config fields a resumed run may change: how long it runs, where it reports and saves, whether it compiles
or shards (a sharded run writes the same whole states)."""


def check_run_config(path: Path, run_config: dict[str, Any], ignore_keys: tuple[str, ...] = IGNORED_CONFIG_KEYS) -> None:
    """Refuse a checkpoint written by a run with a different config (beyond ``ignore_keys``)."""
    saved_file = path / "run_config.json"
    if not saved_file.exists():
        raise FileNotFoundError(f"{path} has no run_config.json: it is not a checkpoint written by hfspeech training.")
    saved_config = json.loads(saved_file.read_text())
    current = json.loads(json.dumps(run_config, sort_keys=True, default=str))
    differences = sorted(
        key for key in set(saved_config) | set(current)
        if key not in ignore_keys and saved_config.get(key) != current.get(key)
    )
    if differences:
        details = ", ".join(f"{key}: {saved_config.get(key)!r} -> {current.get(key)!r}" for key in differences)
        raise ValueError(
            f"Cannot resume from {path}: it was written with a different config ({details}). "
            "Resume with the same config, or start a new output_dir."
        )


def check_model_config(path: Path, model) -> None:
    """Refuse a checkpoint whose model config (``config.json``) differs from ``model``'s."""
    ignored = {"_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype",
               "num_pretraining_updates"}  # grows as the run goes
    saved = type(model.config).from_json_file(str(path / "config.json")).to_dict()
    current = model.config.to_dict()
    differences = sorted(key for key in set(saved) | set(current)
                         if key not in ignored and saved.get(key) != current.get(key))
    if differences:
        details = ", ".join(f"{key}: {saved.get(key)!r} -> {current.get(key)!r}" for key in differences)
        raise ValueError(f"Cannot resume from {path}: its model has a different config ({details}). "
                         "Resume with the model the run started with, or start a new output_dir.")


def load_training_state(path: Path, optimizer: torch.optim.Optimizer, scheduler, run_config: dict[str, Any],
                        ignore_keys: tuple[str, ...] = IGNORED_CONFIG_KEYS,
                        scaler: torch.amp.GradScaler | None = None) -> dict:
    """Restore optimizer/scheduler/RNG (and fp16 scaler) states from ``path`` and return its trainer state.

    Refuses a checkpoint written by a run with a different config (beyond ``ignore_keys``).
    """
    check_run_config(path, run_config, ignore_keys)
    blob = torch.load(path / "training_state.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    if scaler is not None and "scaler" in blob:
        scaler.load_state_dict(blob["scaler"])
    restore_rng_states(blob["rng"])
    return json.loads((path / "trainer_state.json").read_text())


def load_checkpoint(path: Path, model, optimizer: torch.optim.Optimizer, scheduler, run_config: dict[str, Any],
                    scaler: torch.amp.GradScaler | None = None) -> dict:
    """Resume from ``path``: check run and model configs first, then load weights and training state."""
    from safetensors.torch import load_file

    check_run_config(path, run_config)
    check_model_config(path, model)
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    return load_training_state(path, optimizer, scheduler, run_config, scaler=scaler)

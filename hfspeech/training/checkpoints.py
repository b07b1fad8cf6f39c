"""Atomic, resumable training checkpoints.

A checkpoint is a directory ``step-NNNNNNNN`` holding the model (safetensors), the
optimizer and scheduler states, every RNG state, the data position and the run's config.
It is written to a temporary sibling directory and renamed into place only when complete,
so a run killed while saving leaves the previous checkpoint intact; ``latest`` is a small
text file updated the same way.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
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


def _write_text_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def save_checkpoint(
    output_dir: Path, step: int, model, optimizer: torch.optim.Optimizer, scheduler, state: dict[str, Any],
    run_config: dict[str, Any], keep: int = 2,
) -> Path:
    """Write ``output_dir/step-NNNNNNNN`` atomically and point ``latest`` at it.

    ``state`` holds the loop's own counters (data position, skipped steps, ...); it must
    be JSON-serialisable. Keeps the newest ``keep`` checkpoints.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    final = output_dir / name
    temporary = output_dir / f".{name}.partial"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    model.save_pretrained(temporary)
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_states()},
        temporary / "training_state.pt",
    )
    (temporary / "trainer_state.json").write_text(json.dumps({"step": step, **state}, indent=2))
    (temporary / "run_config.json").write_text(json.dumps(run_config, indent=2, sort_keys=True, default=str))
    for file in temporary.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(temporary, final)
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


def load_training_state(path: Path, optimizer: torch.optim.Optimizer, scheduler, run_config: dict[str, Any],
                        ignore_keys: tuple[str, ...] = ("max_steps", "output_dir", "resume", "logging_steps")) -> dict:
    """Restore optimizer/scheduler/RNG states from ``path`` and return its trainer state.

    Refuses a checkpoint written by a run with a different config (beyond ``ignore_keys``).
    """
    saved_config = json.loads((path / "run_config.json").read_text())
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
    blob = torch.load(path / "training_state.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    restore_rng_states(blob["rng"])
    return json.loads((path / "trainer_state.json").read_text())

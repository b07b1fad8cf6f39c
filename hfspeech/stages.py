"""Cached, resumable stages for long multi-step jobs (`make demo`, the corpus recipes, the
reproduction study).

A stage is a function of its directory that returns a JSON-able result. `Stages.run` stores
the result in ``OUTPUT/<stage>/result.json`` together with the stage's settings; a later run
reuses it when the settings are the same and no stage it depends on ran again. An
interrupted stage has no ``result.json`` and runs again in the same directory, so training
stages continue from their own checkpoints. Before a stage runs, its estimated time is
logged from the rates measured by earlier stages of the same kind (seconds per update).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

RESULT_FILE = "result.json"


def reusable(directory: Path, settings: Any = None, redo: bool = False) -> bool:
    """Whether ``directory/result.json`` exists and was made with ``settings`` (and no redo is asked)."""
    result_file = directory / RESULT_FILE
    if redo or not result_file.exists():
        return False
    return settings is None or json.loads(result_file.read_text()).get("settings") == settings


def run_stage(output: Path, name: str, function: Callable[[Path], dict[str, Any]], settings: Any = None,
              redo: bool = False) -> dict[str, Any]:
    """Run ``function(OUTPUT/name)`` unless its cached result can be reused; record its wall time.

    A cached result made with other settings (or any result, with ``redo``) is not reused: the
    stage directory is cleared and the stage runs again. A directory without a result (an
    interrupted run) is kept, so the stage can resume from what it wrote.
    """
    directory = output / name
    result_file = directory / RESULT_FILE
    if reusable(directory, settings, redo):
        result = json.loads(result_file.read_text())
        result.pop("settings", None)
        logger.info("[%s] reused (delete %s to redo it)", name, directory)
        return result
    if result_file.exists() or (redo and directory.exists()):
        logger.info("[%s] %s; running it again", name,
                    "a stage it depends on was re-run" if redo else "the cached result was made with other settings")
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    logger.info("[%s] running ...", name)
    began, cpu_began = time.perf_counter(), time.process_time()
    result = function(directory)
    result["seconds"] = time.perf_counter() - began
    result["cpu_seconds"] = time.process_time() - cpu_began  # this process, all its threads
    result_file.write_text(json.dumps(result if settings is None else {**result, "settings": settings}, indent=2))
    logger.info("[%s] done in %.0f s (%.0f s of CPU)", name, result["seconds"], result["cpu_seconds"])
    return result


class Stages:
    """Stages of one job under ``output``: results by name, re-runs propagated to dependents.

    Args:
        output: the job's directory.
        fingerprint: settings shared by every stage (e.g. a format version); each stage adds its own.
    """

    def __init__(self, output: str | Path, fingerprint: Any = None) -> None:
        self.output = Path(output)
        self.fingerprint = fingerprint
        self.results: dict[str, dict[str, Any]] = {}
        self.ran: set[str] = set()
        self.rates: dict[str, float] = {}  # kind -> seconds per unit of work, measured in this job

    def settings(self, own: Any = None) -> Any:
        return {"job": self.fingerprint, "stage": own} if own is not None else self.fingerprint

    def will_run(self, name: str, settings: Any = None, after: Iterable[str] = ()) -> bool:
        return not reusable(self.output / name, self.settings(settings), redo=any(d in self.ran for d in after))

    def run(self, name: str, function: Callable[[Path], dict[str, Any]], settings: Any = None,
            after: Iterable[str] = (), work: tuple[str, float] | None = None) -> dict[str, Any]:
        """Run or reuse stage ``name``.

        Args:
            function: ``directory -> result``.
            settings: what the result depends on besides the job fingerprint.
            after: stages whose re-run makes this one run again.
            work: ``(kind, amount)``, e.g. ``("finetune update", 6000)``: logs an estimate from
                the rate of the same kind measured earlier in this job, and measures it.
        """
        after = tuple(after)
        missing = [d for d in after if d not in self.results]
        if missing:
            raise ValueError(f"stage {name!r} runs after {missing}, which have not run in this job yet")
        runs = self.will_run(name, settings, after)
        if runs and work is not None and work[0] in self.rates:
            logger.info("[%s] estimated %.1f min (%g %ss at the rate measured so far)", name,
                        self.rates[work[0]] * work[1] / 60, work[1], work[0])
        result = run_stage(self.output, name, function, self.settings(settings), redo=runs and any(
            d in self.ran for d in after))
        if runs:
            self.ran.add(name)
            if work is not None and work[1] > 0:
                self.rates[work[0]] = result["seconds"] / work[1]
        self.results[name] = result
        return result

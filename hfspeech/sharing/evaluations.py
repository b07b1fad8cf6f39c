"""Evaluation results kept in a model directory (``evaluation/*.json``), written by `hfspeech evaluate --save`.

One file per data set and decoder, so re-evaluating the same pair replaces its result and the model
card lists every pair. A record is the object `hfspeech evaluate --json` prints (WER/CER, error
counts, decoder backend, alpha/beta, speed) plus ``data`` (the DATA argument), ``dataset`` (a Hub
dataset id when DATA names one) and ``date``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

from .contents import EVALUATION_DIRECTORY

HUB_DATASET_PREFIXES = {"librispeech:": "openslr/librispeech_asr"}


def hub_dataset_id(data: str) -> str | None:
    """The Hub dataset id a data spec refers to (``librispeech:clean/test`` -> ``openslr/librispeech_asr``)."""
    for prefix, dataset_id in HUB_DATASET_PREFIXES.items():
        if str(data).startswith(prefix):
            return dataset_id
    return None


def data_display_name(data: str) -> str:
    """A short name for a data spec: the Hub spec itself, or a local path's last component."""
    text = str(data)
    return text if hub_dataset_id(text) else (Path(text).name or text)


def hub_dataset_split(data: str) -> str | None:
    """The split of a Hub data spec (``librispeech:clean/test`` -> ``test``), else None."""
    text = str(data)
    if hub_dataset_id(text) and "/" in text:
        return text.rsplit("/", 1)[1]
    return None


def save_evaluation_result(model_dir: str | Path, data: str, result: dict[str, Any]) -> Path:
    """Write ``result`` (the `evaluate --json` object) to ``model_dir/evaluation/<data>-<decoder>.json``.

    Returns:
        The written file.
    """
    lm = result.get("lm_path") or ""
    key = hashlib.sha1(f"{data}|{result.get('backend')}|{lm}".encode()).hexdigest()[:8]
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in data_display_name(data))[:40] or "data"
    path = Path(model_dir) / EVALUATION_DIRECTORY / f"{name}-{result.get('backend', 'greedy')}-{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**result, "data": str(data), "dataset": hub_dataset_id(data),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    temporary = path.with_name(path.name + ".partial")
    temporary.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)
    return path

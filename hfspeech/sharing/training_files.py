"""Files the training loops add to a model directory so that it is complete on its own.

* ``training_config.json``: the run's arguments (the model card's training summary).
* ``kmeans/``: for HuBERT, the k-means model(s) that produced the training labels, copied from the
  paths recorded in the labels directory's ``labels.json`` (a model can then be pushed with the
  targets it was trained on).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from .contents import KMEANS_DIRECTORY, TRAINING_CONFIG_FILE

logger = logging.getLogger(__name__)


def write_training_config(directory: str | Path, run_config: dict[str, Any]) -> Path:
    """Write ``run_config`` (``dataclasses.asdict(args)``) to ``directory/training_config.json``."""
    path = Path(directory) / TRAINING_CONFIG_FILE
    path.write_text(json.dumps(run_config, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return path


def copy_label_kmeans(labels_dir: str | Path, directory: str | Path) -> list[Path]:
    """Copy the k-means model(s) named in ``labels_dir/labels.json`` into ``directory/kmeans``.

    A single model (``kmeans.json`` + ``centroids.safetensors``) lands in ``kmeans/``; an ensemble
    directory of ``k{K}/`` models keeps its sub-directories. Paths that no longer exist are skipped
    with a warning (the labels were assigned elsewhere).

    Returns:
        The model directories written.
    """
    from hfspeech.labels.assign import LABELS_METADATA
    from hfspeech.labels.kmeans import METADATA_FILE

    metadata_path = Path(labels_dir) / LABELS_METADATA
    if not metadata_path.is_file():
        return []
    sources = [Path(path) for path in json.loads(metadata_path.read_text()).get("kmeans", [])]
    target = Path(directory) / KMEANS_DIRECTORY
    written = []
    for source in sources:
        if (source / METADATA_FILE).is_file():
            models = [(source, target if len(sources) == 1 else target / source.name)]
        elif source.is_dir():
            models = [(sub, target / sub.name) for sub in sorted(source.iterdir()) if (sub / METADATA_FILE).is_file()]
        else:
            logger.warning("k-means %s named in %s does not exist here; the model directory will not include it.",
                           source, metadata_path)
            continue
        for model_source, model_target in models:
            shutil.copytree(model_source, model_target, dirs_exist_ok=True)
            written.append(model_target)
    return written

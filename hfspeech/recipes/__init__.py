"""End-to-end recipes for small real corpora, in cached stages (`hfspeech.stages`).

* `pretraining_pool`: the unlabeled pool (every recording of the data folder except the dev
  speakers of the corpus recipes), MFCC k-means labels, HuBERT iterations 1 and 2 and
  wav2vec 2.0 pretraining, each scored on the held-out dev audio;
* `small_corpus`: a speaker-disjoint split of one labeled corpus, CTC fine-tuning from
  scratch and from the pool's models on fixed-duration label subsets, a 4-gram LM, and dev
  WER greedy and with the LM (alpha/beta tuned on dev).

``recipes/<name>/recipe.yaml`` describes a corpus recipe and ``recipes/pretraining/pool.yaml``
the pool; ``recipes/<name>/run.py`` (or ``hfspeech recipe run recipes/<name>/recipe.yaml``) runs
it. Paths in the YAML files are relative to the repository root; ``${data}`` stands for the
data folder (``--data``, default ``../shared/data``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DEFAULT_DATA = "../shared/data"


def load_recipe_yaml(path: str | Path, data: str | Path = DEFAULT_DATA) -> dict[str, Any]:
    """A recipe YAML as a dict, with every ``${data}`` replaced by ``data``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe file {path} not found")
    text = path.read_text().replace("${data}", str(data))
    loaded = yaml.safe_load(text)
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: a recipe must be a YAML mapping")
    return loaded


def require(config: dict[str, Any], key: str, source: str | Path) -> Any:
    """``config[key]``, or a ValueError naming the file and the missing key."""
    if key not in config:
        raise ValueError(f"{source}: missing key {key!r}")
    return config[key]


def scaled(steps: int, scale: float) -> int:
    """A step count times ``scale`` (at least 1): ``--scale 0.01`` makes a smoke run of a recipe."""
    return max(1, int(round(steps * scale)))

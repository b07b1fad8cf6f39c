"""``key=value`` overrides, one syntax for every verb: the value is read as YAML.

``max_steps=100`` is an int, ``learning_rate=5e-4`` a float (see `hfspeech.training.arguments` for
typed fields), ``speed_perturbation=[0.9,1.0,1.1]`` a list, ``model_overrides={hidden_size: 128}`` a
mapping, ``mask_time_prob=null`` None and anything else a string: the same as in the YAML files.
"""

from __future__ import annotations

from typing import Any

import yaml


def parse_overrides(items: list[str], option: str = "override") -> dict[str, Any]:
    """``["key=value", ...]`` -> ``{key: YAML value}``; the last of repeated keys wins.

    Raises ValueError naming the item that is not ``key=value`` or whose value is not YAML.
    """
    values: dict[str, Any] = {}
    for item in items:
        key, separator, raw = item.partition("=")
        if not separator or not key.strip():
            raise ValueError(f"{option} {item!r} is not of the form key=value.")
        try:
            values[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise ValueError(f"{option} {item!r}: the value is not valid YAML ({error.problem}); quote strings "
                             "with YAML's special characters, e.g. key='a: b'.") from error
    return values

"""Checkpoint averaging: the final model is the parameter mean of the N evaluations with the best dev WER
(or CER: ``metric_for_best_model``).

ESPnet's and Kaldi's small-data recipes average the best few checkpoints (ESPnet:
``--keep_nbest_models`` by validation accuracy); the mean of nearby points of one run sits in
a flatter region than any of them and usually scores better than the best single one.
`BestCheckpoints` keeps the weights of the N best evaluations in ``DIR/update-NNNNNNNN.safetensors``
with ``DIR/index.json`` (so a resumed run goes on with them) and averages them on request.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class BestCheckpoints:
    """The N evaluations of a run with the lowest dev ``metric``, on disk.

    Args:
        directory: where weights and ``index.json`` live (created on first use).
        size: N, how many to keep.
        metric: the name the scores are kept under in ``index.json`` ("wer" or "cer").
    """

    def __init__(self, directory: str | Path, size: int, metric: str = "wer") -> None:
        if size < 1:
            raise ValueError(f"average_checkpoints must be >= 1 to keep checkpoints, got {size}")
        self.directory, self.size, self.metric = Path(directory), size, metric
        index = self.directory / "index.json"
        self.entries: list[dict] = json.loads(index.read_text()) if index.exists() else []
        ranked_by = {key for entry in self.entries for key in entry if key != "update"}
        if ranked_by - {metric}:
            raise ValueError(f"{index}: its checkpoints are ranked by {sorted(ranked_by)}, not {metric!r}; resume with "
                             f"metric_for_best_model: {sorted(ranked_by)[0]}, or delete {self.directory} to rank anew")

    def forget_after(self, update: int) -> None:
        """Drop entries newer than ``update`` (a run resumed from an earlier checkpoint replays them)."""
        for entry in [e for e in self.entries if e["update"] > update]:
            self._remove(entry)
        self._write_index()

    def offer(self, update: int, score: float, model: torch.nn.Module) -> bool:
        """Keep ``model``'s weights at ``update`` if its ``score`` is among the N lowest; True when kept."""
        if len(self.entries) >= self.size and score >= max(e[self.metric] for e in self.entries):
            return False
        self.directory.mkdir(parents=True, exist_ok=True)
        state = {key: value.detach().to("cpu").contiguous() for key, value in model.state_dict().items()}
        save_file(state, str(self._path(update)))
        self.entries.append({"update": update, self.metric: float(score)})
        if len(self.entries) > self.size:  # the worst goes; among equals, the newest
            self._remove(max(self.entries, key=lambda e: (e[self.metric], e["update"])))
        self._write_index()
        return True

    def average_into(self, model: torch.nn.Module) -> list[dict]:
        """Load the mean of the kept weights into ``model``; returns the entries averaged (best first).

        Floating-point tensors are averaged (in float64, then cast back); any other tensor
        (integer buffers) is taken from the best entry.
        """
        if not self.entries:
            raise ValueError(f"{self.directory}: no evaluation was kept, so there is nothing to average; "
                             "give the run dev_data and evaluate at least once (eval_steps <= max_steps)")
        entries = sorted(self.entries, key=lambda e: (e[self.metric], e["update"]))
        states = [load_file(str(self._path(entry["update"]))) for entry in entries]
        averaged = {}
        for key, best in states[0].items():
            if torch.is_floating_point(best):
                averaged[key] = (sum(state[key].double() for state in states) / len(states)).to(best.dtype)
            else:
                averaged[key] = best
        model.load_state_dict(averaged)
        return entries

    def _path(self, update: int) -> Path:
        return self.directory / f"update-{update:08d}.safetensors"

    def _remove(self, entry: dict) -> None:
        self.entries.remove(entry)
        self._path(entry["update"]).unlink(missing_ok=True)

    def _write_index(self) -> None:
        if self.directory.exists():
            (self.directory / "index.json").write_text(json.dumps(self.entries, indent=2))

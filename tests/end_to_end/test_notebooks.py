"""The notebooks execute end to end (small settings) with the project's own Python."""

from __future__ import annotations

import nbformat
from nbclient import NotebookClient

from helpers import ROOT


def test_trainer_finetuning_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("HFSPEECH_NOTEBOOK_OUTPUT", str(tmp_path / "run"))
    monkeypatch.setenv("HFSPEECH_NOTEBOOK_STEPS", "40")
    notebook = nbformat.read(ROOT / "notebooks" / "finetune_ctc_with_trainer.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for output in cell.get("outputs", []))
    assert "dev WER" in outputs and "hypothesis:" in outputs
    losses_line = next(line for line in outputs.splitlines() if line.startswith("training losses:"))
    losses = [float(value) for value in losses_line.split("[")[1].rstrip("]").split(",")]
    assert losses[-1] < losses[0], losses  # the Trainer run learned something
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()

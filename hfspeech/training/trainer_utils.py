"""Pieces for fine-tuning with `transformers.Trainer`: the offline WER metric and `compute_metrics`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np


def load_wer_metric():
    """The jiwer-backed `evaluate` WER metric shipped inside the package (no Hub access needed)."""
    import evaluate

    return evaluate.load(str(Path(__file__).resolve().parents[1] / "metrics" / "wer"))


def make_compute_metrics(processor) -> Callable:
    """``compute_metrics`` for `Trainer`: greedy CTC decoding of the eval logits, then WER and CER.

    Trainer pads logits across batches with -100; those frames decode to nothing because
    their argmax is taken over -100 everywhere (id 0 = blank) and blanks are removed.
    """
    import jiwer

    wer_metric = load_wer_metric()

    def compute_metrics(prediction) -> dict[str, float]:
        logits, label_ids = prediction.predictions, prediction.label_ids
        predicted_ids = np.argmax(logits, axis=-1)
        hypotheses = processor.batch_decode(predicted_ids, skip_special_tokens=True)
        references = processor.tokenizer.batch_decode(
            [[int(i) for i in row if i >= 0] for row in label_ids], group_tokens=False, skip_special_tokens=True)
        return {"wer": wer_metric.compute(predictions=hypotheses, references=references)["wer"],
                "cer": float(jiwer.cer(references, hypotheses))}

    return compute_metrics

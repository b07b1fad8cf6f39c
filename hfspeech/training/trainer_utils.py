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
    """``compute_metrics`` for `Trainer`: the greedy CTC decoding of ``hfspeech evaluate``
    (`GreedyCTCDecoder`) of the eval logits, then WER and CER.

    Trainer pads logits across batches with -100; those frames are uniform after the
    log-softmax, where the blank (with the special tokens folded into it) wins: they decode to nothing.
    """
    import jiwer
    import torch

    from ..decoding import GreedyCTCDecoder

    wer_metric = load_wer_metric()
    decoder = GreedyCTCDecoder.from_tokenizer(processor.tokenizer)

    def compute_metrics(prediction) -> dict[str, float]:
        logits, label_ids = prediction.predictions, prediction.label_ids
        log_probs = torch.log_softmax(torch.as_tensor(np.asarray(logits), dtype=torch.float32), dim=-1)
        hypotheses = [result.text for result in decoder.decode_batch(log_probs)]
        references = processor.tokenizer.batch_decode(
            [[int(i) for i in row if i >= 0] for row in label_ids], group_tokens=False, skip_special_tokens=True)
        return {"wer": wer_metric.compute(predictions=hypotheses, references=references)["wer"],
                "cer": float(jiwer.cer(references, hypotheses))}

    return compute_metrics

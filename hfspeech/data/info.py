"""Summaries of a source: utterances, hours, sample rates, speakers, out-of-vocabulary text."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from tqdm.auto import tqdm

from .skipped import skipped_items
from .text import TextNormalizer

logger = logging.getLogger(__name__)


def summarize_source(dataset: Any, normalizer: TextNormalizer | None = None, limit: int | None = None) -> dict[str, Any]:
    """Describe a dataset from :func:`hfspeech.data.load_source`.

    Map-style datasets are summarised from their columns without decoding audio;
    streaming datasets are iterated (decoding every example), up to ``limit`` examples;
    what a ``skip_bad=True`` stream skipped is logged in one summary at the end.

    Returns:
        ``{"utterances", "hours", "sample_rates": {rate: count}, "speakers",
        "labeled", "out_of_vocabulary": {...}, "affected_utterances", "streamed"}``.
    """
    normalizer = normalizer or TextNormalizer()
    streamed = not hasattr(dataset, "__len__")
    if streamed:
        durations, rates, speakers, texts, ids = [], [], [], [], []
        for index, example in enumerate(tqdm(dataset, desc="reading stream", unit="utt")):
            if limit is not None and index >= limit:
                break
            durations.append(example["duration"])
            rates.append(example["sampling_rate"])
            speakers.append(example["speaker_id"])
            ids.append(example["id"])
            if "text" in example:
                texts.append(example["text"])
        labeled = bool(texts)
        skipped = skipped_items(dataset)
        if skipped is not None:
            skipped.report("end of the stream")
    else:
        columns = dataset.select_columns([c for c in dataset.column_names if c != "audio"])
        durations = columns["duration"]
        rates = columns["sampling_rate"]
        speakers = columns["speaker_id"]
        ids = columns["id"]
        labeled = "text" in dataset.column_names
        texts = columns["text"] if labeled else []
    report = normalizer.report(texts, ids) if labeled else None
    return {
        "utterances": len(durations),
        "hours": sum(durations) / 3600.0,
        "sample_rates": {int(rate): count for rate, count in sorted(Counter(rates).items())},
        "speakers": len(set(speakers)),
        "labeled": labeled,
        "out_of_vocabulary": report.as_dict() if report else {},
        "affected_utterances": report.affected_utterances if report else 0,
        "streamed": streamed,
    }

"""Turn a list of utterance records into the common ``datasets`` schema.

Every source (LibriSpeech local or Hub, audiofolder, plain folder, manifest) ends here.
The Arrow table keeps the *encoded* audio (``audio = {"bytes", "path"}``; local files keep
only the path) plus ``id``, ``speaker_id`` (string), optional ``text``, and, after probing,
``duration`` (seconds) and ``sampling_rate`` (the file's native rate).

The ``audio`` column is decoded on access, not stored decoded:

- map-style ``Dataset``: a format transform (``with_transform``) returns ``audio`` as a
  16 kHz mono ``np.float32`` array of shape ``(S,)``; other columns are untouched, so
  ``dataset["duration"]`` does not decode anything.
- streaming ``IterableDataset``: a ``map`` decodes each example, fills ``duration`` from
  the decoded length and drops (and logs) bad items when ``skip_bad`` is set.
"""

from __future__ import annotations

import logging
from typing import Any

import datasets
from datasets import Dataset, Features, IterableDataset, Value

from .audio import TARGET_SAMPLE_RATE, ConversionLog, SkippedItems, decode_audio, probe_audio

logger = logging.getLogger(__name__)

AUDIO_STRUCT = {"bytes": Value("binary"), "path": Value("string")}


def record_features(labeled: bool, probed: bool) -> Features:
    """Arrow features of the record table (before decoding)."""
    features: dict[str, Any] = {"audio": AUDIO_STRUCT, "id": Value("string"), "speaker_id": Value("string")}
    if labeled:
        features["text"] = Value("string")
    if probed:
        features["duration"] = Value("float64")
        features["sampling_rate"] = Value("int32")
    return Features(features)


class DecodeTransform:
    """Format transform for map-style datasets: decodes the ``audio`` column on access.

    Picklable, so it travels to DataLoader workers.
    """

    def __init__(self, sample_rate: int = TARGET_SAMPLE_RATE) -> None:
        self.sample_rate = sample_rate

    def __eq__(self, other: object) -> bool:
        # equal transforms let ``datasets.concatenate_datasets`` keep decoding the result
        return isinstance(other, DecodeTransform) and other.sample_rate == self.sample_rate

    def __hash__(self) -> int:
        return hash((DecodeTransform, self.sample_rate))

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if "audio" in batch:
            batch = dict(batch)
            batch["audio"] = [decode_audio(entry, self.sample_rate)[0] for entry in batch["audio"]]
        return batch


class StreamingDecoder:
    """Batched ``map`` function for streaming: decode, measure, drop bad items if asked."""

    def __init__(
        self, source: str, skip_bad: bool, skipped: SkippedItems | None = None, sample_rate: int = TARGET_SAMPLE_RATE
    ) -> None:
        self.source = source
        self.skip_bad = skip_bad
        self.skipped = skipped if skipped is not None else SkippedItems()
        self.sample_rate = sample_rate
        self.conversions = ConversionLog(source)

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        columns = list(batch)
        output: dict[str, list] = {name: [] for name in columns}
        output["duration"] = []
        output["sampling_rate"] = []
        for row in range(len(batch["audio"])):
            entry = batch["audio"][row]
            try:
                waveform, native = decode_audio(entry, self.sample_rate)
            except (ValueError, FileNotFoundError) as error:
                if not self.skip_bad:
                    raise
                logger.warning("%s: skipping bad item %s", self.source, error)
                location = entry.get("path") if isinstance(entry, dict) else None
                self.skipped.add(location or str(batch["id"][row]), str(error))
                continue
            self.conversions.observe(native)
            for name in columns:
                output[name].append(waveform if name == "audio" else batch[name][row])
            output["duration"].append(waveform.size / self.sample_rate)
            output["sampling_rate"].append(native.sample_rate)
        return output


class HeaderProber:
    """Batched ``map`` function for map-style datasets: read headers, fill ``duration``."""

    def __init__(self, source: str, skip_bad: bool, skipped: SkippedItems, conversions: ConversionLog) -> None:
        self.source = source
        self.skip_bad = skip_bad
        self.skipped = skipped
        self.conversions = conversions

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        columns = list(batch)
        output: dict[str, list] = {name: [] for name in columns}
        output["duration"] = []
        output["sampling_rate"] = []
        for row, entry in enumerate(batch["audio"]):
            try:
                info = probe_audio(entry)
            except (ValueError, FileNotFoundError) as error:
                if not self.skip_bad:
                    raise
                self.skipped.add(entry.get("path") or batch["id"][row], str(error))
                continue
            self.conversions.observe(info)
            for name in columns:
                output[name].append(batch[name][row])
            output["duration"].append(info.duration)
            output["sampling_rate"].append(info.sample_rate)
        return output


def finalize(
    table: Dataset,
    source: str,
    streaming: bool,
    skip_bad: bool,
    skipped: SkippedItems | None = None,
    num_shards: int = 16,
) -> Dataset | IterableDataset:
    """Probe (map-style) or wire up decoding (streaming) for a record table.

    Args:
        table: rows with ``audio`` = ``{"bytes", "path"}``, ``id``, ``speaker_id`` [, ``text``].
        source: name used in messages.
        streaming: return an ``IterableDataset`` that decodes lazily.
        skip_bad: skip and report unreadable/empty audio instead of raising.
        skipped: ledger that already holds items skipped while listing the source
            (missing transcripts ...); reported at the end together with audio failures.
        num_shards: shards of the streaming dataset (for DataLoader workers / ranks).
    """
    skipped = skipped if skipped is not None else SkippedItems()
    if len(table) == 0:
        skipped.report(source)
        raise ValueError(f"{source}: no utterances found; check the path, split and file extensions")
    if streaming:
        skipped.report(source)
        stream = table.to_iterable_dataset(num_shards=max(1, min(num_shards, len(table))))
        features = record_features("text" in table.column_names, probed=True).copy()
        features["audio"] = datasets.Sequence(Value("float32"))
        return stream.map(
            StreamingDecoder(source, skip_bad, skipped), batched=True, batch_size=8, features=features
        )
    conversions = ConversionLog(source)
    probed = table.map(
        HeaderProber(source, skip_bad, skipped, conversions),
        batched=True,
        batch_size=64,
        features=record_features("text" in table.column_names, probed=True),
        desc=f"reading audio headers of {source}",
        load_from_cache_file=False,
    )
    skipped.report(source)
    if len(probed) == 0:
        raise ValueError(f"{source}: every item was bad ({len(skipped)} skipped); nothing to load")
    logger.info("%s: %d utterances, %.2f h, formats %s", source, len(probed),
                sum(probed["duration"]) / 3600, conversions.summary())
    return probed.with_transform(DecodeTransform())


def table_from_rows(rows: list[dict[str, Any]], labeled: bool) -> Dataset:
    """Build the record table; ``rows`` hold ``path`` or ``bytes``, ``id``, ``speaker_id`` [, ``text``]."""
    columns: dict[str, list] = {
        "audio": [{"bytes": row.get("bytes"), "path": row.get("path")} for row in rows],
        "id": [str(row["id"]) for row in rows],
        "speaker_id": [str(row["speaker_id"]) for row in rows],
    }
    if labeled:
        columns["text"] = [row["text"] for row in rows]
    return Dataset.from_dict(columns, features=record_features(labeled, probed=False))

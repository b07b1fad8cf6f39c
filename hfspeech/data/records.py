"""Turn a list of utterance records into the common ``datasets`` schema.

Every source (LibriSpeech local or Hub, audiofolder, plain folder, manifest) ends here.
The Arrow table keeps the *encoded* audio (``audio = {"bytes", "path"}``; local files keep
only the path) plus ``id``, ``speaker_id`` (string), optional ``text``, and, after probing,
``duration`` (seconds) and ``sampling_rate`` (the file's native rate).

The ``audio`` column is decoded on access, not stored decoded:

- map-style ``Dataset``: a format transform (``with_transform``) returns ``audio`` as a
  16 kHz mono ``np.float32`` array of shape ``(S,)``; other columns are untouched. Reading a
  column through the transform (``dataset["duration"]``) still decodes every row's audio
  (``datasets`` formats whole rows): read columns with :func:`plain_column`, which does not.
- streaming ``IterableDataset``: a ``map`` decodes each example, fills ``duration`` from
  the decoded length and, when ``skip_bad`` is set, skips bad items into the source's
  :class:`~hfspeech.data.skipped.SkippedItems` report (summarised at the end of each pass).
"""

from __future__ import annotations

import logging
from typing import Any

import datasets
from datasets import Dataset, Features, IterableDataset, Value

from .audio import TARGET_SAMPLE_RATE, ConversionLog, decode_audio, probe_audio
from .skipped import SkippedItems

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


SKIP_HINT = "(or pass skip_bad=True / --skip-bad to skip bad items and report them at the end)"


def _reason(error: Exception, location: str) -> str:
    """The error message without the leading ``location: `` (the report shows the location)."""
    return str(error).removeprefix(f"{location}: ")


def _text_problem(batch: dict[str, list], row: int) -> str | None:
    """A labeled row whose transcript is missing/empty (Hub shards are not checked while listing)."""
    if "text" in batch and not (batch["text"][row] or "").strip():
        return f"empty transcript for utterance {batch['id'][row]}; fill it in or remove the utterance"
    return None


class DecodeTransform:
    """Format transform for map-style datasets: decodes the ``audio`` column on access.

    Picklable, so it travels to DataLoader workers. Holds the source's :class:`SkippedItems`
    report (``skipped``) so :func:`hfspeech.data.skipped_items` finds it after ``select`` etc.
    A file that fails to decode raises ``ValueError`` naming it; without ``skip_bad`` the
    message suggests ``skip_bad=True``, with it (every file decoded at load) the file changed.
    """

    def __init__(
        self, sample_rate: int = TARGET_SAMPLE_RATE, skip_bad: bool = False, skipped: SkippedItems | None = None
    ) -> None:
        self.sample_rate = sample_rate
        self.skip_bad = skip_bad
        self.skipped = skipped if skipped is not None else SkippedItems()

    def __eq__(self, other: object) -> bool:
        # equal transforms let ``datasets.concatenate_datasets`` keep decoding the result
        return isinstance(other, DecodeTransform) and other.sample_rate == self.sample_rate

    def __hash__(self) -> int:
        return hash((DecodeTransform, self.sample_rate))

    def _decode(self, entry: dict[str, Any]):
        try:
            return decode_audio(entry, self.sample_rate)[0]
        except (ValueError, FileNotFoundError) as error:
            hint = ("it decoded when the source was loaded with skip_bad=True, so the file changed since; "
                    "reload the source") if self.skip_bad else SKIP_HINT
            raise type(error)(f"{error} {hint}") from error

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if "audio" in batch:
            batch = dict(batch)
            batch["audio"] = [self._decode(entry) for entry in batch["audio"]]
        return batch


class StreamingDecoder:
    """Batched ``map`` function for streaming: decode, measure, skip bad items if asked.

    Skipped items go to ``skipped``; the first skip is logged when it happens, the whole
    report at the end of the pass (by whoever knows where the pass ends: the batcher,
    ``summarize_source``, ``SkippedItems.reporting``).
    """

    def __init__(
        self, source: str, skip_bad: bool, skipped: SkippedItems | None = None, sample_rate: int = TARGET_SAMPLE_RATE
    ) -> None:
        self.source = source
        self.skip_bad = skip_bad
        self.skipped = skipped if skipped is not None else SkippedItems()
        self.sample_rate = sample_rate
        self.conversions = ConversionLog(source)
        self._warned = False

    def _skip(self, location: str, reason: str) -> None:
        self.skipped.add(location, reason)
        if not self._warned:
            self._warned = True
            logger.warning("%s: skipping bad item %s: %s (skip_bad=True; every skipped item is reported in one "
                           "summary at the end of the pass and listed by hfspeech.data.skipped_items(dataset))",
                           self.source, location, reason)

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        columns = list(batch)
        output: dict[str, list] = {name: [] for name in columns}
        output["duration"] = []
        output["sampling_rate"] = []
        for row in range(len(batch["audio"])):
            entry = batch["audio"][row]
            location = (entry.get("path") if isinstance(entry, dict) else None) or str(batch["id"][row])
            problem = _text_problem(batch, row)
            if problem is not None:
                if not self.skip_bad:
                    raise ValueError(f"{self.source}: {location}: {problem} {SKIP_HINT}")
                self._skip(location, problem)
                continue
            try:
                waveform, native = decode_audio(entry, self.sample_rate)
            except (ValueError, FileNotFoundError) as error:
                if not self.skip_bad:
                    raise type(error)(f"{error} {SKIP_HINT}") from error
                self._skip(location, _reason(error, location))
                continue
            self.conversions.observe(native, location)
            for name in columns:
                output[name].append(waveform if name == "audio" else batch[name][row])
            output["duration"].append(waveform.size / self.sample_rate)
            output["sampling_rate"].append(native.sample_rate)
        return output


class HeaderProber:
    """Batched ``map`` function for map-style datasets: read headers, fill ``duration``.

    With ``skip_bad`` the files that fail to decode were already left out by :func:`finalize`
    (:func:`~hfspeech.data.verification.find_bad_audio`); header and transcript problems of the
    others are skipped and reported here.
    """

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
            location = entry.get("path") or str(batch["id"][row])
            problem = _text_problem(batch, row)
            if problem is not None:
                if not self.skip_bad:
                    raise ValueError(f"{self.source}: {location}: {problem} {SKIP_HINT}")
                self.skipped.add(location, problem)
                continue
            try:
                info = probe_audio(entry)
            except (ValueError, FileNotFoundError) as error:
                if not self.skip_bad:
                    raise type(error)(f"{error} {SKIP_HINT}") from error
                self.skipped.add(location, _reason(error, location))
                continue
            self.conversions.observe(info, location)
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
        skip_bad: skip and report bad audio instead of raising. Map-style: every file is
            decoded once while loading, in parallel on every available core
            (:func:`~hfspeech.data.verification.find_bad_audio`: finds corrupt data behind a
            valid header; costs one decoding pass, so for very large corpora prefer
            ``streaming=True``, which skips bad audio as it decodes).
        skipped: report that already holds items skipped while listing the source
            (missing transcripts ...); audio failures are added to it.
        num_shards: shards of the streaming dataset (for DataLoader workers / ranks).
    """
    skipped = skipped if skipped is not None else SkippedItems()
    if len(table) == 0:
        skipped.report(source)
        raise ValueError(f"{source}: no utterances found; check the path, split and file extensions")
    if streaming:
        skipped.report(f"{source} (while listing; bad audio is reported at the end of each pass)")
        stream = table.to_iterable_dataset(num_shards=max(1, min(num_shards, len(table))))
        features = record_features("text" in table.column_names, probed=True).copy()
        features["audio"] = datasets.Sequence(Value("float32"))
        return stream.map(
            StreamingDecoder(source, skip_bad, skipped), batched=True, batch_size=8, features=features
        )
    conversions = ConversionLog(source)
    if skip_bad:
        from .verification import find_bad_audio

        bad = find_bad_audio(table, source)
        for _, item in bad:
            skipped.add(item.location, item.reason)
        if bad:
            rows = {row for row, _ in bad}
            table = table.select([row for row in range(len(table)) if row not in rows])
    action = "reading audio headers"
    probed = table.map(
        HeaderProber(source, skip_bad, skipped, conversions),
        batched=True,
        batch_size=64,
        features=record_features("text" in table.column_names, probed=True),
        desc=f"{action} of {source}",
        load_from_cache_file=False,
    )
    skipped.report(source)
    if len(probed) == 0:
        raise ValueError(f"{source}: every item was bad ({len(skipped)} skipped); nothing to load")
    logger.info("%s: %d utterances, %.2f h, formats %s", source, len(probed),
                sum(probed["duration"]) / 3600, conversions.summary())
    return probed.with_transform(DecodeTransform(skip_bad=skip_bad, skipped=skipped))


def plain_column(dataset: Any, name: str) -> list:
    """Column ``name`` of ``dataset`` as stored, without decoding any audio.

    ``dataset[name]`` on a source from :func:`finalize` runs the decoding transform over every
    row (a full decode of the corpus to read its durations); ``with_format(None)`` reads the
    Arrow column alone. Anything without ``with_format`` (a list of dicts' dataset, a pandas
    frame) is indexed as it is.
    """
    if hasattr(dataset, "with_format"):
        return list(dataset.with_format(None)[name])
    return list(dataset[name])


def concatenate_decoded(parts: list[Dataset]) -> Dataset:
    """``datasets.concatenate_datasets`` for sources from :func:`finalize`, still decoding on access.

    ``datasets`` keeps a format transform only when every part has the same format *and
    columns*; an unlabeled source next to a labeled one (no ``text`` column) would come back
    with undecoded ``{"bytes", "path"}`` audio. The shared decoding transform is re-attached.
    """
    combined = datasets.concatenate_datasets(parts)
    transforms = [(part.format.get("format_kwargs") or {}).get("transform") for part in parts]
    if combined.format.get("type") is None and transforms and all(isinstance(t, DecodeTransform) for t in transforms) \
            and all(t == transforms[0] for t in transforms):
        combined = combined.with_transform(transforms[0])
    return combined


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

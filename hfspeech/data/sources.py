"""`load_source`: one entry point for every kind of speech data.

Columns of the result: ``audio`` (16 kHz mono ``np.float32`` array, shape ``(S,)``,
decoded on access), ``text`` (absent for unlabeled sources), ``id`` (string),
``speaker_id`` (string), ``duration`` (seconds) and ``sampling_rate`` (the native rate
of the file before resampling).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from datasets import Dataset, IterableDataset

from .folders import load_audio_directory, load_audiofolder
from .librispeech import (
    LIBRILIGHT_SUBSETS,
    is_librilight_dir,
    is_librispeech_dir,
    load_librilight_limited,
    load_librispeech_hub,
    load_librispeech_local,
    parse_hub_spec,
)
from .manifests import load_manifest

logger = logging.getLogger(__name__)

HUB_PREFIX = "librispeech:"


def detect_source_kind(spec: str) -> str:
    """Name the kind of ``spec``: ``hub``, ``parquet`` (a directory of parquet shards in the Hub schema),
    ``librilight``, ``librispeech``, ``audiofolder``, ``manifest`` or ``directory``.

    Raises:
        FileNotFoundError: ``spec`` is neither a Hub spec nor an existing path.
        ValueError: an existing file that is not a ``.tsv``/``.csv`` manifest.
    """
    if spec.startswith(HUB_PREFIX):
        return "hub"
    path = Path(spec)
    if path.is_file():
        if path.suffix.lower() in (".tsv", ".csv"):
            return "manifest"
        raise ValueError(f"{spec}: a file source must be a .tsv or .csv manifest with a 'path' column")
    if not path.is_dir():
        raise FileNotFoundError(f"{spec}: no such file or directory (or use librispeech:CONFIG/SPLIT for the Hub)")
    if is_librilight_dir(path):
        return "librilight"
    if (path / "metadata.csv").is_file():
        return "audiofolder"
    if parquet_shards(path):
        return "parquet"
    if is_librispeech_dir(path):
        return "librispeech"
    return "directory"


def parquet_shards(directory: Path) -> list[str]:
    """The ``*.parquet`` files under ``directory`` (a local mirror of ``openslr/librispeech_asr``), sorted."""
    return sorted(str(shard) for shard in directory.rglob("*.parquet"))


def load_source(
    spec: str,
    split: str | None = None,
    streaming: bool = False,
    skip_bad: bool = False,
    **kwargs: Any,
) -> Dataset | IterableDataset:
    """Load speech data from ``spec`` into the common schema.

    Args:
        spec: ``librispeech:CONFIG/SPLIT`` (Hub ``openslr/librispeech_asr``) or a path:
            a directory of parquet shards in that Hub schema (a local mirror), a LibriSpeech native directory, a Libri-light ``librispeech_finetuning``
            directory, an ``audiofolder`` directory (``metadata.csv``), a plain directory
            of audio files, or a ``.tsv``/``.csv`` manifest.
        split: LibriSpeech split folder (``train-clean-100`` or ``train.clean.100``) or
            Libri-light subset (``10min``, ``1h``, ``10h``); must be None for other kinds
            (the Hub spec carries its own split).
        streaming: return an ``IterableDataset`` decoding lazily (Hub: streams shards).
        skip_bad: skip unreadable, corrupt or empty audio and transcript mismatches instead
            of raising, and report every skipped item in one summary at the end. Map-style:
            every file is decoded once while loading (so corrupt data behind a valid header is
            found now, not at training time) and the summary is logged when loading ends.
            Streaming: bad audio is skipped as it is decoded; the summary is logged at the end
            of each pass by ``StreamingBucketBatcher`` / ``summarize_source``. Without
            ``skip_bad``, the first bad item raises ``ValueError``/``FileNotFoundError``
            naming the file (map-style audio: when it is read).
        **kwargs: passed to the kind's loader (``file_list=`` for LibriSpeech,
            ``data_files=`` for a local mirror of the Hub parquet shards, and for every kind
            ``skipped=SkippedItems()`` to collect what ``skip_bad`` skipped; otherwise
            :func:`hfspeech.data.skipped_items` finds the report the dataset fills; streaming
            fills it while iterating, in the process that decodes).

    Returns:
        ``datasets.Dataset`` (map-style) or ``datasets.IterableDataset`` (streaming).
    """
    kind = detect_source_kind(spec)
    logger.debug("%s: detected source kind %s", spec, kind)
    if kind == "hub":
        if split is not None:
            raise ValueError(f"{spec!r}: the Hub spec already names the split; drop split={split!r}")
        config, hub_split = parse_hub_spec(spec)
        return load_librispeech_hub(config, hub_split, streaming=streaming, skip_bad=skip_bad, **kwargs)
    if kind == "parquet":
        if split is not None:
            raise ValueError(f"{spec}: a directory of parquet shards is one split; drop split={split!r}")
        return load_librispeech_hub("local", Path(spec).name, streaming=streaming, skip_bad=skip_bad,
                                    data_files=parquet_shards(Path(spec)), **kwargs)
    if kind == "librispeech":
        return load_librispeech_local(spec, split=split, streaming=streaming, skip_bad=skip_bad, **kwargs)
    if kind == "librilight":
        if split is None:
            raise ValueError(f"{spec}: a Libri-light directory needs split= one of {list(LIBRILIGHT_SUBSETS)}")
        return load_librilight_limited(spec, subset=split, streaming=streaming, skip_bad=skip_bad, **kwargs)
    if split is not None:
        raise ValueError(f"{spec}: split={split!r} only applies to LibriSpeech/Libri-light sources ({kind} found)")
    loader = {"audiofolder": load_audiofolder, "manifest": load_manifest, "directory": load_audio_directory}[kind]
    return loader(spec, streaming=streaming, skip_bad=skip_bad, **kwargs)

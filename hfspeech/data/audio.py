"""Audio probing, decoding, resampling and down-mixing.

Every source in :mod:`hfspeech.data` decodes through :func:`decode_audio`, which uses
torchcodec (FFmpeg) to return a 16 kHz mono float32 waveform of shape ``(S,)``. A source
at another rate or with several channels is resampled / down-mixed by FFmpeg; this is
reported once per source (:class:`ConversionLog`), never per file.

Unreadable, corrupt or empty files raise ``ValueError`` naming the file; callers that skip
bad items record them in a :class:`~hfspeech.data.skipped.SkippedItems` report instead.
"""

from __future__ import annotations

import io
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .skipped import BadItem, SkippedItems  # noqa: F401 - re-exported, part of the data API

logger = logging.getLogger(__name__)

TARGET_SAMPLE_RATE = 16_000
#: Decoded and header lengths may differ by rounding after resampling; more means a truncated file.
LENGTH_TOLERANCE_SECONDS = 0.01
AUDIO_EXTENSIONS = (".flac", ".wav", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".webm", ".sph")

AudioSource = str | bytes | dict[str, Any]


@dataclass(frozen=True)
class AudioInfo:
    """Header facts about one audio file, before any conversion."""

    sample_rate: int
    num_channels: int
    num_frames: int

    @property
    def duration(self) -> float:
        """Duration in seconds at the native rate."""
        return self.num_frames / self.sample_rate


def _location(source: AudioSource) -> str:
    if isinstance(source, str):
        return source
    if isinstance(source, dict):
        return str(source.get("path") or "<in-memory audio>")
    return "<in-memory audio>"


def _payload(source: AudioSource) -> str | bytes:
    """Return what torchcodec/soundfile should open: a path or the encoded bytes."""
    if isinstance(source, dict):
        if source.get("bytes") is not None:  # b"" is an empty file, not a missing one
            return source["bytes"]
        if source.get("path"):
            return source["path"]
        raise ValueError(f"audio entry {source!r} has neither 'bytes' nor 'path'")
    return source


def probe_audio(source: AudioSource) -> AudioInfo:
    """Read the header of ``source`` (path, encoded bytes or ``{"bytes", "path"}``).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is empty, unreadable, or holds no samples.
    """
    location = _location(source)
    payload = _payload(source)
    if isinstance(payload, str):
        if not os.path.isfile(payload):
            raise FileNotFoundError(f"{location}: audio file not found; check the path")
        if os.path.getsize(payload) == 0:
            raise ValueError(f"{location}: audio file is empty (0 bytes); remove it or re-export it")
    elif len(payload) == 0:
        raise ValueError(f"{location}: audio bytes are empty")
    info = _probe_soundfile(payload) or _probe_torchcodec(payload, location)
    if info.num_frames <= 0:
        raise ValueError(f"{location}: audio file holds no samples; remove it or re-export it")
    return info


def _probe_soundfile(payload: str | bytes) -> AudioInfo | None:
    import soundfile

    try:
        handle = soundfile.info(payload if isinstance(payload, str) else io.BytesIO(payload))
    except Exception:  # noqa: BLE001 - fall back to FFmpeg, which reads more formats
        return None
    return AudioInfo(int(handle.samplerate), int(handle.channels), int(handle.frames))


def _probe_torchcodec(payload: str | bytes, location: str) -> AudioInfo:
    from torchcodec.decoders import AudioDecoder

    try:
        metadata = AudioDecoder(payload).metadata
    except Exception as error:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"{location}: cannot read audio header ({error}); the file is corrupt or not audio") from error
    duration = metadata.duration_seconds_from_header or metadata.duration_seconds or 0.0
    if metadata.sample_rate is None:
        raise ValueError(f"{location}: audio header has no sample rate; the file is corrupt")
    return AudioInfo(int(metadata.sample_rate), int(metadata.num_channels or 1), int(round(duration * metadata.sample_rate)))


def decode_audio(source: AudioSource, sample_rate: int = TARGET_SAMPLE_RATE) -> tuple[np.ndarray, AudioInfo]:
    """Decode ``source`` to a mono float32 waveform at ``sample_rate``.

    Returns:
        ``(waveform, native_info)``: waveform of shape ``(S,)``, float32 in [-1, 1];
        ``native_info`` describes the file before resampling / down-mixing.

    Raises:
        FileNotFoundError / ValueError naming the file when it cannot be decoded or is empty.
    """
    from torchcodec.decoders import AudioDecoder

    location = _location(source)
    payload = _payload(source)
    if isinstance(payload, str) and not os.path.isfile(payload):
        raise FileNotFoundError(f"{location}: audio file not found; check the path")
    if (isinstance(payload, str) and os.path.getsize(payload) == 0) or (isinstance(payload, bytes) and not payload):
        raise ValueError(f"{location}: audio file is empty (0 bytes); remove it or re-export it")
    native = _decode_soundfile(payload, sample_rate)
    if native is not None:  # 16 kHz mono FLAC/WAV: libsndfile decodes it ~1.5x faster than FFmpeg, same samples
        return native
    try:
        decoder = AudioDecoder(payload, sample_rate=sample_rate, num_channels=1)
        metadata = decoder.metadata
        samples = decoder.get_all_samples()
    except Exception as error:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"{location}: cannot decode audio ({error}); the file is corrupt or not audio") from error
    waveform = samples.data[0].numpy().astype(np.float32, copy=False)
    if waveform.size == 0:
        raise ValueError(f"{location}: audio decodes to 0 samples; remove it or re-export it")
    native = AudioInfo(
        int(metadata.sample_rate or sample_rate),
        int(metadata.num_channels or 1),
        int(round(waveform.size * (metadata.sample_rate or sample_rate) / sample_rate)),
    )
    return waveform, native


def _decode_soundfile(payload: str | bytes, sample_rate: int) -> tuple[np.ndarray, AudioInfo] | None:
    """Decode with soundfile when the file is already mono at ``sample_rate``; None to leave it to FFmpeg."""
    import soundfile

    try:
        with soundfile.SoundFile(payload if isinstance(payload, str) else io.BytesIO(payload)) as handle:
            if handle.samplerate != sample_rate or handle.channels != 1:
                return None
            waveform = handle.read(dtype="float32")
    except Exception:  # noqa: BLE001 - FFmpeg reads more formats and names the problem
        return None
    if waveform.size == 0:
        return None
    return waveform, AudioInfo(sample_rate, 1, int(waveform.size))


def audio_problem(entry: AudioSource) -> str | None:
    """Why ``entry`` (a path, encoded bytes or ``{"bytes", "path"}``) cannot be used; None when it decodes.

    Decoding must succeed and give samples; where the header states an exact length (FLAC, WAV,
    OGG), the decoded audio must have it (a truncated file decodes to less).
    """
    location = _location(entry)
    try:
        native = decode_audio(entry)[1]
    except (ValueError, FileNotFoundError) as error:
        return str(error).removeprefix(f"{location}: ")
    header = _probe_soundfile(_payload(entry))
    if header is not None and header.num_frames > 0:
        missing = (header.num_frames - native.num_frames) / header.sample_rate
        if abs(missing) > LENGTH_TOLERANCE_SECONDS:
            return (f"decodes to {native.duration:.3f} s but its header says {header.duration:.3f} s; the file is "
                    "truncated or corrupt: re-export it or remove it")
    return None


@dataclass
class ConversionLog:
    """Counts native (sample rate, channels) pairs; reports each kind of conversion once.

    The first file that is resampled, and the first that is down-mixed to mono, are logged with
    what happens to them (one message when one file needs both); later files are only counted.
    """

    source: str
    formats: Counter = field(default_factory=Counter)
    _reported: set = field(default_factory=set)

    def observe(self, info: AudioInfo, location: str | None = None) -> None:
        """Count one file's native format; ``location`` names it in the first report of a conversion."""
        self.formats[(info.sample_rate, info.num_channels)] += 1
        conversions = []  # (what the audio is, what decoding does to it)
        if info.sample_rate != TARGET_SAMPLE_RATE and "resample" not in self._reported:
            self._reported.add("resample")
            conversions.append((f"at {info.sample_rate} Hz", f"resampled to {TARGET_SAMPLE_RATE} Hz"))
        if info.num_channels != 1 and "down-mix" not in self._reported:
            self._reported.add("down-mix")
            conversions.append((f"with {info.num_channels} channels", "down-mixed to mono"))
        if conversions:
            logger.info("%s: audio %s is %s on decoding (%sreported once for this source)", self.source,
                        " ".join(what for what, _ in conversions), " and ".join(done for _, done in conversions),
                        f"e.g. {location}; " if location else "")

    def summary(self) -> dict[str, int]:
        """``{"8000 Hz x1": count, ...}`` over everything observed."""
        return {f"{rate} Hz x{channels}": count for (rate, channels), count in sorted(self.formats.items())}

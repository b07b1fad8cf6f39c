"""Speech data: sources, text normalisation, duration-bucketed batching, collators.

``load_source(spec, split=None, streaming=False, skip_bad=False)`` returns a
``datasets.Dataset`` / ``IterableDataset`` with columns ``audio`` (16 kHz mono
``np.float32`` array ``(S,)``, decoded on access), ``text`` (absent when unlabeled),
``id``, ``speaker_id`` (string), ``duration`` (seconds) and ``sampling_rate`` (native).
With ``skip_bad=True`` bad items are skipped into a ``SkippedItems`` report
(``skipped_items(dataset)``) that is logged in one summary at the end (see ``skipped.py``);
``verify_sources`` decodes every file once to list corrupt ones before training (``verification.py``).
"""

from .audio import TARGET_SAMPLE_RATE, AudioInfo, decode_audio, probe_audio
from .batch_seeds import BatchSeeds
from .batching import DurationBucketBatchSampler, pack_by_duration, padding_fraction
from .collators import CTCCollator, HubertCollator, PretrainingCollator, normalize_waveform, pad_labels, pad_waveforms
from .cropping import FAIRSEQ_MAX_SAMPLES, FAIRSEQ_MIN_SAMPLES, crop_windows, drop_short_utterances
from .info import summarize_source
from .librispeech import (
    HUB_SPLITS,
    LIBRILIGHT_SUBSETS,
    load_librilight_limited,
    load_librispeech_hub,
    load_librispeech_local,
)
from .folders import load_audio_directory, load_audiofolder
from .manifests import load_manifest
from .records import plain_column
from .skipped import BadItem, SkippedItems, skipped_items
from .sources import detect_source_kind, load_source
from .streaming import StreamingBucketBatcher
from .text import CTC_ALPHABET, CTC_VOCABULARY, OutOfVocabularyReport, TextNormalizer, out_of_vocabulary_report
from .verification import find_bad_audio, verify_sources

__all__ = [
    "CTC_ALPHABET", "CTC_VOCABULARY", "FAIRSEQ_MAX_SAMPLES", "FAIRSEQ_MIN_SAMPLES", "HUB_SPLITS", "LIBRILIGHT_SUBSETS",
    "TARGET_SAMPLE_RATE", "AudioInfo", "BadItem", "BatchSeeds", "CTCCollator", "DurationBucketBatchSampler",
    "HubertCollator", "OutOfVocabularyReport", "PretrainingCollator", "SkippedItems",
    "StreamingBucketBatcher", "TextNormalizer", "crop_windows", "decode_audio", "detect_source_kind",
    "drop_short_utterances", "find_bad_audio", "load_audio_directory", "load_audiofolder", "load_librilight_limited",
    "load_librispeech_hub", "load_librispeech_local", "load_manifest", "load_source", "normalize_waveform",
    "out_of_vocabulary_report", "pack_by_duration", "pad_labels", "pad_waveforms", "padding_fraction", "plain_column",
    "probe_audio", "skipped_items", "summarize_source", "verify_sources",
]

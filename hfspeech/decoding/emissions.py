"""An on-disk cache of CTC emissions (log-probabilities) with their references.

Computing emissions is the expensive, model-side step; LM tuning and decoder
comparisons reuse them many times. The cache is one ``.npz`` file (NumPy, no pickle):

===================  ===========  ==================================================
key                  shape/dtype  meaning
===================  ===========  ==================================================
``log_probs``        (ΣT, V) f32  every utterance's frames, concatenated
``lengths``          (N,) i64     frames per utterance (they sum to ΣT)
``references``       (N,) str     reference transcripts ("" when unknown), normalised
                                  to the labels' alphabet (see :func:`normalize_references`)
``utterance_ids``    (N,) str     utterance identifiers
``labels``           (V,) str     model label per output ('' blank/special, ' ' delimiter)
``blank_index``      () i64       CTC blank index
``seconds_per_frame`` () f64      frame stride (0.02 s for wav2vec 2.0/HuBERT)
``metadata``         () str       JSON: where the emissions come from (model, simulation)
===================  ===========  ==================================================
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hfspeech.data.text import describe_removed
from hfspeech.decoding.vocabulary import CTCVocabulary

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("log_probs", "lengths", "references", "utterance_ids", "labels", "blank_index",
                 "seconds_per_frame", "metadata")


@dataclass
class EmissionsCache:
    """Per-utterance CTC log-probabilities and references of one data set.

    Attributes:
        log_probs: N arrays of shape (T_i, V).
        references: N reference transcripts ("" when unknown), normalised to the vocabulary's
            alphabet on construction (:func:`normalize_references`).
        utterance_ids: N identifiers.
        vocabulary: the model's labels.
        seconds_per_frame: frame stride in seconds.
        metadata: provenance (e.g. ``{"source": "simulated", ...}``).
    """

    log_probs: list[np.ndarray]
    references: list[str]
    utterance_ids: list[str]
    vocabulary: CTCVocabulary
    seconds_per_frame: float = 0.02
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        count = len(self.log_probs)
        if count == 0:
            raise ValueError("EmissionsCache: no utterances; compute emissions for at least one.")
        if len(self.references) != count or len(self.utterance_ids) != count:
            raise ValueError(
                f"EmissionsCache: {count} emissions but {len(self.references)} references and "
                f"{len(self.utterance_ids)} utterance ids; give one of each per utterance."
            )
        self.log_probs = [
            self.vocabulary.check_log_probs(item, name=f"emissions of {self.utterance_ids[index]!r}")
            for index, item in enumerate(self.log_probs)
        ]
        self.references = normalize_references(self.references, self.vocabulary)

    def __len__(self) -> int:
        return len(self.log_probs)

    @property
    def audio_seconds(self) -> float:
        """Total audio duration covered by the emissions."""
        return sum(item.shape[0] for item in self.log_probs) * self.seconds_per_frame

    def save(self, path: str | Path) -> Path:
        """Write the cache as one .npz file (see the module docstring for its keys)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            np.savez(
                handle,
                log_probs=np.concatenate(self.log_probs).astype(np.float32),
                lengths=np.array([item.shape[0] for item in self.log_probs], dtype=np.int64),
                references=np.array(self.references, dtype=np.str_),
                utterance_ids=np.array(self.utterance_ids, dtype=np.str_),
                labels=np.array(self.vocabulary.labels, dtype=np.str_),
                blank_index=np.array(self.vocabulary.blank_index, dtype=np.int64),
                seconds_per_frame=np.array(self.seconds_per_frame, dtype=np.float64),
                metadata=np.array(json.dumps(self.metadata)),
            )
        return path

    @classmethod
    def load(cls, path: str | Path) -> "EmissionsCache":
        """Read a cache written by :meth:`save`, checking every field."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"emissions cache {path} does not exist; compute it first.")
        try:
            archive = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ValueError(f"emissions cache {path} is not a readable .npz file ({error}).") from error
        with archive:
            missing = [key for key in REQUIRED_KEYS if key not in archive.files]
            if missing:
                raise ValueError(f"emissions cache {path}: missing fields {missing}; rewrite it with "
                                 "EmissionsCache.save.")
            log_probs = archive["log_probs"]
            lengths = archive["lengths"].astype(np.int64)
            if log_probs.ndim != 2 or lengths.ndim != 1 or int(lengths.sum()) != log_probs.shape[0]:
                raise ValueError(
                    f"emissions cache {path}: 'lengths' sums to {int(lengths.sum())} frames but "
                    f"'log_probs' has shape {log_probs.shape}; the file is corrupt, recompute it."
                )
            labels = [str(label) for label in archive["labels"].tolist()]
            vocabulary = CTCVocabulary(tuple(labels), int(archive["blank_index"]))
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            return cls(
                log_probs=[log_probs[offsets[i] : offsets[i + 1]] for i in range(len(lengths))],
                references=[str(text) for text in archive["references"].tolist()],
                utterance_ids=[str(name) for name in archive["utterance_ids"].tolist()],
                vocabulary=vocabulary,
                seconds_per_frame=float(archive["seconds_per_frame"]),
                metadata=json.loads(str(archive["metadata"])),
            )


def normalize_references(references: Sequence[str], vocabulary: CTCVocabulary) -> list[str]:
    """References in ``vocabulary``'s alphabet, by the rules of :mod:`hfspeech.data.text`.

    These are the rules of the CTC targets and of the LM corpus, so WER compares like with like
    (``"Don’t stop."`` scores against the hypothesis ``DON'T STOP``). Characters the alphabet
    cannot spell (digits, punctuation) are removed and logged in one warning.
    """
    normalizer = vocabulary.text_normalizer()
    removed: Counter = Counter()
    normalized = []
    for reference in references:
        text, dropped = normalizer.normalize(str(reference))
        removed.update(dropped)
        normalized.append(text)
    if removed:
        logger.warning("%s", describe_removed(removed, "references"))
    return normalized


def cached_emissions(path: str | Path, compute: Callable[[], EmissionsCache]) -> EmissionsCache:
    """Load the cache at ``path``; compute and save it first when it does not exist."""
    path = Path(path)
    if path.is_file():
        logger.info("loading cached emissions from %s", path)
        return EmissionsCache.load(path)
    cache = compute()
    cache.save(path)
    logger.info("saved %d utterances of emissions to %s", len(cache), path)
    return cache


def check_same_vocabulary(cache: EmissionsCache, labels: Sequence[str], source: str) -> None:
    """Raise ValueError when a decoder's labels differ from the cache's."""
    if tuple(labels) != cache.vocabulary.labels:
        raise ValueError(
            f"{source}: the decoder has {len(labels)} labels {list(labels)[:8]}... but the emissions "
            f"were computed with {cache.vocabulary.size} labels {list(cache.vocabulary.labels)[:8]}...; "
            "decode with the vocabulary stored in the emissions cache."
        )

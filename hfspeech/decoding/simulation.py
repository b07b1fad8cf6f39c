"""Simulated CTC emissions for transcripts: a stand-in until a fine-tuned model exists.

The simulation imitates what a character CTC model (wav2vec 2.0 at 20 ms frames)
emits, so that decoders and LM weights can be compared before real emissions exist.
Results obtained on it must be labelled *simulated*.

For each character of the transcript (words joined by the delimiter ``|``):

* it spans ``1 + Poisson(extra_frames)`` peaky frames followed by ``Poisson(blank_frames)``
  blank frames (about 12 characters per second of speech at the defaults);
* on its frames the true token gets a logit boost ``N(strength, strength_std)`` over
  Gaussian noise ``N(0, noise_std)`` on every token;
* with probability ``confusion_rate`` an *acoustically confusable* character (from
  :data:`CONFUSABLE`: M/N, B/P/D/T/V, S/F/Z, C/K/G, E/I/Y, ...) gets a boost of
  ``N(strength + confusion_margin, strength_std)`` too, so greedy decoding picks the
  wrong letter about half of the time and only context can correct it;
* with probability ``weak_rate`` the character is weak: its boost is halved, so the blank
  often wins and the character is deleted;
* blank frames favour the blank by ``N(strength, strength_std)``.

Logits are turned into log-probabilities with log-softmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from hfspeech.decoding.emissions import EmissionsCache
from hfspeech.decoding.vocabulary import CTCVocabulary

CONFUSABLE: dict[str, str] = {
    "A": "E", "B": "P", "C": "K", "D": "T", "E": "I", "F": "S", "G": "K", "H": "A", "I": "Y",
    "J": "G", "K": "C", "L": "R", "M": "N", "N": "M", "O": "U", "P": "B", "Q": "K", "R": "L",
    "S": "Z", "T": "D", "U": "O", "V": "F", "W": "U", "X": "S", "Y": "I", "Z": "S", "'": "S",
}


@dataclass(frozen=True)
class SimulationConfig:
    """Knobs of :func:`simulate_emissions` (defaults: ~15-25% greedy WER on prose)."""

    extra_frames: float = 1.5
    blank_frames: float = 1.0
    strength: float = 8.0
    strength_std: float = 1.5
    noise_std: float = 1.0
    confusion_rate: float = 0.08
    confusion_margin: float = 0.0
    weak_rate: float = 0.03


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def simulate_utterance(
    transcript: str, vocabulary: CTCVocabulary, rng: np.random.RandomState, config: SimulationConfig
) -> np.ndarray:
    """Simulated (T, V) log-probabilities for one transcript (see the module docstring)."""
    index = {label: position for position, label in enumerate(vocabulary.labels) if label}
    words = transcript.split()
    if not words:
        raise ValueError("simulate_utterance: empty transcript; give at least one word.")
    unknown = sorted({char for word in words for char in word} - vocabulary.alphabet)
    if unknown:
        raise ValueError(f"simulate_utterance: {transcript!r} has characters {unknown} outside the "
                         "vocabulary; normalise it with CTCVocabulary.normalize_text first.")
    blank = vocabulary.blank_index
    frames: list[np.ndarray] = []

    def add_frames(count: int, token: int, boost: float, rival: int | None, rival_boost: float) -> None:
        for _ in range(count):
            logits = rng.normal(0.0, config.noise_std, vocabulary.size)
            logits[token] += boost
            if rival is not None:
                logits[rival] += rival_boost
            frames.append(logits)

    add_frames(int(rng.poisson(config.blank_frames)), blank, rng.normal(config.strength, config.strength_std),
               None, 0.0)
    characters = list(" ".join(words))
    for char in characters:
        token = index[char]
        boost = rng.normal(config.strength, config.strength_std)
        rival = None
        rival_boost = 0.0
        if char != " " and rng.rand() < config.weak_rate:
            boost *= 0.5
            rival, rival_boost = blank, rng.normal(config.strength * 0.5, config.strength_std)
        elif char in CONFUSABLE and CONFUSABLE[char] in index and rng.rand() < config.confusion_rate:
            rival = index[CONFUSABLE[char]]
            rival_boost = rng.normal(config.strength + config.confusion_margin, config.strength_std)
        # Peaky frames: one emitting frame plus a Poisson number of repeats.
        add_frames(1 + int(rng.poisson(config.extra_frames)), token, boost, rival, rival_boost)
        add_frames(int(rng.poisson(config.blank_frames)), blank, rng.normal(config.strength, config.strength_std),
                   None, 0.0)
    return _log_softmax(np.stack(frames)).astype(np.float32)


def simulate_emissions(
    transcripts: Sequence[str],
    vocabulary: CTCVocabulary,
    seed: int = 0,
    config: SimulationConfig | None = None,
    utterance_ids: Sequence[str] | None = None,
    seconds_per_frame: float = 0.02,
) -> EmissionsCache:
    """Simulate an emissions cache for normalised transcripts (reproducible from ``seed``)."""
    config = config or SimulationConfig()
    if not transcripts:
        raise ValueError("simulate_emissions: no transcripts given.")
    rng = np.random.RandomState(seed)
    log_probs = [simulate_utterance(text, vocabulary, rng, config) for text in transcripts]
    ids = list(utterance_ids) if utterance_ids is not None else [f"sim-{i:05d}" for i in range(len(transcripts))]
    return EmissionsCache(
        log_probs=log_probs,
        references=list(transcripts),
        utterance_ids=ids,
        vocabulary=vocabulary,
        seconds_per_frame=seconds_per_frame,
        metadata={"source": "simulated", "seed": seed, "config": asdict(config)},
    )

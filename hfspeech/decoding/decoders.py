"""One decoding interface for every CTC backend.

``build_decoder(DecoderSpec(...))`` returns a :class:`CTCDecoder`:

* ``"greedy"``: best token per frame, no LM;
* ``"pyctcdecode"``: pyctcdecode's prefix beam search with KenLM shallow fusion
  (alpha, beta, beam width, beam pruning, hotwords);
* ``"flashlight"``: flashlight-text's C++ lexicon beam search with KenLM (the same
  alpha/beta meaning), or its lexicon-free search when no LM is given.

All take (T, V) log-probabilities in the model's label order and return
:class:`~hfspeech.decoding.timestamps.Transcription` objects with word and character
timestamps. A :class:`DecoderSpec` is a small picklable description, so worker processes
(:mod:`hfspeech.decoding.beam_pool`) can rebuild the same decoder.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from hfspeech.decoding.timestamps import Transcription, spans_from_path
from hfspeech.decoding.vocabulary import CTCVocabulary

BACKENDS = ("greedy", "pyctcdecode", "flashlight")
LEXICON_LOOKAHEADS = ("max", "none")


@dataclass(frozen=True)
class DecoderSpec:
    """Everything needed to build a decoder (picklable; sent to worker processes).

    Attributes:
        labels: model label per output index (see :class:`CTCVocabulary`).
        backend: ``"greedy"``, ``"pyctcdecode"`` or ``"flashlight"``.
        blank_index: CTC blank index.
        lm_path: KenLM binary/ARPA file or a directory from ``hfspeech lm build``; None = no LM.
        unigrams_path: word list; default: unigrams.txt next to the LM (or the ARPA's 1-grams).
        alpha: LM weight (natural-log LM scores are multiplied by it).
        beta: word insertion bonus (added once per word).
        beam_width: hypotheses kept per frame.
        beam_prune_logp: drop hypotheses this far (log) below the best one.
        token_min_logp: skip tokens whose frame log-probability is below this (pyctcdecode;
            flashlight expands every token and relies on ``beam_prune_logp``).
        unk_score_offset: log penalty for words outside the unigram list (pyctcdecode);
            flashlight cannot produce such words at all (lexicon search).
        lexicon_lookahead: flashlight with an LM: how a partial word is scored while it is
            being spelled. ``"max"``: by the best unigram it can still become (flashlight's
            MAX smearing; prunes well with large vocabularies); ``"none"``: not at all, the
            whole LM score comes when the word is complete (as in pyctcdecode; better when
            unigram probabilities say little, e.g. small closed-grammar LMs). Tune it on dev.
        hotwords: words to boost (pyctcdecode only).
        hotword_weight: boost per hotword.
        seconds_per_frame: frame stride for timestamps (0.02 s for wav2vec 2.0/HuBERT).
    """

    labels: tuple[str, ...]
    backend: str = "greedy"
    blank_index: int = 0
    lm_path: str | None = None
    unigrams_path: str | None = None
    alpha: float = 0.5
    beta: float = 1.0
    beam_width: int = 100
    beam_prune_logp: float = -10.0
    token_min_logp: float = -5.0
    unk_score_offset: float = -10.0
    lexicon_lookahead: str = "max"
    hotwords: tuple[str, ...] = field(default_factory=tuple)
    hotword_weight: float = 10.0
    seconds_per_frame: float = 0.02

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "hotwords", tuple(self.hotwords))
        if self.backend not in BACKENDS:
            raise ValueError(f"DecoderSpec.backend={self.backend!r}; choose one of {BACKENDS}.")
        if self.beam_width < 1:
            raise ValueError(f"DecoderSpec.beam_width={self.beam_width}; it must be >= 1.")
        if self.seconds_per_frame <= 0:
            raise ValueError(f"DecoderSpec.seconds_per_frame={self.seconds_per_frame}; it must be > 0.")
        if self.lexicon_lookahead not in LEXICON_LOOKAHEADS:
            raise ValueError(f"DecoderSpec.lexicon_lookahead={self.lexicon_lookahead!r}; choose one of "
                             f"{LEXICON_LOOKAHEADS}.")
        if self.hotwords and self.backend != "pyctcdecode":
            raise ValueError("DecoderSpec.hotwords: only the pyctcdecode backend supports hotwords.")

    def with_weights(self, alpha: float, beta: float) -> "DecoderSpec":
        """A copy with other LM weights."""
        return replace(self, alpha=float(alpha), beta=float(beta))


def to_numpy(array: Any) -> np.ndarray:
    """Torch tensor or array-like -> float32 numpy array (no copy when possible)."""
    if hasattr(array, "detach"):
        array = array.detach().to("cpu").float().numpy()
    return np.asarray(array, dtype=np.float32)


class CTCDecoder(ABC):
    """Decode (T, V) CTC log-probabilities into :class:`Transcription` objects."""

    def __init__(self, spec: DecoderSpec) -> None:
        self.spec = spec
        self.vocabulary = CTCVocabulary(spec.labels, spec.blank_index)

    @property
    def compact_labels(self) -> list[str]:
        """Labels after folding the specials into the blank (index 0 = blank)."""
        return self.vocabulary.compact_labels

    def decode(self, log_probs: Any) -> Transcription:
        """Decode one utterance.

        Args:
            log_probs: (T, V) log-probabilities (numpy or torch), V = len(labels).
        """
        emissions = self.vocabulary.check_log_probs(to_numpy(log_probs))
        return self._decode_compact(self.vocabulary.fold_specials(emissions))

    def decode_batch(self, log_probs: Any, lengths: Sequence[int] | None = None) -> list[Transcription]:
        """Decode a batch sequentially (use :class:`~hfspeech.decoding.beam_pool.DecoderPool` for processes).

        Args:
            log_probs: (B, T, V) padded array/tensor, or a list of (T_b, V) arrays.
            lengths: (B,) valid frames per utterance for a padded batch.
        """
        return [self.decode(item) for item in split_batch(log_probs, lengths)]

    def set_weights(self, alpha: float, beta: float) -> None:
        """Change the LM weight and word bonus without reloading the LM."""
        if self.spec.lm_path is None:
            raise ValueError(f"{type(self).__name__}: no language model, so alpha/beta cannot be set; "
                             "give DecoderSpec.lm_path.")
        self.spec = self.spec.with_weights(alpha, beta)
        self._apply_weights()

    def _apply_weights(self) -> None:
        """Push ``self.spec.alpha``/``beta`` into the backend (LM backends override this)."""
        raise ValueError(f"{type(self).__name__} has no LM weights.")

    @abstractmethod
    def _decode_compact(self, log_probs: np.ndarray) -> Transcription:
        """Decode (T, 1 + P) folded log-probabilities (column 0 = blank)."""

    def _transcription_from_path(self, path: np.ndarray, score: float) -> Transcription:
        text, words, chars = spans_from_path(path, self.compact_labels, self.spec.seconds_per_frame)
        return Transcription(text=text, score=float(score), words=words, chars=chars)


def split_batch(log_probs: Any, lengths: Sequence[int] | None = None) -> list[np.ndarray]:
    """(B, T, V) padded batch + lengths, or a list of (T_b, V) arrays -> list of (T_b, V) arrays."""
    if isinstance(log_probs, (list, tuple)):
        items = [to_numpy(item) for item in log_probs]
        if lengths is not None:
            items = [item[: int(length)] for item, length in zip(items, lengths, strict=True)]
    else:
        batch = to_numpy(log_probs)
        if batch.ndim != 3:
            raise ValueError(f"log_probs: expected a (batch, frames, vocab) batch, got shape {batch.shape}.")
        if lengths is None:
            lengths = [batch.shape[1]] * batch.shape[0]
        lengths = [int(length) for length in to_numpy(lengths).astype(np.int64).tolist()] \
            if not isinstance(lengths, (list, tuple)) else [int(length) for length in lengths]
        if len(lengths) != batch.shape[0]:
            raise ValueError(f"lengths: {len(lengths)} lengths for a batch of {batch.shape[0]} utterances.")
        too_long = [length for length in lengths if not 0 < length <= batch.shape[1]]
        if too_long:
            raise ValueError(f"lengths: {too_long} are outside 1..{batch.shape[1]} (the padded frame count).")
        items = [batch[index, :length] for index, length in enumerate(lengths)]
    if not items:
        raise ValueError("log_probs: the batch is empty; pass at least one utterance.")
    return items


class GreedyCTCDecoder(CTCDecoder):
    """Best-path decoding: argmax per frame, collapse repeats, drop blanks.

    Argmax runs over the folded distribution (special tokens count as blank), the same
    one the beam backends search, so beam width 1 without LM gives the same text.
    """

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> "GreedyCTCDecoder":
        """The greedy decoder over a CTC tokenizer's vocabulary (blank = its pad token): the one decoding of
        training's dev WER, `transformers.Trainer`'s ``compute_metrics`` and ``hfspeech evaluate`` without an LM."""
        vocabulary = CTCVocabulary.from_tokenizer(tokenizer)
        return cls(DecoderSpec(vocabulary.labels, "greedy", vocabulary.blank_index))

    def _decode_compact(self, log_probs: np.ndarray) -> Transcription:
        path = log_probs.argmax(axis=1)
        return self._transcription_from_path(path, log_probs.max(axis=1).sum())


def build_decoder(spec: DecoderSpec) -> CTCDecoder:
    """Instantiate the decoder a spec describes (loads the LM once)."""
    if spec.backend == "greedy":
        return GreedyCTCDecoder(spec)
    if spec.backend == "pyctcdecode":
        from hfspeech.decoding.pyctcdecode_backend import PyCTCDecodeDecoder

        return PyCTCDecodeDecoder(spec)
    from hfspeech.decoding.flashlight_backend import FlashlightDecoder

    return FlashlightDecoder(spec)

"""flashlight-text's C++ CTC beam search behind :class:`CTCDecoder`.

With an LM: the lexicon decoder. The lexicon is the LM's unigram list, each word spelled
with the model's characters followed by the word delimiter; the KenLM word model is
fused with weight ``alpha * ln(10)`` (flashlight gets log10 scores from KenLM, so this
gives ``alpha`` the same meaning as in pyctcdecode) and ``beta`` is added per word. Words
outside the unigram list cannot be produced.

Hypotheses that reach the same LM state, lexicon node and last token are merged by
log-sum-exp of their scores (``log_add``: the score of a transcript sums over its CTC
alignments, as pyctcdecode's beam merging does) rather than by max; on real and simulated
emissions this lowered WER by 0.3-3 points at beam 8 and 32 (benchmarks/RESULTS.md).
``DecoderSpec.lexicon_lookahead`` picks how partial words are scored (trie smearing).

Without an LM: the lexicon-free decoder with a zero LM (pure CTC prefix search).
"""

from __future__ import annotations

import math

import numpy as np

from hfspeech.decoding.decoders import CTCDecoder, DecoderSpec
from hfspeech.decoding.language_model import load_language_model
from hfspeech.decoding.timestamps import Transcription

# pyctcdecode clips probabilities at 1e-15; clip the same way (flashlight dislikes -inf).
MIN_LOG_PROB = math.log(1e-15)


class FlashlightDecoder(CTCDecoder):
    """flashlight-text lexicon (with KenLM) or lexicon-free (no LM) beam search."""

    def __init__(self, spec: DecoderSpec) -> None:
        super().__init__(spec)
        from flashlight.lib.text import decoder as fl
        from flashlight.lib.text.dictionary import Dictionary

        # Tokens are the compact labels: 0 = blank, then the printed labels (see fold_specials).
        labels = self.compact_labels
        self._num_tokens = len(labels)
        blank = 0
        delimiter = labels.index(" ")
        self._delimiter = delimiter
        criterion = fl.CriterionType.CTC
        if spec.lm_path is None:
            options = fl.LexiconFreeDecoderOptions(
                beam_size=spec.beam_width,
                beam_size_token=self._num_tokens,
                beam_threshold=-spec.beam_prune_logp,
                lm_weight=0.0,
                sil_score=0.0,
                log_add=True,
                criterion_type=criterion,
            )
            self._lm = fl.ZeroLM()
            self._decoder = fl.LexiconFreeDecoder(options, self._lm, delimiter, blank, [])
            self._word_dict = None
            return
        loaded = load_language_model(spec.lm_path, spec.unigrams_path, self.vocabulary)
        self._word_dict = Dictionary()
        for word in loaded.unigrams:
            self._word_dict.add_entry(word)
        self._word_dict.add_entry("<unk>")
        self._word_dict.set_default_index(self._word_dict.get_index("<unk>"))
        from flashlight.lib.text.decoder.kenlm import KenLM

        self._lm = KenLM(str(loaded.model_path), self._word_dict)
        trie = fl.Trie(self._num_tokens, delimiter)
        start_state = self._lm.start(False)
        char_index = {label: index for index, label in enumerate(labels)}
        for word in loaded.unigrams:
            word_index = self._word_dict.get_index(word)
            _, score = self._lm.score(start_state, word_index)
            spelling = [char_index[char] for char in word] + [delimiter]
            trie.insert(spelling, word_index, score)
        trie.smear(fl.SmearingMode.MAX if spec.lexicon_lookahead == "max" else fl.SmearingMode.NONE)
        self._trie = trie
        self._apply_weights()

    def _apply_weights(self) -> None:
        from flashlight.lib.text import decoder as fl

        spec = self.spec
        options = fl.LexiconDecoderOptions(
            beam_size=spec.beam_width,
            beam_size_token=self._num_tokens,
            beam_threshold=-spec.beam_prune_logp,
            lm_weight=spec.alpha * math.log(10.0),
            word_score=spec.beta,
            unk_score=-math.inf,
            sil_score=0.0,
            log_add=True,
            criterion_type=fl.CriterionType.CTC,
        )
        self._decoder = fl.LexiconDecoder(
            options, self._trie, self._lm, self._delimiter, 0, self._word_dict.get_index("<unk>"), [], False
        )

    def _decode_compact(self, log_probs: np.ndarray) -> Transcription:
        emissions = np.maximum(log_probs, MIN_LOG_PROB)
        num_frames = emissions.shape[0]
        if self._word_dict is not None:
            # Lexicon spellings end with the delimiter, so a word is complete only once "|" is
            # emitted. Close the utterance with one extra frame that is certainly "|": the last
            # word then ends without taking "|" from a real frame (its path is cut off below).
            closing = np.full((1, self._num_tokens), MIN_LOG_PROB, dtype=np.float32)
            closing[0, self._delimiter] = 0.0
            emissions = np.concatenate([emissions, closing])
        emissions = np.ascontiguousarray(emissions, dtype=np.float32)
        results = self._decoder.decode(emissions.ctypes.data, emissions.shape[0], self._num_tokens)
        if not results:
            raise ValueError(
                "flashlight found no hypothesis: every path was pruned (for the lexicon decoder: no "
                "sequence of LM words fits these emissions). Widen beam_prune_logp/beam_width or check "
                "that the LM's unigrams cover the speech."
            )
        best = results[0]
        # tokens holds one entry per frame, framed by one padding entry on each side; keep the
        # entries of the real frames.
        path = np.asarray(best.tokens, dtype=np.int64)[1 : num_frames + 1]
        path = np.where(path < 0, 0, path)
        return self._transcription_from_path(path, best.score)

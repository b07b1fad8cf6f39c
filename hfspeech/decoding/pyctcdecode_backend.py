"""pyctcdecode prefix beam search with KenLM shallow fusion behind :class:`CTCDecoder`."""

from __future__ import annotations

import numpy as np

from hfspeech.decoding.decoders import CTCDecoder, DecoderSpec
from hfspeech.decoding.language_model import load_language_model
from hfspeech.decoding.timestamps import Transcription, forced_align


class PyCTCDecodeDecoder(CTCDecoder):
    """pyctcdecode's beam search; LM score = alpha * ln P(word | history) + beta per word.

    Words outside the unigram list get ``unk_score_offset``; ``hotwords`` are boosted by
    ``hotword_weight``. Timestamps come from the forced alignment of the chosen text.
    """

    def __init__(self, spec: DecoderSpec) -> None:
        super().__init__(spec)
        from pyctcdecode.alphabet import Alphabet
        from pyctcdecode.decoder import BeamSearchDecoderCTC
        from pyctcdecode.language_model import LanguageModel

        language_model = None
        if spec.lm_path is not None:
            loaded = load_language_model(spec.lm_path, spec.unigrams_path, self.vocabulary)
            language_model = LanguageModel(
                loaded.kenlm_model,
                loaded.unigrams,
                alpha=spec.alpha,
                beta=spec.beta,
                unk_score_offset=spec.unk_score_offset,
            )
        alphabet = Alphabet(self.compact_labels, is_bpe=False)
        self._decoder = BeamSearchDecoderCTC(alphabet, language_model)
        self._char_index = {label: index for index, label in enumerate(self.compact_labels)}

    def _apply_weights(self) -> None:
        self._decoder.reset_params(alpha=self.spec.alpha, beta=self.spec.beta)

    def _decode_compact(self, log_probs: np.ndarray) -> Transcription:
        beams = self._decoder.decode_beams(
            log_probs,
            beam_width=self.spec.beam_width,
            beam_prune_logp=self.spec.beam_prune_logp,
            token_min_logp=self.spec.token_min_logp,
            hotwords=list(self.spec.hotwords) or None,
            hotword_weight=self.spec.hotword_weight,
        )
        # OutputBeam: (text, last LM state, word frames, logit score, combined score)
        best_text, _, _, _, best_score = beams[0]
        text = " ".join(best_text.split())
        targets = [self._char_index[char] for char in text]
        path = forced_align(log_probs, targets, blank=0)
        transcription = self._transcription_from_path(path, best_score)
        transcription.text = text
        return transcription

"""Scoring a model + decoder: decode an emissions cache (`hfspeech.decoding.inference.compute_emissions`)
and compare with its references: WER/CER, errors by type and utterance, and decoding speed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .decoders import DecoderSpec, build_decoder
from .emissions import EmissionsCache
from .timestamps import Transcription
from .wer import DecodingSpeed, ErrorReport, error_report, measure_decoding_speed


@dataclass
class EvaluationResult:
    """WER/CER of a model + decoder on a data set, with its speed."""

    report: ErrorReport
    decoding: DecodingSpeed
    model_seconds: float
    audio_seconds: float
    spec: DecoderSpec
    hypotheses: list[Transcription]

    @property
    def decoding_real_time_factor(self) -> float:
        """Decoding time / audio time."""
        return self.decoding.decode_seconds / self.audio_seconds

    @property
    def end_to_end_real_time_factor(self) -> float:
        """(Model forward + decoding time) / audio time; audio loading is not included."""
        return (self.model_seconds + self.decoding.decode_seconds) / self.audio_seconds

    def to_dict(self, worst: int = 10) -> dict[str, Any]:
        return {
            **self.report.to_dict(worst), "backend": self.spec.backend, "lm_path": self.spec.lm_path,
            "alpha": self.spec.alpha, "beta": self.spec.beta, "utterances": self.decoding.utterances,
            "audio_seconds": self.audio_seconds, "model_seconds": self.model_seconds,
            "decode_seconds": self.decoding.decode_seconds,
            "decoding_real_time_factor": self.decoding_real_time_factor,
            "end_to_end_real_time_factor": self.end_to_end_real_time_factor,
        }


def evaluate_emissions(cache: EmissionsCache, spec: DecoderSpec, num_workers: int = 1) -> EvaluationResult:
    """Decode an emissions cache (computed by :func:`compute_emissions`) and score it against its references.

    Raises:
        ValueError: an utterance has no reference transcript, or the LM's words use characters
            outside the model's alphabet.
    """
    from hfspeech.decoding.beam_pool import DecoderPool
    from hfspeech.decoding.emissions import check_same_vocabulary

    check_same_vocabulary(cache, spec.labels, "evaluate")
    missing = [name for name, text in zip(cache.utterance_ids, cache.references) if not text.strip()]
    if missing:
        raise ValueError(f"evaluate: {len(missing)} utterances have no transcript (e.g. {missing[:5]}); evaluation "
                         "needs data with a 'text' column. Use `hfspeech transcribe` for unlabelled audio.")
    audio_seconds = float(cache.metadata.get("audio_seconds") or cache.audio_seconds)
    if num_workers > 1:
        with DecoderPool(spec, num_workers) as pool:
            results, speed = measure_decoding_speed(lambda items: pool.decode_batch(items, progress=True),
                                                    cache.log_probs, audio_seconds)
    else:
        decoder = build_decoder(spec)
        results, speed = measure_decoding_speed(decoder.decode_batch, cache.log_probs, audio_seconds)
    report = error_report(cache.references, [result.text for result in results], cache.utterance_ids)
    return EvaluationResult(report, speed, float(cache.metadata.get("model_seconds", 0.0)), audio_seconds, spec,
                            results)

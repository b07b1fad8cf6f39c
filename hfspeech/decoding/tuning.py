"""LM-weight tuning: search alpha (LM weight) and beta (word bonus) on a dev set's emissions.

The emissions are computed once (an :class:`EmissionsCache`); every trial only re-runs the
beam search. Optuna's TPE sampler, seeded, proposes (alpha, beta); the spec's own weights
are always the first trial, so the result is never worse than the defaults on the dev set.
For the flashlight backend the search runs once per lexicon lookahead mode (``max`` and
``none``, see :class:`DecoderSpec`) and keeps the best of all trials.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from hfspeech.decoding.beam_pool import DecoderPool
from hfspeech.decoding.decoders import LEXICON_LOOKAHEADS, DecoderSpec, build_decoder
from hfspeech.decoding.emissions import EmissionsCache, check_same_vocabulary
from hfspeech.decoding.wer import error_report

logger = logging.getLogger(__name__)


@dataclass
class TuningTrial:
    """One evaluated (alpha, beta) pair."""

    alpha: float
    beta: float
    wer: float
    cer: float
    lexicon_lookahead: str = "max"


@dataclass
class TuningResult:
    """Best weights found and every trial."""

    alpha: float
    beta: float
    wer: float
    default_alpha: float
    default_beta: float
    default_wer: float
    greedy_wer: float
    backend: str
    lm_path: str
    seed: int
    trials: list[TuningTrial] = field(default_factory=list)
    lexicon_lookahead: str = "max"

    def apply(self, spec: DecoderSpec) -> DecoderSpec:
        """``spec`` with the best weights (and, for flashlight, the best lookahead)."""
        return replace(spec.with_weights(self.alpha, self.beta), lexicon_lookahead=self.lexicon_lookahead)

    def to_json(self, path: str | Path) -> Path:
        """Write the result (best weights first) as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
        return path

    def table(self, top: int = 10) -> str:
        """Markdown table: greedy, default weights, then the best ``top`` trials."""
        lookahead = self.backend == "flashlight"
        extra = (lambda value: f" {value} |") if lookahead else (lambda value: "")
        rows = ["| decoding | alpha | beta |" + (" lookahead |" if lookahead else "") + " WER % |",
                "|---|---:|---:|" + ("---|" if lookahead else "") + "---:|",
                f"| greedy (no LM) | - | - |{extra('-')} {100 * self.greedy_wer:.2f} |",
                f"| {self.backend} + LM, default weights | {self.default_alpha:.3f} | {self.default_beta:.3f} |"
                f"{extra(self.trials[0].lexicon_lookahead if self.trials else '-')} {100 * self.default_wer:.2f} |"]
        for rank, trial in enumerate(sorted(self.trials, key=lambda t: t.wer)[:top], start=1):
            rows.append(f"| {self.backend} + LM, trial rank {rank} | {trial.alpha:.3f} | {trial.beta:.3f} |"
                        f"{extra(trial.lexicon_lookahead)} {100 * trial.wer:.2f} |")
        return "\n".join(rows)


def tune_lm_weights(
    emissions: EmissionsCache,
    spec: DecoderSpec,
    num_trials: int = 30,
    seed: int = 0,
    alpha_range: tuple[float, float] = (0.0, 5.0),
    beta_range: tuple[float, float] = (-5.0, 5.0),
    num_workers: int = 1,
    start_method: str | None = None,
    tune_lookahead: bool = True,
) -> TuningResult:
    """Find the (alpha, beta) that minimise WER on ``emissions``' references.

    Args:
        emissions: dev-set emissions with non-empty references.
        spec: decoder with an LM (``lm_path``); its alpha/beta are the defaults tried first.
        num_trials: optuna trials (including the default one), per lookahead mode.
        seed: seeds optuna's TPE sampler.
        alpha_range, beta_range: search intervals.
        num_workers: decoder processes (1: decode in this process).
        start_method: multiprocessing start method for the workers.
        tune_lookahead: flashlight only: also try the other ``lexicon_lookahead`` mode (the
            spec's own comes first).
    """
    import optuna

    if spec.lm_path is None or spec.backend == "greedy":
        raise ValueError("tune_lm_weights: the spec needs a beam backend and an LM (lm_path) to tune.")
    if num_trials < 1:
        raise ValueError(f"tune_lm_weights: num_trials={num_trials}; run at least 1.")
    for name, (low, high) in (("alpha_range", alpha_range), ("beta_range", beta_range)):
        if not low < high:
            raise ValueError(f"tune_lm_weights: {name}={low, high} must be an interval low < high.")
    check_same_vocabulary(emissions, spec.labels, "tune_lm_weights")
    references = emissions.references
    error_report(references, references, emissions.utterance_ids)  # rejects empty references early

    greedy = build_decoder(DecoderSpec(spec.labels, "greedy", spec.blank_index))
    greedy_wer = error_report(references, [greedy.decode(x).text for x in emissions.log_probs]).wer

    lookaheads = [spec.lexicon_lookahead]
    if spec.backend == "flashlight" and tune_lookahead:
        lookaheads += [mode for mode in LEXICON_LOOKAHEADS if mode != spec.lexicon_lookahead]
    progress = tqdm(total=num_trials * len(lookaheads), desc="tuning alpha/beta", unit=" trials")
    trials: list[TuningTrial] = []
    default_alpha = min(max(spec.alpha, alpha_range[0]), alpha_range[1])
    default_beta = min(max(spec.beta, beta_range[0]), beta_range[1])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        for lookahead in lookaheads:
            variant = replace(spec, lexicon_lookahead=lookahead)
            pool = DecoderPool(variant, num_workers, start_method) if num_workers > 1 else None
            decoder = None if pool is not None else build_decoder(variant)

            def evaluate(alpha: float, beta: float, pool=pool, decoder=decoder, lookahead=lookahead) -> float:
                if pool is not None:
                    texts = [t.text for t in pool.decode_batch(emissions.log_probs, alpha=alpha, beta=beta)]
                else:
                    decoder.set_weights(alpha, beta)
                    texts = [decoder.decode(x).text for x in emissions.log_probs]
                report = error_report(references, texts)
                trials.append(TuningTrial(alpha, beta, report.wer, report.cer, lookahead))
                progress.update(1)
                progress.set_postfix(wer=f"{100 * report.wer:.2f}%", best=f"{100 * min(t.wer for t in trials):.2f}%")
                logger.debug("alpha=%.3f beta=%.3f lookahead=%s WER=%.4f", alpha, beta, lookahead, report.wer)
                return report.wer

            def objective(trial: Any, evaluate=evaluate) -> float:
                return evaluate(trial.suggest_float("alpha", *alpha_range), trial.suggest_float("beta", *beta_range))

            study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
            study.enqueue_trial({"alpha": default_alpha, "beta": default_beta})
            try:
                study.optimize(objective, n_trials=num_trials)
            finally:
                if pool is not None:
                    pool.close()
    finally:
        progress.close()
    best = min(trials, key=lambda t: t.wer)
    logger.info("best alpha=%.3f beta=%.3f lookahead=%s WER %.2f%% (defaults %.2f%%, greedy %.2f%%)", best.alpha,
                best.beta, best.lexicon_lookahead, 100 * best.wer, 100 * trials[0].wer, 100 * greedy_wer)
    return TuningResult(
        alpha=best.alpha, beta=best.beta, wer=best.wer,
        default_alpha=trials[0].alpha, default_beta=trials[0].beta, default_wer=trials[0].wer,
        greedy_wer=greedy_wer, backend=spec.backend, lm_path=str(spec.lm_path), seed=seed, trials=trials,
        lexicon_lookahead=best.lexicon_lookahead,
    )

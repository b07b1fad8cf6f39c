"""Batched decoding with a persistent pool of worker processes.

Each worker builds its decoder (and loads the KenLM model) once, in the pool's
initializer, from a picklable :class:`DecoderSpec`; afterwards only emissions and
transcriptions cross process boundaries. Nothing depends on inherited globals, so the
pool works with every multiprocessing start method ("fork", "spawn", "forkserver").
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from hfspeech.decoding.decoders import CTCDecoder, DecoderSpec, build_decoder, split_batch
from hfspeech.decoding.timestamps import Transcription

logger = logging.getLogger(__name__)

_WORKER_DECODER: CTCDecoder | None = None


def _initialize_worker(spec: DecoderSpec) -> None:
    global _WORKER_DECODER
    _WORKER_DECODER = build_decoder(spec)


def _decode_in_worker(task: tuple[np.ndarray, tuple[float, float] | None]) -> Transcription:
    log_probs, weights = task
    if _WORKER_DECODER is None:  # pragma: no cover - the initializer always runs first
        raise RuntimeError("decoder worker used before its initializer ran")
    if weights is not None and weights != (_WORKER_DECODER.spec.alpha, _WORKER_DECODER.spec.beta):
        _WORKER_DECODER.set_weights(*weights)
    return _WORKER_DECODER.decode(log_probs)


class DecoderPool:
    """A pool of processes that each hold one decoder built from ``spec``.

    Use as a context manager (or call :meth:`close`)::

        with DecoderPool(spec, num_workers=4, start_method="spawn") as pool:
            transcriptions = pool.decode_batch(log_probs, lengths)

    Args:
        spec: the decoder every worker builds.
        num_workers: worker processes (>= 1).
        start_method: "fork", "spawn", "forkserver" or None for the platform default.
    """

    def __init__(self, spec: DecoderSpec, num_workers: int = 2, start_method: str | None = None) -> None:
        if num_workers < 1:
            raise ValueError(f"DecoderPool: num_workers={num_workers}; use at least 1.")
        methods = multiprocessing.get_all_start_methods()
        if start_method is not None and start_method not in methods:
            raise ValueError(f"DecoderPool: start_method={start_method!r}; this platform offers {methods}.")
        # Fail in the parent, with a readable error, if the spec cannot build (bad LM, ...).
        build_decoder(spec)
        self.spec = spec
        self.num_workers = num_workers
        context = multiprocessing.get_context(start_method)
        self.start_method = context.get_start_method()
        self._pool = context.Pool(num_workers, initializer=_initialize_worker, initargs=(spec,))
        logger.info("started %d %s decoder workers (%s)", num_workers, spec.backend, self.start_method)

    def decode_batch(
        self,
        log_probs: Any,
        lengths: Sequence[int] | None = None,
        progress: bool = False,
        alpha: float | None = None,
        beta: float | None = None,
    ) -> list[Transcription]:
        """Decode utterances in parallel, keeping their order.

        Args:
            log_probs: (B, T, V) padded batch or a list of (T_b, V) arrays.
            lengths: (B,) valid frames per utterance of a padded batch.
            progress: show a tqdm bar.
            alpha, beta: LM weights for this call (default: the spec's); workers keep their
                loaded LM and only swap weights (used by LM-weight tuning).
        """
        if self._pool is None:
            raise ValueError("DecoderPool: the pool is closed; create a new one.")
        items = split_batch(log_probs, lengths)
        weights = None
        if self.spec.lm_path is not None:
            weights = (float(self.spec.alpha if alpha is None else alpha),
                       float(self.spec.beta if beta is None else beta))
        elif alpha is not None or beta is not None:
            raise ValueError("DecoderPool.decode_batch: alpha/beta given but the spec has no LM (lm_path).")
        tasks = [(item, weights) for item in items]
        chunk_size = max(1, len(items) // (4 * self.num_workers))
        results = self._pool.imap(_decode_in_worker, tasks, chunksize=chunk_size)
        return list(tqdm(results, total=len(items), desc="decoding", disable=not progress))

    def close(self) -> None:
        """Stop the workers."""
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> "DecoderPool":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_pool", None) is not None:
            self._pool.terminate()

"""glibc keeps freed large blocks in the process, so a training step reuses the previous step's pages.

glibc serves blocks above its mmap threshold (128 KiB, raised adaptively up to 32 MiB) with
fresh ``mmap`` calls and returns them to the kernel on ``free``; every training step then
touches its activations in fresh pages, one minor page fault (the kernel zeroing a 4 KiB
page) per page, a sizeable share of a small model's CPU step (``benchmarks/RESULTS.md``);
transformers' models pay the same way. Raising the mmap and trim thresholds serves those
blocks from the heap and keeps them there for the next step: the process keeps the memory
it peaked at instead of giving it back between steps (peak RSS itself does not grow).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

from . import FAST_CPU_ENV, enabled

logger = logging.getLogger(__name__)

__all__ = ["keep_freed_memory"]

_MALLOPT_TRIM_THRESHOLD, _MALLOPT_MMAP_THRESHOLD = -1, -3  # glibc's M_TRIM_THRESHOLD, M_MMAP_THRESHOLD


def keep_freed_memory(threshold_bytes: int = 1 << 30) -> bool:
    """Keep freed blocks below ``threshold_bytes`` inside the process (glibc ``mallopt``); True when applied.

    Process-wide and not undone; a no-op (returns False) off glibc, or with ``HFSPEECH_FAST_CPU=0``.
    """
    if not enabled() or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    value = min(int(threshold_bytes), 2**31 - 1)
    applied = bool(mallopt(_MALLOPT_MMAP_THRESHOLD, value)) and bool(mallopt(_MALLOPT_TRIM_THRESHOLD, value))
    if applied:
        logger.debug("glibc mmap/trim thresholds set to %d bytes (%s=0 to opt out).", value, FAST_CPU_ENV)
    return applied

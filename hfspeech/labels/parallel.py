"""Feature groups computed on several cores at once, results kept in stream order.

The MFCC kernel works on 1,024-frame chunks, too small for torch's intra-op threads to pay
(each op forks and joins its team, and when another process takes a core the team waits
for it); whole 200 s groups on separate threads scale instead. `map_in_order` runs a
function over an iterable in a pool of worker threads, each with one torch thread (torch
releases the GIL inside its ops and the kernels' scratch buffers are per thread), and yields
the results in input order with at most ``workers + 1`` of them in flight, so memory stays
bounded and everything downstream (frame sampling, the feature cache, label files) sees
exactly what a single-threaded run would. The calling thread, which consumes the results
(frame sampling, caching, writing), should hold one torch thread too while the pool works
(`torch_threads`): with its own team of intra-op threads spinning between small ops it takes
the cores the workers need.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import torch

Item = TypeVar("Item")
Result = TypeVar("Result")


def default_workers() -> int:
    """Worker threads for the feature and labelling passes: torch's intra-op thread count
    (one per physical core unless ``torch.set_num_threads``/``OMP_NUM_THREADS`` say otherwise)."""
    return max(1, torch.get_num_threads())


def map_in_order(function: Callable[[Item], Result], items: Iterable[Item], workers: int) -> Iterator[Result]:
    """``map(function, items)`` on ``workers`` threads of one torch thread each, in input order.

    ``workers <= 1`` is the plain ``map`` in the calling thread (torch keeps its own threads).
    An exception raised by ``function`` surfaces when its item's turn comes; items read from
    ``items`` but not yet returned are then abandoned.
    """
    if workers <= 1:
        yield from map(function, items)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="hfspeech-features", initializer=torch.set_num_threads,
                            initargs=(1,)) as pool:
        pending: deque[Future[Result]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(function, item))
                if len(pending) > workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """``torch.set_num_threads(count)`` for the calling thread inside the block, restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def pipeline_threads(workers: int) -> Iterator[None]:
    """One torch thread in the calling thread while ``workers > 1`` workers run; else nothing."""
    if workers <= 1:
        yield
        return
    with torch_threads(1):
        yield

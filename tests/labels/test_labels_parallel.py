"""`map_in_order`: results in input order, bounded read-ahead, one torch thread per worker."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from hfspeech.labels.parallel import map_in_order, pipeline_threads, torch_threads


def test_results_keep_the_input_order_and_workers_run_one_torch_thread_each() -> None:
    lock = threading.Lock()
    running, peak, threads_seen = [0], [0], set()

    def work(item: int) -> tuple[int, int, str]:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.002 * (item % 3))  # later items often finish first
        with lock:
            running[0] -= 1
        threads_seen.add(threading.current_thread().name)
        return item, torch.get_num_threads(), threading.current_thread().name

    results = list(map_in_order(work, range(30), workers=3))
    assert [item for item, _, _ in results] == list(range(30))
    assert {threads for _, threads, _ in results} == {1}
    assert 1 < len(threads_seen) <= 3 and peak[0] <= 3
    assert all(name.startswith("hfspeech-features") for name in threads_seen)


def test_read_ahead_is_bounded_by_the_worker_count() -> None:
    pulled = []

    def items():
        for item in range(100):
            pulled.append(item)
            yield item

    stream = map_in_order(lambda item: item, items(), workers=2)
    assert next(stream) == 0
    assert len(pulled) <= 3  # the first result is returned once 3 are in flight
    stream.close()


def test_one_worker_is_plain_map_in_the_calling_thread() -> None:
    caller = threading.current_thread().name
    assert list(map_in_order(lambda item: (item, threading.current_thread().name), [1, 2], workers=1)) == [
        (1, caller), (2, caller)]


def test_an_exception_surfaces_at_its_items_turn() -> None:
    def work(item: int) -> int:
        if item == 4:
            raise ValueError("item 4 is bad")
        return item

    seen = []
    with pytest.raises(ValueError, match="item 4 is bad"):
        for result in map_in_order(work, range(10), workers=3):
            seen.append(result)
    assert seen == [0, 1, 2, 3]


def test_thread_count_contexts_restore_the_callers_setting() -> None:
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pipeline_threads(1):  # one worker: the caller keeps its threads
        assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with pipeline_threads(4):
            assert torch.get_num_threads() == 1
            raise RuntimeError
    assert torch.get_num_threads() == before


def test_a_worker_count_below_one_is_refused() -> None:
    from hfspeech.labels.feature_groups import usable_workers
    from hfspeech.labels.mfcc import MFCCFrameFeatures

    with pytest.raises(ValueError, match="workers must be at least 1"):
        usable_workers(MFCCFrameFeatures(), 0)
    assert usable_workers(MFCCFrameFeatures(), 3) == 3
    assert usable_workers(object(), 3) == 1  # an extractor that does not say it is thread safe: one thread

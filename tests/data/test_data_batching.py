"""Duration-bounded bucketed batching: budgets, coverage, epochs, ranks, resume, streaming."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from hfspeech.data import (
    CTCCollator,
    DurationBucketBatchSampler,
    StreamingBucketBatcher,
    drop_short_utterances,
    load_source,
    pack_by_duration,
    padding_fraction,
)
from helpers import FIXTURES as TEST_FIXTURES

FIXTURES = TEST_FIXTURES / "data"


def lognormal_durations(n: int = 500, seed: int = 0) -> np.ndarray:
    return np.clip(np.random.RandomState(seed).lognormal(np.log(8.0), 0.6, n), 0.5, 30.0)


def test_pack_and_padding_fraction_hand_computed():
    durations = np.array([1.0, 2.0, 3.0, 4.0])
    # adding item 2 to [0, 1] would cost 3 x 3 s = 9 s > 6 s; adding 3 to [2] costs 2 x 4 s = 8 s.
    assert pack_by_duration([0, 1, 2, 3], durations, max_seconds=6.0) == [[0, 1], [2], [3]]
    assert pack_by_duration([0, 1, 2, 3], durations, max_seconds=9.0) == [[0, 1, 2], [3]]
    # batch [0,1,2]: 3 x 3 s padded = 9 s for 6 s real; batch [3]: 4 s for 4 s.
    assert padding_fraction([[0, 1, 2], [3]], durations) == pytest.approx(1 - 10 / 13)
    assert padding_fraction([[0, 1], [2], [3]], durations) == pytest.approx(1 - 10 / 11)
    assert pack_by_duration([0, 1, 2, 3], durations, max_seconds=100.0, max_batch_size=2) == [[0, 1], [2, 3]]


def test_every_batch_within_budget_and_every_item_once_per_epoch():
    durations = lognormal_durations()
    sampler = DurationBucketBatchSampler(durations, max_seconds=60.0, num_buckets=16, seed=3)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert all(len(b) * durations[b].max() <= 60.0 for b in batches)
        assert sorted(i for b in batches for i in b) == list(range(len(durations)))
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first  # epochs reshuffle
    again = DurationBucketBatchSampler(durations, max_seconds=60.0, num_buckets=16, seed=3)
    assert list(again) == first  # same seed, same epoch: same batches


def test_buckets_reduce_padding_against_random_batches():
    durations = lognormal_durations()
    bucketed = DurationBucketBatchSampler(durations, max_seconds=60.0, num_buckets=32, seed=0)
    unbucketed = DurationBucketBatchSampler(durations, max_seconds=60.0, num_buckets=1, seed=0)
    assert bucketed.padding_fraction() < 0.5 * unbucketed.padding_fraction()


def test_too_long_utterance_is_an_error_naming_it():
    with pytest.raises(ValueError, match="utt-b: 12.00 s"):
        DurationBucketBatchSampler([1.0, 12.0], max_seconds=10.0, ids=["utt-a", "utt-b"])


@pytest.mark.parametrize("uneven", ["pad", "drop"])
def test_ranks_are_disjoint_and_even(uneven):
    durations = lognormal_durations(203, seed=1)
    ranks = [DurationBucketBatchSampler(durations, 40.0, seed=5, num_replicas=3, rank=r, uneven=uneven)
             for r in range(3)]
    per_rank = [list(s) for s in ranks]
    assert len({len(b) for b in per_rank}) == 1
    global_batches = ranks[0].global_batches()
    seen = [i for batches in per_rank for b in batches for i in b]
    if uneven == "drop":
        assert len(seen) == len(set(seen))  # no utterance twice
        kept = len(global_batches) - len(global_batches) % 3
        assert sorted(seen) == sorted(i for b in global_batches[:kept] for i in b)
    else:
        assert set(seen) == set(range(len(durations)))  # nothing dropped
        repeated = len(seen) - len(durations)
        assert repeated == sum(len(b) for b in global_batches[: (-len(global_batches)) % 3])


def test_resume_continues_with_the_remaining_batches():
    durations = lognormal_durations()
    sampler = DurationBucketBatchSampler(durations, 60.0, seed=9)
    sampler.set_epoch(2)
    full = list(sampler)
    iterator = iter(sampler)
    consumed = [next(iterator) for _ in range(5)]
    state = sampler.state_dict(consumed_batches=5)
    resumed = DurationBucketBatchSampler(durations, 60.0, seed=9)
    resumed.load_state_dict(state)
    assert len(resumed) == len(full) - 5
    assert consumed + list(resumed) == full
    assert list(resumed) == full  # the following pass is a whole epoch again
    with pytest.raises(ValueError, match="same settings"):
        DurationBucketBatchSampler(durations, 60.0, seed=1).load_state_dict(state)


def test_dataloader_over_real_audio_respects_the_budget():
    dataset = load_source(str(FIXTURES / "fsdd"))
    sampler = DurationBucketBatchSampler(dataset["duration"], max_seconds=1.5, num_buckets=2, seed=0)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=CTCCollator(tokenizer=lambda t: [ord(c) - 64 for c in t if c != " "])
    )
    samples = 0
    for batch in loader:
        assert batch["input_values"].numel() <= 1.5 * 16000 + 1
        samples += int(batch["attention_mask"].sum())
    assert samples == int(round(sum(dataset["duration"]) * 16000))


def test_streaming_batcher_budget_coverage_epochs_and_resume():
    stream = load_source(str(FIXTURES / "fsdd"), streaming=True)
    batcher = StreamingBucketBatcher(stream, max_seconds=1.2, buffer_size=4, shuffle_buffer=3, seed=0)
    epoch0 = [[e["id"] for e in b] for b in batcher]
    for batch in batcher:
        assert len(batch) * max(e["duration"] for e in batch) <= 1.2
    ids = sorted(p.stem for p in (FIXTURES / "fsdd").glob("*.wav"))
    assert sorted(i for b in epoch0 for i in b) == ids
    batcher.set_epoch(1)
    epoch1 = [[e["id"] for e in b] for b in batcher]
    assert sorted(i for b in epoch1 for i in b) == ids and epoch1 != epoch0
    state = batcher.state_dict(consumed_batches=2)
    fresh = StreamingBucketBatcher(load_source(str(FIXTURES / "fsdd"), streaming=True), max_seconds=1.2,
                                   buffer_size=4, shuffle_buffer=3, seed=0)
    fresh.load_state_dict(state)
    assert [[e["id"] for e in b] for b in fresh] == epoch1[2:]


def test_streaming_batcher_ranks_are_disjoint():
    ids = sorted(p.stem for p in (FIXTURES / "fsdd").glob("*.wav"))
    seen = []
    for rank in range(2):
        batcher = StreamingBucketBatcher(load_source(str(FIXTURES / "fsdd"), streaming=True), 5.0,
                                         buffer_size=10, seed=0, num_replicas=2, rank=rank)
        seen.append({e["id"] for b in batcher for e in b})
    assert not seen[0] & seen[1] and sorted(seen[0] | seen[1]) == ids


def test_too_long_in_stream_raises_or_is_counted():
    stream = load_source(str(FIXTURES / "librispeech"), streaming=True)
    with pytest.raises(ValueError, match="103-1240-00.. lasts .* > max_seconds=10.0"):
        list(StreamingBucketBatcher(stream, 10.0, shuffle_buffer=0))
    batcher = StreamingBucketBatcher(stream, 10.0, shuffle_buffer=0, drop_too_long=True)
    kept = [e["id"] for b in batcher for e in b]
    # 103-1240-0004 lasts 12.5 s and 103-1240-0009 10.03 s; only 103-1240-0006 (9.58 s) fits.
    assert kept == ["103-1240-0006"] and batcher.dropped_too_long == 2


def test_drop_short_utterances_counts_against_soundfile():
    import soundfile

    dataset = load_source(str(FIXTURES / "fsdd"))
    min_samples = 8000  # 0.5 s at 16 kHz
    expected_dropped = sum(
        soundfile.info(p).frames * 2 < min_samples for p in (FIXTURES / "fsdd").glob("*.wav")
    )
    kept, dropped = drop_short_utterances(dataset, min_samples=min_samples)
    assert dropped == expected_dropped and 0 < dropped < 6
    assert len(kept) == 6 - dropped and all(len(e["audio"]) >= min_samples for e in kept)
    streamed, count = drop_short_utterances(load_source(str(FIXTURES / "fsdd"), streaming=True), min_samples)
    assert count is None and sorted(e["id"] for e in streamed) == sorted(kept["id"])

"""`fit_and_assign`: one feature pass when the features fit in the cache, the tail recomputed
when they do not, and labels identical to fitting then assigning separately."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hfspeech.labels.assign import read_label_directory, write_label_files
from hfspeech.labels.fit_assign import FeatureCache, fit_and_assign
from hfspeech.labels.kmeans import KMeansModel
from hfspeech.labels.mfcc import MFCCFrameFeatures

pytestmark = pytest.mark.usefixtures("single_thread")


class CountingExtractor(MFCCFrameFeatures):
    """MFCC extractor that counts the utterances whose features it computes."""

    def __init__(self) -> None:
        super().__init__()
        self.computed = 0

    def batch(self, waveforms, utterance_ids):
        self.computed += len(waveforms)
        return super().batch(waveforms, utterance_ids)


def _utterances(count: int = 12) -> list[tuple[str, np.ndarray]]:
    generator = np.random.default_rng(0)
    return [(f"utt{i:02d}", (0.1 * generator.standard_normal(4000 + 800 * i)).astype(np.float32)) for i in range(count)]


@pytest.mark.parametrize("cache_mib", [64.0, 0.0, 0.015])
def test_labels_equal_separate_fit_then_assign_and_features_are_computed_once_if_cached(tmp_path, cache_mib) -> None:
    utterances = _utterances()
    extractor = CountingExtractor()
    models, metadata = fit_and_assign(lambda: iter(utterances), extractor, [5, 8], tmp_path / "labels",
                                      kmeans_dir=tmp_path / "kmeans", fraction=0.5, seed=0, cache_mib=cache_mib,
                                      batch_seconds=1.0)
    total_frames = sum(1 + (len(w) - 400) // 160 for _, w in utterances)
    assert metadata.num_utterances == len(utterances) and metadata.num_frames == total_frames
    if cache_mib == 64.0:  # everything cached: one feature pass
        assert extractor.computed == len(utterances)
    elif cache_mib == 0.0:  # nothing cached: every utterance computed twice
        assert extractor.computed == 2 * len(utterances)
    else:  # a prefix cached (15 KiB of the ~33 KiB of cepstra the cache keeps): between one and two passes
        assert len(utterances) < extractor.computed < 2 * len(utterances)
    # same models, assigned the old way (features recomputed), give the same files
    reloaded = [KMeansModel.load(tmp_path / "kmeans" / f"k{k}") for k in (5, 8)]
    for model, saved in zip(models, reloaded):
        torch.testing.assert_close(model.centroids, saved.centroids)
    write_label_files(iter(utterances), MFCCFrameFeatures(), reloaded, tmp_path / "separate")
    _, ids, labels = read_label_directory(tmp_path / "labels")
    _, separate_ids, separate = read_label_directory(tmp_path / "separate")
    assert ids == separate_ids == [name for name, _ in utterances]
    for k in (5, 8):
        assert all(np.array_equal(a, b) for a, b in zip(labels[k], separate[k]))


def test_cache_keeps_a_prefix_and_stops_at_the_first_group_that_does_not_fit() -> None:
    small = (["a"], [800], [torch.zeros(3, 39)])
    large = (["b"], [8000], [torch.zeros(100, 39)])
    cache = FeatureCache(limit_bytes=4 * 39 * 10)
    cache.offer(small)
    cache.offer(large)
    cache.offer(small)  # would fit, but caching stopped: the cache stays a prefix of the stream
    assert cache.num_utterances == 1 and not cache.complete and cache.num_bytes == 4 * 39 * 3


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="at least one K"):
        fit_and_assign(lambda: iter(_utterances(2)), MFCCFrameFeatures(), [], "unused")
    with pytest.raises(ValueError, match="cache_mib"):
        fit_and_assign(lambda: iter(_utterances(2)), MFCCFrameFeatures(), [2], "unused", cache_mib=-1)


def test_concatenate_frames_shares_memory_only_for_consecutive_splits() -> None:
    from hfspeech.labels.feature_groups import concatenate_frames

    whole = torch.arange(60.0).reshape(20, 3)
    parts = list(whole.split([4, 7, 9]))
    joined = concatenate_frames(parts)
    assert torch.equal(joined, whole) and joined.data_ptr() == whole.data_ptr()
    tail = concatenate_frames(parts[1:])  # a split that does not start at row 0
    assert torch.equal(tail, whole[4:]) and tail.data_ptr() == whole[4:].data_ptr()
    shuffled = [parts[2], parts[0]]  # same storage, not consecutive: copied
    assert torch.equal(concatenate_frames(shuffled), torch.cat(shuffled))
    separate = [torch.ones(2, 3), torch.zeros(3, 3)]
    assert torch.equal(concatenate_frames(separate), torch.cat(separate))


@pytest.mark.parametrize("cache_mib", [64.0, 0.015])
def test_worker_threads_write_the_same_files_as_one_thread(tmp_path, cache_mib) -> None:
    """Groups computed and labelled on 3 threads: same sample, centroids and label files, byte for byte
    (with a partial cache the labelling stream mixes cached groups and recomputed ones)."""
    from hfspeech.labels.feature_groups import sample_fit_frames

    utterances = _utterances(16)
    outputs = {}
    for workers in (1, 3):
        models, _ = fit_and_assign(lambda: iter(utterances), MFCCFrameFeatures(), [5, 8], tmp_path / f"w{workers}",
                                   fraction=0.5, seed=0, cache_mib=cache_mib, batch_seconds=0.6, workers=workers)
        write_label_files(iter(utterances), MFCCFrameFeatures(), models, tmp_path / f"separate{workers}",
                          batch_seconds=0.6, workers=workers)
        sample = sample_fit_frames(iter(utterances), MFCCFrameFeatures(), fraction=0.5, seed=0, batch_seconds=0.6,
                                   workers=workers)
        outputs[workers] = models, sample
        assert torch.get_num_threads() == 1  # the caller's thread count is restored (the fixture set 1)
    for model, threaded in zip(outputs[1][0], outputs[3][0]):
        assert torch.equal(model.centroids, threaded.centroids)
    assert torch.equal(outputs[1][1], outputs[3][1])
    for name in ("k5.km", "k8.km", "ids.txt"):
        single = (tmp_path / "w1" / name).read_bytes()
        assert len(single.splitlines()) == len(utterances)
        assert (tmp_path / "w3" / name).read_bytes() == single
        assert (tmp_path / "separate3" / name).read_bytes() == (tmp_path / "separate1" / name).read_bytes() == single


def test_an_error_on_a_worker_thread_names_the_utterance(tmp_path) -> None:
    utterances = _utterances(10)
    utterances[6] = ("too_short", np.zeros(100, dtype=np.float32))
    with pytest.raises(ValueError, match="utterance too_short: 100 samples is shorter than one"):
        fit_and_assign(lambda: iter(utterances), MFCCFrameFeatures(), [3], tmp_path / "labels", batch_seconds=0.5,
                       workers=3)
    assert torch.get_num_threads() == 1

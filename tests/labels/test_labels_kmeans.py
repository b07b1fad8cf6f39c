"""K-means backends, save/load, frame sampling, streaming label files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from sklearn.cluster import KMeans

from hfspeech.labels.assign import (
    LabelMetadata,
    check_label_length,
    format_label_lines,
    read_km_file,
    read_label_directory,
    write_label_files,
)
from hfspeech.labels.feature_groups import iter_source_utterances
from hfspeech.labels.kmeans import (
    FrameSampler,
    KMeansModel,
    compute_inertia,
    fit_kmeans,
    load_kmeans_models,
    nearest_centroids,
)
from hfspeech.labels.mfcc import MFCCFrameFeatures, compute_mfcc_batch
from helpers import FIXTURES

AUDIO = FIXTURES / "labels" / "audio"


pytestmark = pytest.mark.usefixtures("single_thread")


def _real_mfcc_frames() -> torch.Tensor:
    waveforms = [soundfile.read(path, dtype="float32")[0] for path in sorted(AUDIO.glob("*.flac"))]
    return torch.cat(compute_mfcc_batch(waveforms))


def _blobs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.RandomState(seed)
    centres = rng.normal(scale=10.0, size=(5, 3))
    labels = rng.randint(5, size=600)
    return torch.tensor(centres[labels] + rng.normal(size=(600, 3)), dtype=torch.float32), torch.tensor(labels)


def test_torch_backend_recovers_separated_blobs() -> None:
    points, truth = _blobs()
    model = fit_kmeans(points, 5, backend="torch", seed=0)
    predicted = model.predict(points)
    # the partition equals the true one up to renaming the clusters
    pairs = set(zip(predicted.tolist(), truth.tolist()))
    assert len(pairs) == 5
    assert model.inertia == pytest.approx(compute_inertia(points, model.centroids))
    assert model.inertia < 1.2 * 3 * 600  # within-cluster variance is 1 per dimension


def test_backends_agree_on_real_mfcc_frames() -> None:
    frames = _real_mfcc_frames()  # ~430 frames of AN4 speech
    fast = fit_kmeans(frames, 16, backend="torch", seed=0)
    fairseq = fit_kmeans(frames, 16, backend="sklearn", seed=0, batch_size=256)
    assert fast.inertia <= 1.02 * fairseq.inertia
    # against the best of 10 full Lloyd runs (sklearn KMeans), one converged run is within 3 %
    converged = fit_kmeans(frames, 16, backend="torch", seed=0, tol=1e-6)
    lloyd = KMeans(16, n_init=10, random_state=0).fit(frames.numpy())
    assert converged.inertia <= 1.03 * lloyd.inertia_
    assert fast.num_fit_frames == frames.shape[0] and fast.dim == 39


def test_fit_is_seeded() -> None:
    points, _ = _blobs(1)
    a = fit_kmeans(points, 7, seed=3)
    b = fit_kmeans(points, 7, seed=3)
    torch.testing.assert_close(a.centroids, b.centroids)


def test_k_larger_than_frames_raises() -> None:
    with pytest.raises(ValueError, match="K=50 clusters but only 10 frames"):
        fit_kmeans(torch.randn(10, 3), 50)
    with pytest.raises(ValueError, match="unknown k-means backend"):
        fit_kmeans(torch.randn(10, 3), 2, backend="faiss")


def test_save_load_round_trip_without_pickle(tmp_path: Path) -> None:
    points, _ = _blobs(2)
    model = fit_kmeans(points, 4, seed=0, feature="mfcc")
    model.save(tmp_path / "k4")
    assert sorted(p.name for p in (tmp_path / "k4").iterdir()) == ["centroids.safetensors", "kmeans.json"]
    loaded = KMeansModel.load(tmp_path / "k4")
    torch.testing.assert_close(loaded.centroids, model.centroids)
    assert (loaded.inertia, loaded.feature, loaded.num_clusters) == (model.inertia, "mfcc", 4)
    fit_kmeans(points, 2, seed=0).save(tmp_path / "k2")
    assert [m.num_clusters for m in load_kmeans_models(tmp_path)] == [2, 4]
    with pytest.raises(FileNotFoundError, match="kmeans.json"):
        KMeansModel.load(tmp_path / "missing")


def test_predict_rejects_wrong_feature_dimension() -> None:
    model = fit_kmeans(torch.randn(50, 39), 3)
    with pytest.raises(ValueError, match="utterance spk1/utt7: features of shape \\(20, 768\\)"):
        model.predict(torch.randn(20, 768), utterance_id="spk1/utt7")


def test_frame_sampler_fraction_and_reservoir() -> None:
    frames = torch.arange(10000, dtype=torch.float32)[:, None]
    sampler = FrameSampler(fraction=0.1, seed=0)
    for chunk in frames.split(333):
        sampler.add(chunk)
    assert 850 < sampler.sample().shape[0] < 1150
    reservoir = FrameSampler(max_frames=500, seed=0)
    for chunk in frames.split(333):
        reservoir.add(chunk)
    sample = reservoir.sample()[:, 0]
    assert sample.shape[0] == 500 and sample.unique().shape[0] == 500
    # uniform over the stream: the mean index is near the middle, not biased to the first chunks
    assert abs(float(sample.mean()) - 5000) < 600


def test_km_files_round_trip_and_match_direct_prediction(tmp_path: Path) -> None:
    extractor = MFCCFrameFeatures()
    utterances = list(iter_source_utterances(str(AUDIO)))
    frames = torch.cat(extractor.batch([w for _, w in utterances], [n for n, _ in utterances]))
    models = [fit_kmeans(frames, k, seed=0, feature="mfcc") for k in (5, 12)]
    metadata = write_label_files(iter(utterances), extractor, models, tmp_path, batch_seconds=1.5)
    assert metadata.label_rate == 100.0 and metadata.num_clusters == [5, 12]
    loaded_meta, ids, labels = read_label_directory(tmp_path)
    assert loaded_meta == LabelMetadata.load(tmp_path)
    assert ids == [name for name, _ in utterances]
    for (name, waveform), row5, row12 in zip(utterances, labels[5], labels[12]):
        features = extractor.batch([waveform], [name])[0]
        np.testing.assert_array_equal(row5, models[0].predict(features).numpy())
        np.testing.assert_array_equal(row12, models[1].predict(features).numpy())
        check_label_length(name, len(row5), len(waveform), metadata.label_rate)
    assert (tmp_path / "k5.km").read_text().splitlines()[0] == " ".join(map(str, labels[5][0]))
    assert len(read_km_file(tmp_path / "k12.km")) == 3


@pytest.mark.parametrize("num_clusters", [1, 10, 100, 1000, 12345])
def test_km_lines_are_the_plain_join(num_clusters: int) -> None:
    rng = np.random.default_rng(num_clusters)
    counts = rng.integers(1, 300, size=40)
    labels = rng.integers(0, num_clusters, size=int(counts.sum()))
    rows = np.split(labels, np.cumsum(counts)[:-1])
    expected = "".join(" ".join(map(str, row.tolist())) + "\n" for row in rows).encode()
    assert format_label_lines(labels, counts) == expected
    assert format_label_lines(np.array([3, 14, 15]), np.array([2, 0, 1])) == b"3 14\n\n15\n"  # an empty line


def test_predict_without_distances_equals_labels_with_them() -> None:
    frames = _real_mfcc_frames()
    model = fit_kmeans(frames, 12, seed=0)
    labels, distances = nearest_centroids(frames, model.centroids, chunk_size=100)
    assert torch.equal(model.predict(frames), labels)
    squared = ((frames[:, None, :] - model.centroids[None]) ** 2).sum(-1)
    torch.testing.assert_close(distances, squared.min(1).values, rtol=1e-4, atol=1e-2)


def test_label_length_check_catches_rate_mix_up() -> None:
    check_label_length("u1", 98, 16000, 100.0)
    with pytest.raises(ValueError, match="utterance u1: 49 labels at 100 Hz"):
        check_label_length("u1", 49, 16000, 100.0)


def test_streaming_sources_label_lazily(tmp_path: Path) -> None:
    from hfspeech.labels.assign import iter_labels

    extractor = MFCCFrameFeatures()
    model = fit_kmeans(torch.randn(200, 39), 4, seed=0)
    pulled = []

    def stream():
        for index in range(1000):  # far more audio than one 1 s group
            pulled.append(index)
            yield f"u{index}", np.full(8000, 0.01 * (index % 7), dtype=np.float32) + np.sin(np.arange(8000) * 0.01 * (index + 1)).astype(np.float32)

    labels = iter_labels(stream(), extractor, [model], batch_seconds=1.0)
    first = next(labels)
    assert first[0] == "u0" and len(pulled) <= 3  # bounded look-ahead, nothing dumped

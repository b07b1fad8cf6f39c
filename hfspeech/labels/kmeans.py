"""K-means for HuBERT targets: one interface, two backends, safe save/load.

* ``backend="sklearn"``: scikit-learn ``MiniBatchKMeans`` with fairseq's settings
  (``examples/hubert/simple_kmeans/learn_kmeans.py``: k-means++ init, max_iter 100,
  batch_size 10000, tol 0.0, max_no_improvement 100, n_init 20, reassignment_ratio 0.0) —
  the fidelity reference.
* ``backend="torch"``: greedy k-means++ initialisation on a random subset, then full-batch
  Lloyd iterations with chunked ``||x||² - 2 x·c + ||c||²`` assignment and ``index_add_``
  updates, on whatever device the features are on (GPU when available).

Models are saved as ``centroids.safetensors`` + ``kmeans.json`` (no pickle).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .scratch import scratch

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "sklearn")
CENTROIDS_FILE = "centroids.safetensors"
# Frames per distance block: 4,096 x K scores stay in the CPU cache (K=100: 1.6 MB); on this
# CPU assigning 656k MFCC frames to 100 centres takes 0.11 s in 4,096-frame blocks, 0.15 s in 65,536.
DISTANCE_CHUNK_FRAMES = 4096
METADATA_FILE = "kmeans.json"


@dataclass
class KMeansModel:
    """Fitted centroids plus what is needed to reuse them.

    Attributes:
        centroids: (K, D) float32 cluster centres.
        inertia: sum of squared distances of the fit frames to their nearest centre.
        num_fit_frames: number of frames the model was fitted on.
        backend: "torch" or "sklearn".
        feature: feature spec the centroids live in ("mfcc" or "MODEL_DIR:LAYER").
        seed: seed of the fit.
        fit_seconds: wall time of the fit.
    """

    centroids: torch.Tensor
    inertia: float
    num_fit_frames: int
    backend: str
    feature: str = ""
    seed: int = 0
    fit_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def num_clusters(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def predict(
        self, features: torch.Tensor, utterance_id: str = "<features>", chunk_size: int = DISTANCE_CHUNK_FRAMES
    ) -> torch.Tensor:
        """Nearest-centre labels.

        Args:
            features: (T, D) frames (D must equal the model's dimension).
            utterance_id: used in the error message.
        Returns:
            (T,) int64 labels on the features' device.
        """
        features = torch.as_tensor(features)
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(
                f"utterance {utterance_id}: features of shape {tuple(features.shape)} do not match this "
                f"k-means model (K={self.num_clusters}, fitted on {self.dim}-dim '{self.feature}' features); "
                "compute the same features the model was fitted on"
            )
        centroids = self.centroids.to(device=features.device, dtype=torch.float32)
        labels, _ = nearest_centroids(features.float(), centroids, chunk_size, with_distances=False)
        return labels

    def save(self, directory: str | Path) -> Path:
        """Write ``centroids.safetensors`` and ``kmeans.json`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"centroids": self.centroids.detach().cpu().float().contiguous()}, str(directory / CENTROIDS_FILE))
        metadata = {k: v for k, v in asdict(self).items() if k != "centroids"}
        metadata["num_clusters"] = self.num_clusters
        metadata["dim"] = self.dim
        (directory / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "KMeansModel":
        """Load a model written by `save`."""
        directory = Path(directory)
        for name in (CENTROIDS_FILE, METADATA_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name} not found: pass a directory written by "
                                        "`hfspeech labels fit` (it holds centroids.safetensors and kmeans.json)")
        metadata = json.loads((directory / METADATA_FILE).read_text())
        centroids = load_file(str(directory / CENTROIDS_FILE))["centroids"]
        if tuple(centroids.shape) != (metadata["num_clusters"], metadata["dim"]):
            raise ValueError(f"{directory}: centroids shape {tuple(centroids.shape)} disagrees with kmeans.json "
                             f"(K={metadata['num_clusters']}, D={metadata['dim']}); the files are from different fits")
        fields = {k: metadata[k] for k in ("inertia", "num_fit_frames", "backend", "feature", "seed", "fit_seconds", "extra")}
        return cls(centroids=centroids, **fields)


def load_kmeans_models(path: str | Path) -> list[KMeansModel]:
    """One model directory, or a directory of model directories (an ensemble, sorted by K)."""
    path = Path(path)
    if (path / METADATA_FILE).is_file():
        return [KMeansModel.load(path)]
    if not path.is_dir():
        raise FileNotFoundError(f"k-means directory {path} does not exist")
    models = [KMeansModel.load(sub) for sub in sorted(path.iterdir()) if (sub / METADATA_FILE).is_file()]
    if not models:
        raise FileNotFoundError(f"{path} holds no k-means model (no kmeans.json in it or its sub-directories)")
    return sorted(models, key=lambda model: model.num_clusters)


def nearest_centroids(
    features: torch.Tensor, centroids: torch.Tensor, chunk_size: int = DISTANCE_CHUNK_FRAMES,
    feature_norms: torch.Tensor | None = None, with_distances: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Labels (N,) int64 and squared distances (N,) float32 of (N, D) frames to (K, D) centres.

    ``feature_norms`` (N,) are the frames' squared norms when the caller already has them
    (Lloyd passes reuse them); ``with_distances=False`` returns ``None`` for the distances and
    skips computing them (labelling needs only the arg-min). Scores are computed block by
    block into one reused (chunk, K) buffer and the labels written in place.
    """
    n = features.shape[0]
    centroid_norms = centroids.pow(2).sum(1)
    labels = torch.empty(n, dtype=torch.int64, device=features.device)
    distances = torch.empty(n, dtype=features.dtype, device=features.device) if with_distances else None
    scores = scratch("distance scores", (min(n, chunk_size), centroids.shape[0]), features.device, features.dtype)
    for start in range(0, n, chunk_size):
        chunk = features[start : start + chunk_size]
        stop = start + chunk.shape[0]
        block = scores[: chunk.shape[0]]
        torch.addmm(centroid_norms, chunk, centroids.T, alpha=-2.0, out=block)  # (n, K) = ||c||² - 2 x·c
        best = _row_minima(block, labels[start:stop], with_distances)
        if distances is not None:
            norms = feature_norms[start:stop] if feature_norms is not None else chunk.pow(2).sum(1)
            torch.add(best, norms, out=distances[start:stop]).clamp_min_(0.0)
    return labels, distances


def _row_minima(scores: torch.Tensor, index: torch.Tensor, with_minima: bool = True) -> torch.Tensor | None:
    """Writes each row's first arg-min of (n, K) ``scores`` into ``index`` (n,) int64; returns the minima.

    On the CPU NumPy's argmin plus a gather is faster than ``torch.min(dim=1)``, whose arg-min
    otherwise costs as much as the distance matmul; other devices use ``torch.min``.
    """
    if scores.device.type != "cpu":
        best, index[:] = scores.min(dim=1)
        return best
    np.argmin(scores.numpy(), axis=1, out=index.numpy())
    return scores.gather(1, index[:, None]).squeeze(1) if with_minima else None


def compute_inertia(features: torch.Tensor, centroids: torch.Tensor) -> float:
    """Sum over frames of the squared distance to the nearest centre (float64 accumulation)."""
    _, distances = nearest_centroids(features.float(), centroids.to(features.device).float())
    return float(distances.double().sum())


def _kmeans_plus_plus(features: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ (sklearn's variant: 2 + ln K candidates per step, keep the best)."""
    n = features.shape[0]
    trials = 2 + int(math.log(k))
    norms = features.pow(2).sum(1)
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [features[first]]
    closest = (norms - 2 * features @ features[first] + norms[first]).clamp_min(0.0)
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than K: duplicates are unavoidable
            candidates = torch.randint(n, (trials,), generator=generator)
        else:  # inverse-CDF sampling proportional to the squared distance
            cumulative = closest.double().cumsum(0)
            draws = torch.rand(trials, generator=generator, dtype=torch.float64).to(features.device) * cumulative[-1]
            candidates = torch.searchsorted(cumulative, draws).clamp_max(n - 1)
        candidates = candidates.to(features.device)
        distance = (norms[None, :] - 2 * features[candidates] @ features.T + norms[candidates, None]).clamp_min(0.0)
        candidate_closest = torch.minimum(closest[None, :], distance)
        best = int(candidate_closest.sum(1).argmin())
        closest = candidate_closest[best]
        centres.append(features[candidates[best]])
    return torch.stack(centres)


def _lloyd(
    features: torch.Tensor, centroids: torch.Tensor, max_iter: int, tol: float, chunk_size: int,
    previous: float = math.inf,
) -> tuple[torch.Tensor, int, float]:
    """Full-batch Lloyd iterations on (N, D) frames from (K, D) centres.

    Stops when the mean squared distance per frame improves by less than ``tol`` (relative)
    over ``previous`` (the last value of an earlier stage on a random subset, so a stage that
    starts converged stops after one pass). Returns centres, iterations, last mean inertia.
    """
    k = centroids.shape[0]
    iterations = 0
    inertia = math.inf
    norms = features.pow(2).sum(1)  # the same every pass
    for iterations in range(1, max_iter + 1):
        labels, distances = nearest_centroids(features, centroids, chunk_size, feature_norms=norms)
        inertia = float(distances.double().mean())
        sums = torch.zeros_like(centroids).index_add_(0, labels, features)
        counts = torch.bincount(labels, minlength=k).to(features.dtype)
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp_min(1)[:, None])
        if empty.any():  # move empty clusters onto the frames farthest from their centre
            far = distances.topk(int(empty.sum())).indices
            centroids[empty] = features[far]
        logger.debug("k-means iteration %d on %d frames: inertia %.6g", iterations, features.shape[0], inertia)
        if previous - inertia <= tol * max(inertia, 1e-12) and not empty.any():
            break
        previous = inertia
    return centroids, iterations, inertia


def _fit_torch(
    features: torch.Tensor, k: int, seed: int, max_iter: int, tol: float, init_size: int | None,
    coarse_size: int | None, chunk_size: int,
) -> tuple[torch.Tensor, dict]:
    """k-means++ on ``init_size`` frames, Lloyd on ``coarse_size`` frames, then Lloyd on all frames."""
    generator = torch.Generator().manual_seed(seed)
    n = features.shape[0]
    init_size = min(n, init_size if init_size is not None else max(10_000, 50 * k))
    coarse_size = min(n, coarse_size if coarse_size is not None else max(init_size, 500 * k))
    order = torch.randperm(n, generator=generator).to(features.device)
    centroids = _kmeans_plus_plus(features[order[:init_size]], k, generator)
    coarse_iterations, previous = 0, math.inf
    if coarse_size < n:
        centroids, coarse_iterations, previous = _lloyd(features[order[:coarse_size]], centroids, max_iter, tol, chunk_size)
    centroids, iterations, _ = _lloyd(features, centroids, max_iter, tol, chunk_size, previous)
    return centroids, {"iterations": iterations, "coarse_iterations": coarse_iterations,
                       "init_size": init_size, "coarse_size": coarse_size}


def _fit_sklearn(features: torch.Tensor, k: int, seed: int, max_iter: int, batch_size: int) -> tuple[torch.Tensor, dict]:
    from sklearn.cluster import MiniBatchKMeans

    model = MiniBatchKMeans(
        n_clusters=k, init="k-means++", max_iter=max_iter, batch_size=batch_size, tol=0.0,
        max_no_improvement=100, n_init=20, reassignment_ratio=0.0, random_state=seed,
        compute_labels=False, init_size=None, verbose=0,
    )
    model.fit(features.cpu().numpy().astype(np.float32))
    return torch.from_numpy(model.cluster_centers_.astype(np.float32)), {"n_steps": int(model.n_steps_)}


def fit_kmeans(
    features: torch.Tensor | np.ndarray,
    k: int,
    backend: str = "torch",
    seed: int = 0,
    max_iter: int = 100,
    tol: float = 1e-3,
    init_size: int | None = None,
    coarse_size: int | None = None,
    batch_size: int = 10000,
    chunk_size: int = DISTANCE_CHUNK_FRAMES,
    feature: str = "",
) -> KMeansModel:
    """Fit K centres on (N, D) frames.

    Args:
        features: (N, D) float frames (the random sample; see `FrameSampler`).
        k: number of clusters (must not exceed N).
        backend: "torch" (fast Lloyd) or "sklearn" (fairseq's MiniBatchKMeans settings).
        seed: seeds k-means++ and the mini-batches.
        max_iter: Lloyd iterations (torch) / epochs (sklearn, fairseq uses 100).
        tol: torch backend stops when the mean inertia improves by less than ``tol`` (relative)
            between Lloyd passes (1e-3 already beats fairseq's MiniBatchKMeans inertia).
        init_size: frames used for the torch k-means++ initialisation (default max(10000, 50 K)).
        coarse_size: frames of the torch backend's first Lloyd pass, which converges on a random
            subset before the full-data passes (default max(init_size, 500 K)); >= N disables it.
        batch_size: sklearn mini-batch size (fairseq: 10000).
        chunk_size: rows per distance block in the torch backend (bounds memory to chunk × K).
        feature: feature spec stored with the model.
    Returns:
        the fitted `KMeansModel`, inertia computed on ``features`` for either backend.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown k-means backend {backend!r}; choose one of {BACKENDS}")
    features = torch.as_tensor(features).float()
    if features.ndim != 2:
        raise ValueError(f"k-means expects (N, D) frames, got shape {tuple(features.shape)}")
    if not 1 <= k <= features.shape[0]:
        raise ValueError(f"K={k} clusters but only {features.shape[0]} frames to fit on; use K <= number of "
                         "frames (more data, a larger sampling fraction, or a smaller K)")
    # a NaN or inf frame makes the sum non-finite; only then (or on overflow) check frame by frame
    if not math.isfinite(float(features.sum())) and not torch.isfinite(features).all():
        raise ValueError("k-means features contain NaN or inf values")
    start = time.perf_counter()
    if backend == "torch":
        centroids, extra = _fit_torch(features, k, seed, max_iter, tol, init_size, coarse_size, chunk_size)
    else:
        centroids, extra = _fit_sklearn(features, k, seed, max_iter, batch_size)
    seconds = time.perf_counter() - start
    inertia = compute_inertia(features, centroids)
    logger.info("k-means %s K=%d on %d frames: inertia %.6g (%.1f s)", backend, k, features.shape[0], inertia, seconds)
    return KMeansModel(
        centroids=centroids.cpu().float(), inertia=inertia, num_fit_frames=int(features.shape[0]),
        backend=backend, feature=feature, seed=seed, fit_seconds=seconds, extra=extra,
    )


class FrameSampler:
    """Uniform random sample of frames from a stream of utterances, memory bounded.

    Either keep each frame with probability ``fraction``, or keep a uniform sample of at most
    ``max_frames`` frames (exact reservoir sampling: every frame gets a random key and the
    ``max_frames`` smallest keys are kept; the pool is pruned whenever it exceeds twice the
    cap, so memory stays below 2 x max_frames frames and the work is amortised O(1) per frame).
    Both may be given: the fraction is applied first.
    """

    def __init__(self, fraction: float = 1.0, max_frames: int | None = None, seed: int = 0) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"sampling fraction must be in (0, 1], got {fraction}")
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be positive, got {max_frames}")
        self.fraction = fraction
        self.max_frames = max_frames
        self.generator = torch.Generator().manual_seed(seed)
        self._frames: list[torch.Tensor] = []
        self._keys: list[torch.Tensor] = []
        self._pooled = 0
        self.frames_seen = 0

    def add(self, features: torch.Tensor) -> None:
        """Offer (T, D) frames of one utterance."""
        features = features.detach().float().cpu()
        self.frames_seen += features.shape[0]
        if self.fraction < 1.0:
            keep = torch.rand(features.shape[0], generator=self.generator) < self.fraction
            features = features[keep]
        self._frames.append(features)
        self._pooled += features.shape[0]
        if self.max_frames is not None:
            self._keys.append(torch.rand(features.shape[0], generator=self.generator))
            if self._pooled > 2 * self.max_frames:
                self._prune()

    def _prune(self) -> None:
        frames, keys = torch.cat(self._frames), torch.cat(self._keys)
        if frames.shape[0] > self.max_frames:
            kept = keys.topk(self.max_frames, largest=False).indices.sort().values
            frames, keys = frames[kept], keys[kept]
        self._frames, self._keys, self._pooled = [frames], [keys], frames.shape[0]

    def sample(self) -> torch.Tensor:
        """(N, D) sampled frames."""
        if self._pooled == 0:
            raise ValueError("no frames were sampled: the data is empty or the fraction too small")
        if self.max_frames is not None:
            self._prune()
        return torch.cat(self._frames)

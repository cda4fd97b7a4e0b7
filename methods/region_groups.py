"""The re-weighting groups of a split (DESIGN.md 2.6): k-means over its regions' teacher features, in memory
that does not grow with the split.

The regions are streamed (scene by scene) through a seeded reservoir sample of at most ``capacity`` rows
(``RegionSample``; a split with fewer regions is sampled whole, in order), k-means is fitted on the sample,
and every region is then assigned to its nearest centroid one chunk at a time for the counts. Peak memory is
the sample and one chunk, whatever the number of frames.

k-means is scikit-learn's ``KMeans`` (Lloyd, k-means++ initialisation from the seed, one start, iterating
until the centroids move less than ``tol``, at most ``max_iter`` times), on one thread so the groups are the
same bytes whatever the machine's threads or processes. Measured on the paper's shape (200,000 x 768
features around 64 centres, K = 32, one thread, ``python -m bench.perf kmeans``, 2026-12-07): scipy's
``kmeans2`` (10 fixed iterations, k-means++) 48 s, inertia 1.127e8; ``KMeans`` converged in 4 iterations,
10 s, inertia 1.114e8; ``MiniBatchKMeans`` 2.0 s, inertia 1.116e8. ``KMeans`` is taken: 4.8x faster than
``kmeans2``, converged (with the iterations and inertia to show it) and the lowest inertia; the groups are
fitted once per split, so MiniBatchKMeans's further 8 s would not pay for its 0.2 % higher inertia.
"""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import torch

TOLERANCE = 1e-4  # scikit-learn's default: relative change of the centroids that stops the iterations
MAX_ITERATIONS = 300


@dataclasses.dataclass(frozen=True)
class GroupFit:
    """A k-means fit: centroids (K', C) float64, the sample's assignment, iterations run, inertia."""

    centroids: np.ndarray
    assignment: np.ndarray
    iterations: int
    inertia: float


def cluster_region_features(features: np.ndarray | torch.Tensor, num_groups: int = 32, seed: int = 0,
                            tol: float = TOLERANCE, max_iter: int = MAX_ITERATIONS) -> GroupFit:
    """k-means of region features (module docstring).

    Args:
      features: (R, C) float region features, R >= 1.
      num_groups: requested K [choice: 32].
      seed: seeds the k-means++ initialisation; same seed and data give the same result, bytes included.

    K' = min(num_groups, number of distinct feature rows): duplicate rows cannot seed separate clusters, so
    asking for more groups than distinct rows would only create empty groups.
    """
    from sklearn.cluster import KMeans  # scikit-learn costs a second to import; only preparation needs it
    from threadpoolctl import threadpool_limits

    # Our own float64 copy, so scikit-learn may centre it in place (copy_x=False) instead of copying it again:
    # at 200,000 x 768 that is 1.2 GB less at the peak, the same bytes out.
    data = np.array(features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else features,
                    dtype=np.float64, copy=True)
    if data.ndim != 2 or data.shape[0] == 0:
        raise ValueError(f"features: expected a non-empty (R, C) array, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError("features: expected finite values, got NaN or inf")
    if num_groups < 1:
        raise ValueError(f"num_groups: expected >= 1, got {num_groups}")
    k = min(num_groups, _distinct_rows_up_to(data, num_groups))
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Number of distinct clusters")
        fit = KMeans(n_clusters=k, init="k-means++", n_init=1, tol=tol, max_iter=max_iter,
                     random_state=seed, algorithm="lloyd", copy_x=False).fit(data)
    return GroupFit(fit.cluster_centers_, fit.labels_.astype(np.int64), int(fit.n_iter_), float(fit.inertia_))


def _distinct_rows_up_to(data: np.ndarray, limit: int) -> int:
    """min(limit, number of distinct rows of ``data``), exactly.

    ``np.unique(data, axis=0)`` sorts a copy of every row (at the paper's sample, gigabytes); a seeded hash
    of each row's bytes answers the usual case alone: ``limit`` distinct hashes are ``limit`` distinct rows.
    Only fewer distinct hashes than ``limit`` (collisions are possible, so not proof) asks for the exact count.
    """
    multipliers = np.random.default_rng(0).integers(1, 2**63, data.shape[1], dtype=np.uint64) | np.uint64(1)
    hashes = np.empty(len(data), np.uint64)
    for start in range(0, len(data), 8192):
        words = (data[start:start + 8192] + 0.0).view(np.uint64)  # + 0.0: -0.0 and 0.0 are one value, one hash
        with np.errstate(over="ignore"):  # arithmetic modulo 2**64 is the point
            hashes[start:start + 8192] = (words * multipliers).sum(axis=1, dtype=np.uint64)
    if len(np.unique(hashes)) >= limit:
        return limit
    return min(limit, len(np.unique(data, axis=0)))


class RegionSample:
    """A seeded reservoir sample (Vitter's algorithm R) of at most ``capacity`` rows of a stream of region
    features: every row ends in it with the same chance, whatever the stream's length, and the same stream
    and seed give the same sample. Fewer rows than ``capacity``: all of them, in order."""

    def __init__(self, capacity: int, seed: int):
        self.capacity = int(capacity)
        self._rng = np.random.default_rng(seed)
        self._rows: list[np.ndarray] = []  # while the stream still fits
        self._sample: np.ndarray | None = None
        self.seen = 0

    def add(self, features: np.ndarray) -> None:
        """Take the next rows (R, C) of the stream."""
        features = np.asarray(features, dtype=np.float32)
        if self._sample is None and self.seen + len(features) <= self.capacity:
            self._rows.append(features)
            self.seen += len(features)
            return
        if self._sample is None:
            self._sample = np.concatenate(self._rows + [features[:self.capacity - self.seen]])
            features, self.seen, self._rows = features[self.capacity - self.seen:], self.capacity, []
        if len(features):
            # Row t (0-based over the stream) replaces slot j ~ U{0..t} when j < capacity; a later row of the
            # same slot wins, as if the rows came one at a time.
            slots = self._rng.integers(0, np.arange(self.seen, self.seen + len(features)) + 1)
            keep = slots < self.capacity
            self._sample[slots[keep]] = features[keep]
            self.seen += len(features)

    def rows(self) -> np.ndarray:
        """The sample (n, C) float32, n = min(capacity, rows seen)."""
        if self._sample is not None:
            return self._sample
        return np.concatenate(self._rows) if self._rows else np.zeros((0, 0), np.float32)

"""Centre samplers for the KNN tokenizer and the per-region FPS used by the SAM-guided tokenizer.

A sampler is a small callable ``sampler(xyz, num, rng) -> indices`` (``xyz`` (N,3) float numpy,
``rng`` a ``numpy.random.Generator``) returning ``min(num, N)`` int64 point indices; it is wired by
reference (``KnnTokenizer.sampler = @ExactFPS()``), never chosen by a string.

Exact FPS keeps float32 arithmetic in the same order as the usual PyTorch loop
(``((xyz - c) ** 2).sum(-1)``, ``torch.minimum``, first-index ``argmax``), so it picks the very same
points; it is fast because the loop runs on preallocated numpy buffers with in-place ops instead of
allocating tensors and reducing a 3-wide last axis every iteration.
"""
from __future__ import annotations

import gin
import numpy as np


def farthest_point_sampling(xyz: np.ndarray, num: int, start: int = 0) -> np.ndarray:
    """Exact FPS: ``num`` indices, first ``start``, each next one the farthest from those chosen.

    Ties go to the lowest index. Once every remaining point coincides with a chosen one, FPS
    picks already-chosen locations again (as every FPS implementation does).
    """
    x, y, z = (np.ascontiguousarray(xyz[:, i]) for i in range(3))
    mind = np.full(len(x), np.inf, dtype=x.dtype)
    d = np.empty_like(mind)
    t = np.empty_like(mind)
    out = np.empty(num, dtype=np.int64)
    far = int(start)
    for i in range(num):
        out[i] = far
        # d = ((x-cx)^2 + (y-cy)^2) + (z-cz)^2, the same rounding as the torch reference.
        np.subtract(x, x[far], out=d)
        np.multiply(d, d, out=d)
        np.subtract(y, y[far], out=t)
        np.multiply(t, t, out=t)
        d += t
        np.subtract(z, z[far], out=t)
        np.multiply(t, t, out=t)
        d += t
        np.minimum(mind, d, out=mind)
        far = int(mind.argmax())
    return out


@gin.register
class ExactFPS:
    """Exact farthest point sampling; the seeded generator picks the start point."""

    def __call__(self, xyz: np.ndarray, num: int, rng: np.random.Generator) -> np.ndarray:
        n = len(xyz)
        return farthest_point_sampling(xyz, min(num, n), start=int(rng.integers(n)))


@gin.register
class RandomSampler:
    """Uniform random centres without replacement (fast, uneven coverage)."""

    def __call__(self, xyz: np.ndarray, num: int, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(len(xyz), size=min(num, len(xyz)), replace=False).astype(np.int64)


@gin.register
class SubsampledFPS:
    """Approximate FPS: exact FPS on a random subset of ``factor * num`` points."""

    def __init__(self, factor: int = 4):
        if factor < 1:
            raise ValueError(f"factor: expected an integer >= 1, got {factor}")
        self.factor = int(factor)

    def __call__(self, xyz: np.ndarray, num: int, rng: np.random.Generator) -> np.ndarray:
        n = len(xyz)
        subset = np.sort(rng.choice(n, size=min(n, self.factor * num), replace=False))
        picked = farthest_point_sampling(xyz[subset], min(num, n), start=int(rng.integers(len(subset))))
        return subset[picked]


def segment_fps(xyz: np.ndarray, counts: np.ndarray, seeds: np.ndarray, first: np.ndarray) -> np.ndarray:
    """FPS inside every segment at once; returns the rank of each point's nearest seed in its segment.

    ``xyz`` (P,3) holds the segments' points contiguously, segment s has ``counts[s] >= 1`` points and
    wants ``seeds[s] >= 1`` seeds; ``seeds`` must be non-increasing so the segments still sampling
    at iteration j are a prefix and each step works on a slice, not a gather. ``first[s]`` is the
    offset of its first seed. Ties keep the earlier seed; the next seed is the first farthest point.
    One loop over FPS iterations (max seeds), vectorised over segments; float32 throughout (it only
    decides the split, never a coordinate).
    """
    return _segment_fps(xyz, counts, seeds, first)[0]


def segment_fps_seeds(xyz: np.ndarray, counts: np.ndarray, seeds: np.ndarray, first: np.ndarray) -> np.ndarray:
    """The seeds ``segment_fps`` picks: (sum(seeds),) positions into ``xyz``, by segment, then in FPS order."""
    return _segment_fps(xyz, counts, seeds, first)[1]


def _segment_fps(xyz: np.ndarray, counts: np.ndarray, seeds: np.ndarray,
                 first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(label, seed positions) of ``segment_fps``."""
    x, y, z = (np.ascontiguousarray(xyz[:, i], dtype=np.float32) for i in range(3))
    ends = np.cumsum(counts)
    starts = ends - counts
    mind = np.full(len(x), np.inf, dtype=np.float32)
    label = np.zeros(len(x), dtype=np.int32)
    # Low 32 bits of the argmax key: larger for earlier points, so max() breaks ties to the first.
    reverse_pos = _LOW32 - np.arange(len(x), dtype=np.uint64)
    num_iters = int(seeds[0]) if len(seeds) else 0
    # active[j] = number of segments that still want a seed at iteration j.
    active = np.searchsorted(-seeds, -np.arange(num_iters + 1), side="left")
    offsets = np.cumsum(seeds) - seeds  # where each segment's seeds start in the returned positions
    picked = np.empty(int(np.sum(seeds)), dtype=np.int64)
    cur = starts + first
    picked[offsets] = cur
    if num_iters <= 1:
        return label, picked
    for j in range(num_iters):
        # Segments with one seed need no distance at all (every label is already 0).
        r = active[1] if j == 0 else active[j]
        p = int(ends[r - 1])
        c = counts[:r]
        d = x[:p] - np.repeat(x[cur[:r]], c)
        d *= d
        t = y[:p] - np.repeat(y[cur[:r]], c)
        t *= t
        d += t
        np.subtract(z[:p], np.repeat(z[cur[:r]], c), out=t)
        t *= t
        d += t
        m = mind[:p]
        if j:
            np.putmask(label[:p], d < m, j)
        np.minimum(m, d, out=m)
        r = active[j + 1]
        if r == 0:
            break
        cur = _segment_argmax(mind[: int(ends[r - 1])], starts[:r], reverse_pos)
        picked[offsets[:r] + j + 1] = cur
    return label, picked


def _segment_argmax(values: np.ndarray, starts: np.ndarray, reverse_pos: np.ndarray) -> np.ndarray:
    """First position of the maximum of each contiguous segment of non-negative float32 ``values``.

    Non-negative float32 bit patterns order like the floats, so one max-reduce over
    (bits << 32 | reversed position) yields the maximum and its first position together.
    """
    key = values.view(np.uint32).astype(np.uint64)
    key <<= np.uint64(32)
    key |= reverse_pos[: len(values)]
    best = np.maximum.reduceat(key, starts)
    return (_LOW32 - (best & _LOW32)).view(np.int64)  # < 2**32, so the uint64 bits read as int64


_LOW32 = np.uint64(0xFFFFFFFF)

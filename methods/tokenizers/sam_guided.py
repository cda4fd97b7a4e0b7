"""SAM-guided tokenizer [paper]: tokens never mix regions; each centre is the mean of its points.

The paper fixes only "points are grouped by their SAM region" and "each patch's centroid is the
average position of all points within that patch"; the rest is [choice] (DESIGN 2.3), each rule
below is a parameter or stated here and tested:

- Budget: a region wants ceil(n / K) tokens. If all wants fit in G they are granted. Otherwise every
  region gets one token (with more regions than G, only the G largest do, ties to the lower id;
  the others' points are left out), and the remaining budget is shared in proportion to the extra
  tokens each region wants (about n / K), largest remainders first (``allocate_tokens``).
- Split: a region with a tokens gets a seeds by FPS inside the region (random first seed), every
  point joins its nearest seed (ties to the earlier seed); all regions in one vectorised FPS loop.
- Sampling K points per token of m points: m >= K, systematic sampling of K distinct points (every
  m/K-th point in frame order, random phase); m < K, all m points then K - m drawn with replacement.
  A one-point region is one token of K copies of that point, centre = the point, ``rel`` = 0.
- Centre = mean of the token's distinct gathered points.
- Points of no region (id 0): ``unassigned="knn"`` groups them among themselves exactly like one
  more region (FPS seeds, nearest seed) and their tokens get ``region`` 0; ``"drop"`` leaves them out.
  Regions with fewer than ``min_region_points`` points count as no region.
- Output order: tokens of larger allocations first (ties: lower region id), then padding.
"""
from __future__ import annotations

import gin
import numpy as np
import torch

from bench.checks import check_integer
from methods.tokenizers.sampling import segment_fps
from methods.tokenizers.token_set import TokenSet, build_token_set, check_inputs, compact_ids

UNASSIGNED_POLICIES = ("knn", "drop")


def allocate_tokens(counts: np.ndarray, group_size: int, budget: int) -> np.ndarray:
    """Tokens granted to each region of ``counts`` (all >= 1) points under a budget of G tokens."""
    counts = np.asarray(counts, dtype=np.int64)
    want = -(-counts // group_size)
    r = len(counts)
    if want.sum() <= budget:
        return want
    if r >= budget:
        alloc = np.zeros(r, dtype=np.int64)
        alloc[np.argsort(-counts, kind="stable")[:budget]] = 1
        return alloc
    extra = want - 1
    share = (budget - r) * extra  # integer arithmetic: exact proportional shares and remainders
    alloc = 1 + share // extra.sum()
    remainder = share % extra.sum()
    order = np.lexsort((np.arange(r), -counts, -remainder))
    alloc[order[: budget - alloc.sum()]] += 1
    return alloc


def _radix_argsort(keys: np.ndarray, num_keys: int) -> np.ndarray:
    """Stable argsort of small non-negative keys; numpy radix-sorts 16-bit keys in O(N)."""
    dtype = np.uint16 if num_keys <= np.iinfo(np.uint16).max else np.int64
    return np.argsort(keys.astype(dtype), kind="stable")


@gin.register
class SamGuidedTokenizer:
    """Region-pure tokens from per-point region ids (0 = no region); rules in the module docstring."""

    def __init__(
        self,
        num_tokens: int = 256,
        group_size: int = 128,
        seed: int = 0,
        unassigned: str = "knn",
        min_region_points: int = 1,
    ):
        check_integer("SamGuidedTokenizer.num_tokens", num_tokens, 1)
        check_integer("SamGuidedTokenizer.group_size", group_size, 1)
        if unassigned not in UNASSIGNED_POLICIES:
            raise ValueError(f"unassigned: expected one of {UNASSIGNED_POLICIES}, got {unassigned!r}")
        if min_region_points < 1:
            raise ValueError(f"min_region_points: expected >= 1, got {min_region_points}")
        self.num_tokens = int(num_tokens)
        self.group_size = int(group_size)
        self.seed = int(seed)
        self.unassigned = unassigned
        self.min_region_points = int(min_region_points)

    def __call__(self, xyz: torch.Tensor, region_ids: torch.Tensor, *, seed: int | None = None) -> TokenSet:
        """Tokenize one frame given each point's region id; ``seed`` overrides the tokenizer's seed."""
        points, regions = check_inputs(xyz, region_ids, regions_required=True)
        rng = np.random.default_rng(self.seed if seed is None else seed)
        ids, compact, counts = self._regions(regions)
        alloc = np.zeros(len(ids), dtype=np.int64)
        use = counts > 0
        if self.unassigned == "drop":
            use &= ids != 0
        alloc[use] = allocate_tokens(counts[use], self.group_size, self.num_tokens)
        members, sizes, token_region = self._split(points, ids, compact, counts, alloc, rng)
        index = self._sample(members, sizes, rng)
        gathered = np.take(points, index, axis=0)
        # Mean over the distinct points = the first min(m, K) slots (see _sample); one batched matmul.
        n_unique = np.minimum(sizes, self.group_size)
        weight = (np.arange(self.group_size) < n_unique[:, None]) / n_unique[:, None]
        centers = np.matmul(weight[:, None, :], gathered.astype(np.float64))[:, 0]
        point_regions = np.repeat(token_region[:, None], self.group_size, axis=1)
        return build_token_set(
            points, centers, index, point_regions, token_region, self.num_tokens, xyz, gathered=gathered
        )

    def _regions(self, regions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Distinct region ids (ascending), each point's compact id, points per region."""
        ids, compact, counts = compact_ids(regions)
        small = (ids != 0) & (counts < self.min_region_points)
        if small.any():
            ids, compact, counts = compact_ids(np.where(small[compact], 0, regions))
        return ids, compact, counts

    def _split(
        self,
        points: np.ndarray,
        ids: np.ndarray,
        compact: np.ndarray,
        counts: np.ndarray,
        alloc: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Split every region into its granted tokens; return the points grouped by token.

        Returns ``members`` (point indices ordered by token), ``sizes`` (points per token, all
        >= 1) and ``token_region`` (region id of each token).
        """
        kept = np.argsort(-alloc, kind="stable")[: np.count_nonzero(alloc)]
        rank = np.full(len(alloc), len(kept), dtype=np.int64)
        rank[kept] = np.arange(len(kept))
        order = _radix_argsort(rank[compact], len(kept) + 1)[: counts[kept].sum()]
        first = _uniform_below(rng, counts[kept])  # offset of each region's first FPS seed
        label = segment_fps(np.take(points, order, axis=0), counts[kept], alloc[kept], first)
        token = np.repeat(np.cumsum(alloc[kept]) - alloc[kept], counts[kept]) + label
        num = int(alloc.sum())
        members = order[_radix_argsort(token, num)]
        sizes = np.bincount(token, minlength=num)
        token_region = np.repeat(ids[kept], alloc[kept])
        # A seed can end up with no point only when a region has fewer distinct locations than seeds.
        nonempty = sizes > 0
        return members, sizes[nonempty], token_region[nonempty]

    def _sample(self, members: np.ndarray, sizes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(T, K) point indices: K distinct points of each token of m >= K, else all m plus repeats."""
        k = self.group_size
        starts = np.cumsum(sizes) - sizes
        slot = np.arange(k)
        m = sizes[:, None]
        # Integer systematic sampling: phase in [0, m) so (slot * m + phase) // K is distinct and < m.
        pos = (slot * m + _uniform_below(rng, m)) // k
        small = np.flatnonzero(sizes < k)
        if len(small):
            ms = m[small]
            pos[small] = np.where(slot < ms, slot, _uniform_below(rng, np.broadcast_to(ms, (len(small), k))))
        return members[starts[:, None] + pos]


def _uniform_below(rng: np.random.Generator, high: np.ndarray) -> np.ndarray:
    """Uniform integers in [0, high) elementwise (much faster than ``rng.integers`` with array bounds)."""
    return np.minimum((rng.random(high.shape) * high).astype(np.int64), high - 1)

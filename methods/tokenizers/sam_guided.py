"""SAM-guided tokenizer [paper]: tokens never mix regions; each centre is the mean of its points.

The paper fixes only "points are grouped by their SAM region" and "each patch's centroid is the
average position of all points within that patch"; the rest is [choice] (DESIGN 2.3), each rule
below is a parameter or stated here and tested. The defaults are the rules this tokenizer always had.

- Budget (``budget``): a region wants ceil(n / K) tokens. If all wants fit in G they are granted.
  Otherwise, ``"one_each"`` (default, ``allocate_tokens``): every region gets one token (with more
  regions than G, only the G largest do, ties to the lower id; the others' points are left out), and
  the remaining budget is shared in proportion to the extra tokens each region wants (about n / K),
  largest remainders first. ``"proportional"`` (``allocate_proportional``): the G tokens are shared in
  proportion to the regions' point counts, largest remainders first, a region never getting more than
  it wants (what the cap frees is shared the same way), so with more regions than G small regions
  get none rather than every region one.
- Split (``split``): a region with a tokens gets a seeds by FPS inside the region (random first seed);
  all regions in one vectorised FPS loop. ``"nearest_seed"`` (default): every point joins its nearest
  seed (ties to the earlier seed), so a token is a part of the region of any size and a part with more
  than K points loses points in the sampling below. ``"knn"``: each token is the K nearest points of
  its seed inside the region (DESIGN 2.3's "FPS+KNN inside the region"), nearest first; tokens of one
  region may overlap and points far from every seed are left out; a region of fewer than K points is
  one token of all of them.
- Sampling K points per token of m points: m >= K, systematic sampling of K distinct points (every
  m/K-th point in frame order, random phase); m < K, all m points then K - m drawn with replacement.
  A one-point region is one token of K copies of that point, centre = the point, ``rel`` = 0.
- Centre (``center``): ``"sampled"`` (default), the mean of the token's distinct gathered points;
  ``"all"``, the mean of all the points of the token's part (the paper's wording). The two differ only
  for ``split="nearest_seed"`` parts of more than K points.
- Points of no region (id 0): ``unassigned="knn"`` groups them among themselves exactly like one
  more region (FPS seeds, nearest seed) and their tokens get ``region`` 0; ``"drop"`` leaves them out.
  Regions with fewer than ``min_region_points`` points count as no region.
- Output order: tokens of larger allocations first (ties: lower region id), then padding.
"""
from __future__ import annotations

import gin
import numpy as np
import torch

from infra.checks import check_integer
from methods.tokenizers.sampling import segment_fps, segment_fps_seeds
from methods.tokenizers.token_set import TokenSet, build_token_set, check_inputs, compact_ids

UNASSIGNED_POLICIES = ("knn", "drop")
SPLIT_RULES = ("nearest_seed", "knn")
CENTER_RULES = ("sampled", "all")


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


def allocate_proportional(counts: np.ndarray, group_size: int, budget: int) -> np.ndarray:
    """Tokens per region of ``counts`` (all >= 1) points: G shared in proportion to the counts.

    Wants ceil(n / K) are granted when they fit in G. Otherwise each region's share is G * n / N, largest
    remainders first (ties: more points, then lower index), and a region whose share reaches its want
    gets exactly its want, the rest of the budget being shared again over the others.
    """
    counts = np.asarray(counts, dtype=np.int64)
    want = -(-counts // group_size)
    if want.sum() <= budget:
        return want
    capped = np.zeros(len(counts), dtype=bool)
    while True:  # at most one pass per region; the wants exceed G, so one region always stays uncapped
        free, total = budget - want[capped].sum(), counts[~capped].sum()
        share = free * counts  # integer arithmetic: the share is share / total, exactly
        over = ~capped & (share >= want * total)
        if not over.any():
            break
        capped |= over
    alloc = np.where(capped, want, share // total)
    remainder = np.where(capped, -1, share % total)
    order = np.lexsort((np.arange(len(counts)), -counts, -remainder))
    alloc[order[: budget - alloc.sum()]] += 1
    return alloc


BUDGET_RULES = {"one_each": allocate_tokens, "proportional": allocate_proportional}


def _radix_argsort(keys: np.ndarray, num_keys: int) -> np.ndarray:
    """Stable argsort of small non-negative keys; numpy radix-sorts 16-bit keys in O(N)."""
    dtype = np.uint16 if num_keys <= np.iinfo(np.uint16).max else np.int64
    return np.argsort(keys.astype(dtype), kind="stable")


@gin.register
class SamGuidedTokenizer:
    """Region-pure tokens from per-point region ids (0 = no region); rules in the module docstring.

    Args:
      num_tokens: G, tokens per frame (padding fills the rest).
      group_size: K, points per token.
      seed: seed of the FPS start points and the sampling; a call's ``seed`` overrides it.
      unassigned: points of no region, ``"knn"`` (tokenized among themselves, region 0) or ``"drop"``.
      min_region_points: regions with fewer points count as no region [choice: 1].
      budget: how G is shared when the regions want more, ``"one_each"`` (default) or ``"proportional"``.
      split: how a region becomes its tokens, ``"nearest_seed"`` (default) or ``"knn"``.
      center: a token's centre, mean of its ``"sampled"`` K points (default) or of ``"all"`` its points.
    """

    def __init__(
        self,
        num_tokens: int = 256,
        group_size: int = 128,
        seed: int = 0,
        unassigned: str = "knn",
        min_region_points: int = 1,
        budget: str = "one_each",
        split: str = "nearest_seed",
        center: str = "sampled",
    ):
        check_integer("SamGuidedTokenizer.num_tokens", num_tokens, 1)
        check_integer("SamGuidedTokenizer.group_size", group_size, 1)
        if unassigned not in UNASSIGNED_POLICIES:
            raise ValueError(f"unassigned: expected one of {UNASSIGNED_POLICIES}, got {unassigned!r}")
        if min_region_points < 1:
            raise ValueError(f"min_region_points: expected >= 1, got {min_region_points}")
        if budget not in BUDGET_RULES:
            raise ValueError(f"budget: expected one of {tuple(BUDGET_RULES)}, got {budget!r}")
        if split not in SPLIT_RULES:
            raise ValueError(f"split: expected one of {SPLIT_RULES}, got {split!r}")
        if center not in CENTER_RULES:
            raise ValueError(f"center: expected one of {CENTER_RULES}, got {center!r}")
        self.num_tokens = int(num_tokens)
        self.group_size = int(group_size)
        self.seed = int(seed)
        self.unassigned = unassigned
        self.min_region_points = int(min_region_points)
        self.budget = budget
        self.split = split
        self.center = center

    def __call__(self, xyz: torch.Tensor, region_ids: torch.Tensor, *, seed: int | None = None) -> TokenSet:
        """Tokenize one frame given each point's region id; ``seed`` overrides the tokenizer's seed."""
        points, regions = check_inputs(xyz, region_ids, regions_required=True)
        rng = np.random.default_rng(self.seed if seed is None else seed)
        ids, compact, counts, alloc = self.allocation(regions)
        split = self._split if self.split == "nearest_seed" else self._split_knn
        members, sizes, token_region = split(points, ids, compact, counts, alloc, rng)
        index = self._sample(members, sizes, rng)
        gathered = np.take(points, index, axis=0)
        if self.center == "sampled":
            # Mean over the distinct points = the first min(m, K) slots (see _sample); one batched matmul.
            n_unique = np.minimum(sizes, self.group_size)
            weight = (np.arange(self.group_size) < n_unique[:, None]) / n_unique[:, None]
            centers = np.matmul(weight[:, None, :], gathered.astype(np.float64))[:, 0]
        else:
            centers = _segment_means(points, members, sizes)
        point_regions = np.repeat(token_region[:, None], self.group_size, axis=1)
        return build_token_set(
            points, centers, index, point_regions, token_region, self.num_tokens, xyz, gathered=gathered
        )

    def allocation(self, regions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The frame's regions (ids ascending, each point's compact id, points per region) and the tokens
        each is granted (the budget rule, points of no region left out with ``unassigned='drop'``)."""
        ids, compact, counts = self._regions(regions)
        alloc = np.zeros(len(ids), dtype=np.int64)
        use = counts > 0
        if self.unassigned == "drop":
            use &= ids != 0
        alloc[use] = BUDGET_RULES[self.budget](counts[use], self.group_size, self.num_tokens)
        return ids, compact, counts, alloc

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
        """Split every region into its granted tokens (nearest FPS seed); return the points grouped by token.

        Returns ``members`` (point indices ordered by token), ``sizes`` (points per token, all
        >= 1) and ``token_region`` (region id of each token).
        """
        kept, order = _kept_regions(compact, counts, alloc)
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

    def _split_knn(
        self,
        points: np.ndarray,
        ids: np.ndarray,
        compact: np.ndarray,
        counts: np.ndarray,
        alloc: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tokens of the K nearest points of each FPS seed inside its region; returns as ``_split``."""
        k = self.group_size
        kept, order = _kept_regions(compact, counts, alloc)
        n, a = counts[kept], alloc[kept]
        first = _uniform_below(rng, n)
        region_points = np.take(points, order, axis=0).astype(np.float64)
        seeds = segment_fps_seeds(region_points, n, a, first)  # positions into region_points
        segment = np.repeat(np.arange(len(kept)), a)
        sizes = np.minimum(n[segment], k)
        # A region of fewer than K points (one token, see the budget) is all of its points.
        starts = np.cumsum(n) - n
        pos = starts[segment][:, None] + np.minimum(np.arange(k), sizes[:, None] - 1)
        full = n[segment] >= k
        if full.any():
            # One KD-tree for all regions: a 4th coordinate region rank x lift, with lift above the
            # frame's diameter, puts every other region farther than any point of the seed's own.
            lift = 2.0 * float(np.linalg.norm(np.ptp(region_points, axis=0))) + 1.0
            lifted = np.column_stack([region_points, np.repeat(np.arange(len(kept)), n) * lift])
            from scipy.spatial import cKDTree  # here: a cached re-run never tokenizes

            tree = cKDTree(lifted, balanced_tree=False, compact_nodes=False)
            pos[full] = tree.query(lifted[seeds[full]], k=k)[1]
        members = order[pos[np.arange(k) < sizes[:, None]]]
        return members, sizes, np.repeat(ids[kept], a)

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


def _kept_regions(compact: np.ndarray, counts: np.ndarray, alloc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Regions granted tokens (larger allocations first, ties to the lower id) and their points,
    region after region (frame order inside a region)."""
    kept = np.argsort(-alloc, kind="stable")[: np.count_nonzero(alloc)]
    rank = np.full(len(alloc), len(kept), dtype=np.int64)
    rank[kept] = np.arange(len(kept))
    order = _radix_argsort(rank[compact], len(kept) + 1)[: counts[kept].sum()]
    return kept, order


def _segment_means(points: np.ndarray, members: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """(T, 3) float64 mean of each token's points, ``members`` grouped by token with ``sizes`` each."""
    if len(sizes) == 0:
        return np.zeros((0, 3))
    sums = np.add.reduceat(np.take(points, members, axis=0).astype(np.float64), np.cumsum(sizes) - sizes, axis=0)
    return sums / sizes[:, None]


def _uniform_below(rng: np.random.Generator, high: np.ndarray) -> np.ndarray:
    """Uniform integers in [0, high) elementwise (much faster than ``rng.integers`` with array bounds)."""
    return np.minimum((rng.random(high.shape) * high).astype(np.int64), high - 1)

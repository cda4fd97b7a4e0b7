"""KNN tokenizer [prior: Point-MAE / Bridge3D]: G sampled centres, the K nearest points of each.

Tokens ignore regions, so one token may straddle several SAM regions: the conflict the SAM-guided
tokenizer removes. Each token's ``region`` is the majority region of its points (see ``majority``).
"""
from __future__ import annotations

from typing import Callable

import gin
import numpy as np
import torch

from infra.checks import check_integer
from methods.tokenizers.sampling import ExactFPS
from methods.tokenizers.token_set import TokenSet, build_token_set, check_inputs, compact_ids

Sampler = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def knn_indices(xyz: np.ndarray, centers: np.ndarray, k: int) -> np.ndarray:
    """(M, k) indices of the k nearest points of each centre, nearest first (exact, KD-tree).

    Exactly tied distances come in the KD-tree's order. With fewer than k points each row is its N
    neighbours repeated cyclically.
    """
    k_eff = min(k, len(xyz))
    # Unbalanced, uncompacted trees build about 2x faster and query as fast on scan data.
    from scipy.spatial import cKDTree  # here: importing scipy.spatial costs every command, even --help

    tree = cKDTree(xyz, balanced_tree=False, compact_nodes=False)
    _, idx = tree.query(centers, k=k_eff)
    idx = np.asarray(idx, dtype=np.int64).reshape(len(centers), k_eff)
    return idx if k_eff == k else idx[:, np.arange(k) % k_eff]


def majority(point_regions: np.ndarray) -> np.ndarray:
    """(M,) most frequent non-zero region id of each row of (M, K) ids; ties to the lower id; 0 if none."""
    ids, compact, _ = compact_ids(point_regions)
    m, r = point_regions.shape[0], len(ids)
    counts = np.bincount((np.arange(m)[:, None] * r + compact).ravel(), minlength=m * r).reshape(m, r)
    counts[:, ids == 0] = 0
    best = counts.argmax(axis=1)
    return np.where(counts[np.arange(m), best] > 0, ids[best], 0).astype(np.int64)


@gin.register
class KnnTokenizer:
    """Point-MAE style tokens: ``sampler`` picks G centres (exact FPS by default), K nearest points each.

    When the frame has N < G points, the first N tokens are centred on the N points in FPS order
    (each once, unless points coincide) and the other G - N are padding (``valid=False``, see
    ``TokenSet``); centres are never repeated to fill G. When N < K each token's neighbour list is
    its N neighbours repeated cyclically. ``seed`` seeds the sampler (the FPS start point); the same
    seed and input give the same tokens.
    """

    def __init__(
        self, num_tokens: int = 256, group_size: int = 128, seed: int = 0, sampler: Sampler | None = None
    ):
        check_integer("KnnTokenizer.num_tokens", num_tokens, 1)
        check_integer("KnnTokenizer.group_size", group_size, 1)
        self.num_tokens = int(num_tokens)
        self.group_size = int(group_size)
        self.seed = int(seed)
        self.sampler = ExactFPS() if sampler is None else sampler

    def __call__(
        self, xyz: torch.Tensor, region_ids: torch.Tensor | None = None, *, seed: int | None = None
    ) -> TokenSet:
        """Tokenize one frame; ``region_ids`` (0 = none) only label the tokens and may be omitted.

        ``seed`` overrides the tokenizer's seed for this call (e.g. a new FPS start every epoch).
        """
        points, regions = check_inputs(xyz, region_ids, regions_required=False)
        rng = np.random.default_rng(self.seed if seed is None else seed)
        centre_idx = np.asarray(self.sampler(points, self.num_tokens, rng), dtype=np.int64)
        centers = points[centre_idx]
        index = knn_indices(points, centers, self.group_size)
        point_regions = np.take(regions, index)
        region = majority(point_regions)
        return build_token_set(points, centers, index, point_regions, region, self.num_tokens, xyz)

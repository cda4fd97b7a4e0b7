"""Batched KNN tokens in torch, on the inputs' device: the tokens of ``KnnTokenizer`` with ``ExactFPS``.

Centres: exact FPS over every frame of the batch at once, with ``farthest_point_sampling``'s
arithmetic ((dx^2 + dy^2) + dz^2 in the points' dtype, ``torch.minimum``, first-index ``argmax``),
so the same centres come out; padded points start at -inf and are never picked.

Neighbours: ``nearest_neighbours`` (exact, grid-pruned, cKDTree's float64 distances), the same K
nearest up to exact distance ties (those may come in another order or, at the K-th place, be another
point at the same distance); its first search radius comes from FPS's covering radius.
"""
from __future__ import annotations

import numpy as np
import torch

from methods.tokenizers.batched_neighbours import nearest_neighbours
from methods.tokenizers.knn import KnnTokenizer
from methods.tokenizers.sampling import ExactFPS
from methods.tokenizers.token_set import TokenSet, check_inputs

# First search radius over the estimated K-th neighbour distance (see first_search_radius).
_FIRST_RADIUS = 1.0
_ARGMAX_BLOCK = 128  # first_argmax's block: whole blocks of 128 are ~6x faster than argmax on a CPU


def knn_unsupported(tokenizer: KnnTokenizer) -> str | None:
    """Why ``tokenizer`` has no batched path, or None: only the ``ExactFPS`` sampler is ported."""
    if type(tokenizer.sampler) is not ExactFPS:
        return f"KnnTokenizer.sampler {type(tokenizer.sampler).__name__}: only ExactFPS has a batched path"
    return None


def knn_inputs(
    tokenizer: KnnTokenizer, xyz: torch.Tensor, region_ids: torch.Tensor | None, seed: int | None
) -> dict[str, torch.Tensor]:
    """One frame's inputs: its points, region ids (zeros if None) and the FPS start ExactFPS would draw."""
    points, regions = check_inputs(xyz, region_ids, regions_required=False)
    n = len(points)
    rng = np.random.default_rng(tokenizer.seed if seed is None else seed)
    return {
        "xyz": torch.from_numpy(points),
        "regions": torch.from_numpy(regions),
        "point_valid": torch.ones(n, dtype=torch.bool),
        "fps_start": torch.tensor(int(rng.integers(n))),  # ExactFPS's one draw
        "token_shape": torch.tensor([tokenizer.num_tokens, tokenizer.group_size]),
    }


def knn_tokenize(tokenizer: KnnTokenizer, inputs: dict[str, torch.Tensor]) -> TokenSet:
    """KNN tokens of a collated batch (see ``methods.tokenizers.batched``), on the inputs' device."""
    xyz, point_valid = inputs["xyz"], inputs["point_valid"]
    g, k = tokenizer.num_tokens, tokenizer.group_size
    centre_index, min_dist = batched_fps(xyz, point_valid, inputs["fps_start"], g)
    num_points = point_valid.sum(1)
    valid = torch.arange(g, device=xyz.device) < num_points[:, None]  # N < G: the first N centres
    centers = torch.gather(xyz, 1, centre_index[..., None].expand(-1, -1, 3))
    covering = min_dist.amax(1).double().clamp_min(0).sqrt()  # every point is this close to a centre
    index = nearest_neighbours(xyz, point_valid, centers, valid, k, first_search_radius(covering, g, k, num_points))
    point_regions = torch.gather(inputs["regions"], 1, index.flatten(1)).view_as(index)
    return assemble_token_set(xyz, centers, index, valid, point_regions, majority_region(point_regions))


def batched_fps(
    xyz: torch.Tensor, point_valid: torch.Tensor, start: torch.Tensor, num: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact FPS in every frame: (B, num) indices from ``start`` (B,), and the final (B, N) distances.

    ``xyz`` (B, N, 3), ``point_valid`` (B, N). A frame of n < num points repeats picks after its n-th
    (only the first n are meant). Squared distances in ``xyz``'s dtype, -inf at padded points.
    """
    b, n, _ = xyz.shape
    width = -(-n // _ARGMAX_BLOCK) * _ARGMAX_BLOCK  # whole blocks for first_argmax; the extra points pad
    coords = xyz.new_zeros(b, 3, width)
    coords[:, :, :n] = xyz.transpose(1, 2)  # each axis a contiguous row
    min_dist = xyz.new_full((b, width), float("-inf"))
    min_dist[:, :n].masked_fill_(point_valid, float("inf"))
    diff = torch.empty_like(coords)
    dist = torch.empty_like(min_dist)
    far = start.to(torch.int64)
    picks = []
    for _ in range(num):
        picks.append(far)
        torch.sub(coords, torch.gather(coords, 2, far.view(b, 1, 1).expand(b, 3, 1)), out=diff)
        diff.mul_(diff)
        torch.add(diff[:, 0], diff[:, 1], out=dist)  # ((dx^2 + dy^2) + dz^2): farthest_point_sampling's rounding
        dist.add_(diff[:, 2])
        torch.minimum(min_dist, dist, out=min_dist)
        far = first_argmax(min_dist)
    return torch.stack(picks, 1), min_dist[:, :n]


def first_argmax(values: torch.Tensor) -> torch.Tensor:
    """(B,) first index of the maximum of each row of (B, W) ``values``, W a multiple of 128: ``argmax(1)``.

    On the CPU torch's argmax is a scalar loop, ~6x slower than a vectorised ``amax``: there the
    maximum's first block of 128 comes from block maxima, then the first index inside that block.
    """
    if values.device.type != "cpu":
        return values.argmax(1)  # first index of the maximum, like numpy
    b = values.shape[0]
    blocks = values.view(b, -1, _ARGMAX_BLOCK)
    block = blocks.amax(2).argmax(1)
    inside = torch.gather(blocks, 1, block.view(b, 1, 1).expand(b, 1, _ARGMAX_BLOCK))[:, 0].argmax(1)
    return block * _ARGMAX_BLOCK + inside


def first_search_radius(covering: torch.Tensor, num_tokens: int, group_size: int,
                        num_points: torch.Tensor) -> torch.Tensor:
    """(B,) about the K-th neighbour distance of a centre, for ``nearest_neighbours``'s first search.

    G centres cover the frame within ``covering``, so a centre's Voronoi cell holds about N / G points
    within ~``covering``; on a surface K points need a disc sqrt(K G / N) times as wide.
    """
    ratio = (group_size * num_tokens / num_points.clamp_min(1).double()).clamp_min(1.0)
    return _FIRST_RADIUS * covering * ratio.sqrt()


def majority_region(point_regions: torch.Tensor) -> torch.Tensor:
    """(...,) most frequent non-zero id of each row of (..., K) ids; ties to the lower id; 0 if none.

    The batched ``majority``: in a sorted row, an id's count is the length of its run, and the first
    maximal count belongs to the lowest id among the most frequent.
    """
    ids = torch.sort(point_regions, dim=-1).values
    counts = torch.searchsorted(ids, ids, right=True) - torch.searchsorted(ids, ids)
    counts = torch.where(ids > 0, counts, 0)
    best = counts.argmax(-1, keepdim=True)
    return torch.where(torch.gather(counts, -1, best) > 0, torch.gather(ids, -1, best), 0).squeeze(-1)


def assemble_token_set(
    xyz: torch.Tensor,
    centers: torch.Tensor,
    index: torch.Tensor,
    valid: torch.Tensor,
    point_regions: torch.Tensor,
    region: torch.Tensor,
    gathered: torch.Tensor | None = None,
) -> TokenSet:
    """A batched TokenSet with ``build_token_set``'s padding: index 0, centre = point 0, rel 0, regions 0.

    ``xyz`` (B, N, 3); ``centers`` (B, G, 3), ``index`` and ``point_regions`` (B, G, K), ``valid`` and
    ``region`` (B, G), whatever they hold at padding; ``gathered`` may pass ``xyz`` at ``index``.
    """
    index = torch.where(valid[..., None], index, 0)
    centers = torch.where(valid[..., None], centers, xyz[:, :1])
    if gathered is None:
        gathered = torch.gather(xyz, 1, index.flatten(1)[..., None].expand(-1, -1, 3)).view(*index.shape, 3)
    rel = torch.where(valid[..., None, None], gathered - centers[:, :, None], 0)
    return TokenSet(
        centers=centers,
        index=index,
        valid=valid,
        rel=rel,
        point_regions=torch.where(valid[..., None], point_regions, 0),
        region=torch.where(valid, region, 0),
    )

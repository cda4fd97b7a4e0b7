"""Batched SAM-guided tokens in torch, on the inputs' device: the tokens of ``SamGuidedTokenizer``.

Ported: ``split="nearest_seed"`` with ``center="sampled"``, any ``budget``, ``unassigned`` and
``min_region_points`` (those only change the allocation, which stays on the CPU).

Per frame on the CPU (``sam_inputs``, a DataLoader worker): regions, allocation, the regions granted
tokens (larger allocations first) and every random number the CPU path draws. The CPU path draws
the first-seed offsets, then one phase per non-empty token, then K numbers per token of fewer than
K points; how many tokens are non-empty and small is known only after FPS, so ``sam_inputs`` draws
A + A K numbers after the offsets (A = tokens granted, an upper bound of both) and the device reads
the ones the CPU path would have used: numpy's ``random(n)`` yields the next n doubles of the stream.

On the device (``sam_tokenize``): FPS inside every region of every frame at once (float32, the
arithmetic of ``segment_fps``), nearest-seed labels, the K-point systematic sampling, gathering,
centres (float64 mean of the distinct sampled points) and ``rel``.
"""
from __future__ import annotations

import numpy as np
import torch

from methods.tokenizers.batched_knn import assemble_token_set
from methods.tokenizers.sam_guided import SamGuidedTokenizer, _uniform_below
from methods.tokenizers.token_set import TokenSet, check_inputs

_LOW32 = 0xFFFFFFFF


def sam_unsupported(tokenizer: SamGuidedTokenizer) -> str | None:
    """Why ``tokenizer`` has no batched path, or None: ``split="knn"`` and ``center="all"`` are not ported."""
    if tokenizer.split != "nearest_seed":
        return f"SamGuidedTokenizer.split {tokenizer.split!r}: only 'nearest_seed' has a batched path"
    if tokenizer.center != "sampled":
        return f"SamGuidedTokenizer.center {tokenizer.center!r}: only 'sampled' has a batched path"
    return None


def sam_inputs(
    tokenizer: SamGuidedTokenizer, xyz: torch.Tensor, region_ids: torch.Tensor, seed: int | None
) -> dict[str, torch.Tensor]:
    """One frame's inputs: points, each point's segment (1 + rank of its region among the regions granted
    tokens, 0 = left out), per segment its points, tokens, first-seed offset and region id, and the
    uniform numbers of the sampling."""
    points, regions = check_inputs(xyz, region_ids, regions_required=True)
    rng = np.random.default_rng(tokenizer.seed if seed is None else seed)
    ids, compact, counts, alloc = tokenizer.allocation(regions)
    kept = np.argsort(-alloc, kind="stable")[: np.count_nonzero(alloc)]  # as sam_guided._kept_regions
    rank = np.zeros(len(ids), dtype=np.int64)
    rank[kept] = np.arange(1, len(kept) + 1)
    first = _uniform_below(rng, counts[kept])  # the CPU path's first draw
    uniforms = rng.random(int(alloc.sum()) * (tokenizer.group_size + 1))
    return {
        "xyz": torch.from_numpy(points),
        "point_valid": torch.ones(len(points), dtype=torch.bool),
        "point_segment": torch.from_numpy(rank[compact]),
        "segment_points": torch.from_numpy(counts[kept]),
        "segment_tokens": torch.from_numpy(alloc[kept]),
        "segment_first": torch.from_numpy(first),
        "segment_region": torch.from_numpy(ids[kept]),
        "uniforms": torch.from_numpy(uniforms),
        "token_shape": torch.tensor([tokenizer.num_tokens, tokenizer.group_size]),
    }


def sam_tokenize(tokenizer: SamGuidedTokenizer, inputs: dict[str, torch.Tensor]) -> TokenSet:
    """SAM-guided tokens of a collated batch (see ``methods.tokenizers.batched``), on the inputs' device."""
    xyz = inputs["xyz"]
    b, n, _ = xyz.shape
    g, k = tokenizer.num_tokens, tokenizer.group_size
    seg_points, seg_tokens = inputs["segment_points"], inputs["segment_tokens"]
    r = seg_points.shape[1]
    # Points of every segment of every frame, segment after segment, frame order inside a segment.
    frame_of_point = torch.arange(b, device=xyz.device).repeat_interleave(n)
    segment = inputs["point_segment"].flatten()
    key = torch.where(segment > 0, frame_of_point * r + segment - 1, b * r)
    sorted_key, order = torch.sort(key, stable=True)
    num = int(seg_points.sum())
    segment, order = sorted_key[:num], order[:num]
    seg_start = torch.cumsum(seg_points.flatten(), 0) - seg_points.flatten()
    label = segment_fps_labels(
        xyz.view(b * n, 3)[order].float(), segment, seg_start + inputs["segment_first"].flatten(),
        seg_tokens.flatten(),
    )
    # Token slot of each point in its frame (tokens of a segment follow each other), then points by token.
    tokens_before = torch.cumsum(seg_tokens, 1) - seg_tokens
    slot = segment // r * g + tokens_before.flatten()[segment] + label
    slot, by_slot = torch.sort(slot, stable=True)
    members = order[by_slot] % n  # point indices, grouped by token
    sizes = torch.bincount(slot, minlength=b * g).view(b, g)
    slot_start = (torch.cumsum(sizes.flatten(), 0) - sizes.flatten()).view(b, g)
    # A seed may have no point (fewer distinct locations than seeds): such tokens are dropped.
    source = torch.argsort((sizes == 0).to(torch.int8), dim=1, stable=True)
    size = torch.gather(sizes, 1, source)
    valid = size > 0
    pos = _sample_positions(size, valid, inputs["uniforms"], k)
    member_pos = (torch.gather(slot_start, 1, source)[..., None] + pos).clamp_max(max(num - 1, 0))
    index = members[member_pos] if num else torch.zeros_like(pos)
    index = torch.where(valid[..., None], index, 0)
    gathered = torch.gather(xyz, 1, index.flatten(1)[..., None].expand(-1, -1, 3)).view(b, g, k, 3)
    # Centre: mean of the distinct sampled points (the first min(m, K) slots), in float64. Summing first
    # and dividing once: a float64 sum of <= K float32 values is exact in any order unless their exponents
    # span over ~22 binades, so every device gets the same centre. The CPU path sums (1/m) x in BLAS's
    # order; the two differ by one float32 step where the mean lies on a float32 rounding midpoint.
    distinct = size.clamp(1, k)[..., None]
    first = (torch.arange(k, device=xyz.device) < distinct)[..., None]
    centers = (torch.where(first, gathered.double(), 0).sum(2) / distinct).to(xyz.dtype)
    seg_of_token = torch.searchsorted(torch.cumsum(seg_tokens, 1), source, right=True).clamp_max(max(r - 1, 0))
    region = torch.gather(inputs["segment_region"], 1, seg_of_token) if r else torch.zeros_like(source)
    point_regions = region[..., None].expand(b, g, k)
    return assemble_token_set(xyz, centers, index, valid, point_regions, region, gathered)


def segment_fps_labels(
    points: torch.Tensor, segment: torch.Tensor, first: torch.Tensor, seeds: torch.Tensor
) -> torch.Tensor:
    """``segment_fps`` on every segment at once: (P,) rank of each point's nearest seed in its segment.

    ``points`` (P, 3) float32 hold the segments contiguously in order, ``segment`` (P,) the segment of
    each point; ``first`` (S,) the position of each segment's first seed, ``seeds`` (S,) the seeds it
    wants (0 for a segment without points). Same float32 arithmetic and ties as ``segment_fps``: the
    earlier seed keeps a point at equal distance, the next seed is the segment's first farthest point.
    """
    num = len(segment)
    label = torch.zeros(num, dtype=torch.int64, device=points.device)
    num_iters = int(seeds.max()) if len(seeds) else 0
    if num == 0 or num_iters <= 1:
        return label
    coords = points.T.contiguous()  # (3, P)
    point_seeds = seeds[segment]
    min_dist = torch.full((num,), float("inf"), dtype=torch.float32, device=points.device)
    diff = torch.empty_like(coords)
    # Low 32 bits of the argmax key: larger for earlier points, so max() breaks ties to the first.
    reverse_pos = _LOW32 - torch.arange(num, device=points.device)
    cur = first.clamp(0, num - 1)  # segments without points keep an unused, valid position
    for j in range(num_iters):
        active = point_seeds > j
        seed_coords = torch.index_select(coords, 1, cur)  # (3, S), then each point's seed: (3, P)
        torch.sub(coords, torch.index_select(seed_coords, 1, segment), out=diff)
        diff.mul_(diff)
        dist = diff[0] + diff[1]  # ((dx^2 + dy^2) + dz^2): segment_fps's rounding
        dist += diff[2]
        if j:
            label = torch.where(active & (dist < min_dist), j, label)
        min_dist = torch.where(active, torch.minimum(min_dist, dist), min_dist)
        if j + 1 == num_iters:
            break
        # Non-negative float32 bit patterns order like the floats: one max over (bits << 32 | reversed
        # position) gives each segment's maximum and its first position together.
        key = (min_dist.view(torch.int32).to(torch.int64) << 32) | reverse_pos
        best = torch.full_like(cur, -1).scatter_reduce(0, segment, key, "amax")
        cur = torch.where(best >= 0, _LOW32 - (best & _LOW32), cur)
    return label


def _sample_positions(size: torch.Tensor, valid: torch.Tensor, uniforms: torch.Tensor, k: int) -> torch.Tensor:
    """(B, G, K) positions inside each token's points: ``SamGuidedTokenizer._sample`` with its draws.

    Token t of a frame with T tokens uses ``uniforms[t]`` for its phase; the s-th token of fewer than K
    points uses ``uniforms[T + s K:][:K]`` for its repeats (the CPU path's order of draws).
    """
    b, g = size.shape
    if uniforms.shape[1] == 0:  # no frame has a token
        uniforms = torch.zeros(b, 1, dtype=torch.float64, device=size.device)
    last = uniforms.shape[1] - 1
    m = size.clamp_min(1)
    slot = torch.arange(k, device=size.device)
    token = torch.arange(g, device=size.device).clamp_max(last).expand(b, g)
    phase = _scaled_below(torch.gather(uniforms, 1, token), m)
    pos = (slot * m[..., None] + phase[..., None]) // k  # systematic: distinct and < m when m >= K
    small = valid & (size < k)
    small_rank = torch.cumsum(small, 1) - 1
    at = valid.sum(1)[:, None, None] + small_rank[..., None] * k + slot
    repeat = _scaled_below(torch.gather(uniforms, 1, at.clamp(0, last).flatten(1)).view(b, g, k), m[..., None])
    return torch.where(small[..., None], torch.where(slot < m[..., None], slot, repeat), pos)


def _scaled_below(uniform: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """``sam_guided._uniform_below`` given its uniform numbers: min(int(u * high), high - 1), in float64."""
    return torch.minimum((uniform * high.double()).long(), high - 1)

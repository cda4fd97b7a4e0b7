"""Tokenizers: exact FPS, KNN tokens, SAM-guided tokens (synthetic and a real SUN RGB-D frame)."""
from __future__ import annotations

import functools
import pathlib

import gin
import numpy as np
import pytest
import torch

from datasets.sunrgbd import load_votenet_frame
from methods.mask_sources import ClassicalMaskSource
from methods.tokenizers import (
    ExactFPS,
    KnnTokenizer,
    RandomSampler,
    SamGuidedTokenizer,
    SubsampledFPS,
    TokenSet,
    allocate_proportional,
    allocate_tokens,
    farthest_point_sampling,
    segment_fps,
    segment_fps_seeds,
)


def reference_fps(xyz: np.ndarray, num: int, start: int) -> list[int]:
    """Textbook FPS: next point maximises its float64 distance to the nearest chosen point."""
    chosen = [start]
    for _ in range(num - 1):
        dist = np.linalg.norm(xyz[:, None, :].astype(np.float64) - xyz[chosen][None].astype(np.float64), axis=2)
        chosen.append(int(dist.min(axis=1).argmax()))
    return chosen


def cloud(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random((n, 3), dtype=np.float32) * 4.0)


def assert_region_pure_with_mean_centres(tokens: TokenSet, xyz: torch.Tensor, region_ids: torch.Tensor) -> None:
    """No valid token mixes regions, and each centre is the mean of the token's distinct points."""
    for g in torch.nonzero(tokens.valid).flatten().tolist():
        idx = tokens.index[g]
        assert (region_ids[idx] == tokens.region[g]).all() or tokens.region[g] == 0
        assert (tokens.point_regions[g] == tokens.region[g]).all()
        assert len(torch.unique(region_ids[idx])) == 1 or tokens.region[g] == 0
        expected = xyz[torch.unique(idx)].double().mean(0)
        torch.testing.assert_close(tokens.centers[g].double(), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(tokens.rel[g], xyz[idx] - tokens.centers[g])


# ---------------------------------------------------------------- FPS and KNN tokens


@pytest.mark.parametrize("n, num, seed", [(50, 1, 0), (60, 20, 1), (400, 64, 2), (1000, 100, 3)])
def test_exact_fps_matches_reference_loop(n, num, seed):
    xyz = cloud(n, seed).numpy()
    start = seed % n
    assert farthest_point_sampling(xyz, num, start).tolist() == reference_fps(xyz, num, start)


def test_knn_tokens_are_deterministic_for_a_seed():
    xyz = cloud(2000)
    a, b = KnnTokenizer(32, 16, seed=5)(xyz, None), KnnTokenizer(32, 16, seed=5)(xyz, None)
    assert torch.equal(a.index, b.index) and torch.equal(a.centers, b.centers)
    c = KnnTokenizer(32, 16, seed=6)(xyz, None)
    assert not torch.equal(a.centers, c.centers)  # the seed picks the FPS start point
    expected_start = int(np.random.default_rng(5).integers(2000))
    assert torch.equal(a.centers[0], xyz[expected_start])


def test_knn_index_is_k_nearest_of_each_centre():
    xyz = cloud(3000, seed=1)
    tokens = KnnTokenizer(40, 24)(xyz, None)
    dist = torch.cdist(tokens.centers.double(), xyz.double())
    nearest = dist.topk(24, largest=False).indices
    for g in range(40):
        assert set(tokens.index[g].tolist()) == set(nearest[g].tolist())
        d = dist[g, tokens.index[g]]
        assert (d[1:] >= d[:-1]).all()  # nearest first
    torch.testing.assert_close(tokens.rel, xyz[tokens.index] - tokens.centers[:, None])
    assert tokens.valid.all()


def test_knn_fewer_points_than_tokens_pads():
    xyz = cloud(10)
    tokens = KnnTokenizer(16, 4)(xyz, torch.arange(10))
    assert tokens.valid.tolist() == [True] * 10 + [False] * 6
    assert len(torch.unique(tokens.index[:10, 0])) == 10  # every point is a centre once
    pad = ~tokens.valid
    assert (tokens.index[pad] == 0).all() and (tokens.rel[pad] == 0).all()
    assert (tokens.region[pad] == 0).all() and (tokens.point_regions[pad] == 0).all()
    assert torch.equal(tokens.centers[pad], xyz[:1].expand(6, 3))
    assert tokens.region_mix()[pad].sum() == 0


def test_knn_fewer_points_than_group_size_repeats_neighbours():
    xyz = cloud(3)
    tokens = KnnTokenizer(2, 5)(xyz, None)
    row = tokens.index[0].tolist()
    assert row[:3] == row[3:] + [row[2]] and sorted(row[:3]) == [0, 1, 2]


def test_knn_region_majority_and_mix():
    xyz = torch.tensor([[0.0, 0, 0], [0.1, 0, 0], [0.2, 0, 0], [5.0, 0, 0], [5.1, 0, 0], [5.2, 0, 0]])
    regions = torch.tensor([3, 3, 1, 0, 0, 2])
    tokens = KnnTokenizer(2, 3)(xyz, regions)
    left = 0 if tokens.index[0, 0] < 3 else 1  # the token around x = 0
    right = 1 - left
    assert tokens.region[left] == 3 and tokens.region[right] == 2  # majority ignores region 0
    mix = tokens.region_mix(num_regions=5)
    assert mix[left].tolist() == [0, 1, 0, 2, 0] and mix[right].tolist() == [2, 0, 1, 0, 0]
    torch.testing.assert_close(tokens.region_mix(normalize=True).sum(-1), torch.ones(2))
    with pytest.raises(ValueError, match="num_regions"):
        tokens.region_mix(num_regions=3)


def test_knn_tokens_of_only_unassigned_points_have_region_zero():
    tokens = KnnTokenizer(8, 8)(cloud(100), torch.zeros(100, dtype=torch.int64))
    assert (tokens.region == 0).all()


@pytest.mark.parametrize("sampler", [RandomSampler(), SubsampledFPS(factor=2), ExactFPS()])
def test_samplers_give_distinct_centres(sampler):
    xyz = cloud(500)
    tokens = KnnTokenizer(50, 8, sampler=sampler)(xyz, None)
    assert tokens.valid.all() and len(torch.unique(tokens.index[:, 0])) == 50


def test_sampler_is_wired_by_gin_reference():
    gin.parse_config("KnnTokenizer.sampler = @SubsampledFPS()\nSubsampledFPS.factor = 3\nKnnTokenizer.num_tokens = 7")
    tokenizer = gin.get_configurable(KnnTokenizer)()
    assert isinstance(tokenizer.sampler, SubsampledFPS) and tokenizer.sampler.factor == 3
    assert tokenizer(cloud(100), None).num_tokens == 7


def test_token_sets_stack_into_batches():
    tok = KnnTokenizer(8, 4)
    batch = TokenSet.stack([tok(cloud(50, 1), None), tok(cloud(5, 2), None)])
    assert batch.index.shape == (2, 8, 4) and batch.rel.shape == (2, 8, 4, 3)
    assert batch.valid.sum(-1).tolist() == [8, 5]
    assert batch.region_mix(num_regions=1).shape == (2, 8, 1)


# ---------------------------------------------------------------- bad input


BAD_XYZ = [
    (torch.zeros(5, 3, dtype=torch.int64), "xyz"),
    (torch.zeros(5, 2), "xyz"),
    (np.zeros((5, 3), np.float32), "xyz"),
    (torch.zeros(0, 3), "xyz"),
    (torch.tensor([[0.0, float("nan"), 0.0]] * 5), "xyz"),
]
BAD_REGIONS = [
    (torch.zeros(5, dtype=torch.int32), "region_ids"),
    (torch.zeros(4, dtype=torch.int64), "region_ids"),
    (torch.full((5,), -1, dtype=torch.int64), "region_ids"),
]


@pytest.mark.parametrize("make", [lambda: KnnTokenizer(4, 2), lambda: SamGuidedTokenizer(4, 2)])
@pytest.mark.parametrize("xyz, regions, name", [(x, torch.zeros(5, dtype=torch.int64), n) for x, n in BAD_XYZ]
                         + [(torch.zeros(5, 3), r, n) for r, n in BAD_REGIONS])
def test_bad_input_raises_one_clear_line(make, xyz, regions, name):
    with pytest.raises(ValueError, match=f"^{name}: expected") as err:
        make()(xyz, regions)
    assert "\n" not in str(err.value)


def test_sam_guided_requires_region_ids():
    with pytest.raises(ValueError, match="^region_ids: expected"):
        SamGuidedTokenizer(4, 2)(cloud(5), None)


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="unassigned"):
        SamGuidedTokenizer(unassigned="keep")
    with pytest.raises(ValueError, match="min_region_points"):
        SamGuidedTokenizer(min_region_points=0)
    with pytest.raises(ValueError, match="num_tokens"):
        KnnTokenizer(num_tokens=0)


# ---------------------------------------------------------------- SAM-guided, synthetic


def hand_made_frame() -> tuple[torch.Tensor, torch.Tensor]:
    """Region 1: 300 points (a slab), region 2: 5 points, region 3: one point, 40 points in no region."""
    rng = np.random.default_rng(0)
    parts = [rng.random((300, 3)) * [4, 1, 0.1], rng.random((5, 3)) + [6, 0, 0], np.array([[9.0, 9, 9]]),
             rng.random((40, 3)) * 0.5 + [0, 3, 0]]
    regions = np.repeat([1, 2, 3, 0], [300, 5, 1, 40])
    return torch.from_numpy(np.concatenate(parts).astype(np.float32)), torch.from_numpy(regions)


def test_sam_tokens_never_mix_regions_and_centres_are_means():
    xyz, regions = hand_made_frame()
    tokens = SamGuidedTokenizer(num_tokens=32, group_size=32)(xyz, regions)
    assert_region_pure_with_mean_centres(tokens, xyz, regions)
    # Wants ceil(n / K): region 1 -> 10, 2 -> 1, 3 -> 1, no region -> 2; all fit in 32.
    per_region = torch.bincount(tokens.region[tokens.valid], minlength=4).tolist()
    assert per_region == [2, 10, 1, 1] and int(tokens.valid.sum()) == 14
    small = tokens.index[tokens.region == 2][0]
    assert set(small.tolist()) == set(range(300, 305))  # a small region keeps all its points
    mix = tokens.region_mix(normalize=True)
    assert torch.equal(mix[tokens.valid].argmax(-1), tokens.region[tokens.valid])


def test_sam_single_point_region_is_one_token_of_copies():
    xyz, regions = hand_made_frame()
    tokens = SamGuidedTokenizer(num_tokens=32, group_size=32)(xyz, regions)
    (g,) = torch.nonzero(tokens.region == 3).flatten().tolist()
    assert (tokens.index[g] == 305).all() and (tokens.rel[g] == 0).all()
    assert torch.equal(tokens.centers[g], xyz[305])
    merged = SamGuidedTokenizer(num_tokens=32, group_size=32, min_region_points=2)(xyz, regions)
    assert 3 not in merged.region.tolist()
    holder = merged.region[(merged.index == 305).any(-1)]
    assert holder.tolist() == [0]  # too-small region joins the points of no region


def test_sam_padding_layout():
    xyz, regions = hand_made_frame()
    tokens = SamGuidedTokenizer(num_tokens=32, group_size=32)(xyz, regions)
    pad = ~tokens.valid
    assert tokens.valid.tolist() == [True] * 14 + [False] * 18
    assert (tokens.index[pad] == 0).all() and (tokens.region[pad] == 0).all()
    assert (tokens.rel[pad] == 0).all() and (tokens.point_regions[pad] == 0).all()


def test_sam_all_points_without_region():
    xyz = cloud(100)
    zeros = torch.zeros(100, dtype=torch.int64)
    kept = SamGuidedTokenizer(num_tokens=8, group_size=16)(xyz, zeros)
    assert int(kept.valid.sum()) == 7 and (kept.region == 0).all()  # ceil(100 / 16) tokens
    assert_region_pure_with_mean_centres(kept, xyz, zeros)
    covered = torch.unique(kept.index[kept.valid])
    assert len(covered) >= 7 * 8  # tokens split the points, they do not pile onto a few
    dropped = SamGuidedTokenizer(num_tokens=8, group_size=16, unassigned="drop")(xyz, zeros)
    assert not dropped.valid.any()


def test_sam_drop_unassigned_keeps_only_regions():
    xyz, regions = hand_made_frame()
    tokens = SamGuidedTokenizer(num_tokens=32, group_size=32, unassigned="drop")(xyz, regions)
    assert 0 not in tokens.region[tokens.valid].tolist()
    assert not torch.isin(tokens.index[tokens.valid], torch.arange(306, 346)).any()


def test_allocate_tokens_by_hand():
    # Wants [100, 10, 1] exceed 20: one each, the 17 spare shared as 17*99/108 = 15.58 and
    # 17*9/108 = 1.42; floors give 15 and 1, the last token goes to the larger remainder (.58).
    assert allocate_tokens(np.array([1000, 100, 10]), 10, 20).tolist() == [17, 2, 1]
    assert allocate_tokens(np.array([30, 5]), 10, 20).tolist() == [3, 1]  # fits: granted
    # More regions than budget: the largest keep one token, ties to the lower index.
    assert allocate_tokens(np.array([5, 9, 5, 7, 5]), 10, 3).tolist() == [1, 1, 0, 1, 0]


def test_sam_budget_cap_is_respected():
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 400, size=60)
    regions = torch.from_numpy(np.repeat(np.arange(1, 61), sizes))
    xyz = torch.from_numpy((rng.random((len(regions), 3)) + regions.numpy()[:, None] * 2).astype(np.float32))
    for budget in (25, 80):
        tokens = SamGuidedTokenizer(num_tokens=budget, group_size=32)(xyz, regions)
        assert int(tokens.valid.sum()) == budget
        per_region = torch.bincount(tokens.region[tokens.valid], minlength=61)[1:].numpy()
        assert per_region.tolist() == allocate_tokens(sizes, 32, budget).tolist()
        assert_region_pure_with_mean_centres(tokens, xyz, regions)
    few = SamGuidedTokenizer(num_tokens=25, group_size=32)(xyz, regions)
    largest = set((np.argsort(-sizes, kind="stable")[:25] + 1).tolist())
    assert set(few.region.tolist()) == largest  # more regions than tokens: the largest get one each


def test_sam_deterministic_for_a_seed_and_accepts_float64_and_large_ids():
    xyz, regions = hand_made_frame()
    tok = SamGuidedTokenizer(num_tokens=32, group_size=32, seed=3)
    a, b = tok(xyz, regions), tok(xyz, regions)
    assert torch.equal(a.index, b.index)
    assert not torch.equal(a.index, tok(xyz, regions, seed=4).index)
    big_ids = torch.where(regions > 0, regions * 10_000_000, regions)
    c = tok(xyz.double(), big_ids)
    assert c.centers.dtype == torch.float64
    assert_region_pure_with_mean_centres(c, xyz.double(), big_ids)


# ---------------------------------------------------------------- real SUN RGB-D frame 000001


@functools.lru_cache(maxsize=1)
def real_frame(root: pathlib.Path) -> tuple[torch.Tensor, torch.Tensor]:
    """20,000 points of frame 000001 (fixed seed) and their Felzenszwalb region ids (label + 1)."""
    frame = load_votenet_frame(root, "000001", num_points=20_000, seed=0)
    labels = ClassicalMaskSource(scale=200, sigma=0.8, min_size=200).segment_image(frame.image)
    regions = labels[frame.pix[:, 0], frame.pix[:, 1]].astype(np.int64)
    return torch.from_numpy(frame.xyz.copy()), torch.from_numpy(regions)


def test_projection_recipe_matches_stored_colours(real_data):
    frame = load_votenet_frame(real_data, "000001", num_points=5000)
    pixel_rgb = frame.image[frame.pix[:, 0], frame.pix[:, 1]] / 255.0
    assert np.abs(pixel_rgb - frame.points[:, 3:]).mean() < 1e-3  # the manifest's exact-match check


def test_real_frame_sam_tokens_are_pure_and_knn_tokens_mix(real_data):
    xyz, regions = real_frame(real_data)
    sam = SamGuidedTokenizer(num_tokens=256, group_size=128)(xyz, regions)
    assert int(sam.valid.sum()) > 100
    assert_region_pure_with_mean_centres(sam, xyz, regions)
    knn = KnnTokenizer(num_tokens=256, group_size=128)(xyz, regions)
    mix = knn.region_mix()[:, 1:]
    mixing = float(((mix > 0).sum(-1) > 1).float().mean())
    print(f"\nSUN RGB-D 000001, 20k points, Felzenszwalb regions: {mixing:.1%} of 256x128 KNN tokens mix regions")
    assert mixing > 0.3


# ---------------------------------------------------------------- SAM-guided options (budget, split, centre)


def zipf_frame(n: int, num_regions: int, seed: int, unassigned: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """n points in regions of Zipf-like sizes (10 % in no region), each region a blob around its centre."""
    rng = np.random.default_rng(seed)
    w = 1.0 / np.arange(1, num_regions + 1) ** 1.1
    regions = rng.choice(np.arange(1, num_regions + 1), size=n, p=w / w.sum())
    regions[rng.random(n) < unassigned] = 0
    xyz = (rng.random((num_regions + 1, 3)) * 8)[regions] + rng.normal(size=(n, 3)) * 0.4
    return torch.from_numpy(xyz.astype(np.float32)), torch.from_numpy(regions.astype(np.int64))


def _integer_digest(tokens: TokenSet) -> str:
    import hashlib

    h = hashlib.sha256()
    for field in ("index", "valid", "point_regions", "region"):
        h.update(getattr(tokens, field).numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("n, num_regions, kwargs, expected", [
    (20000, 400, dict(num_tokens=256, group_size=128), "0ebc159ca3a4522f"),
    (20000, 150, dict(num_tokens=256, group_size=128), "aeb01d2b6f41a166"),
    (4096, 80, dict(num_tokens=64, group_size=32), "6b9f439e1693f344"),
    (4096, 20, dict(num_tokens=64, group_size=32, unassigned="drop"), "2e986343d99e4bb8"),
    (4096, 80, dict(num_tokens=32, group_size=16, min_region_points=5), "47eab546fe752b76"),
])
def test_sam_defaults_give_the_tokens_of_before_the_options(n, num_regions, kwargs, expected):
    # Digests of the tokens the tokenizer gave before budget/split/center existed (same inputs, seed 7);
    # the centres were compared bit for bit too, on 120 inputs, when the options were added.
    xyz, regions = zipf_frame(n, num_regions, seed=1)
    tokens = SamGuidedTokenizer(**kwargs)(xyz, regions, seed=7)
    assert _integer_digest(tokens) == expected
    explicit = SamGuidedTokenizer(**kwargs, budget="one_each", split="nearest_seed", center="sampled")
    assert _integer_digest(explicit(xyz, regions, seed=7)) == expected
    assert_region_pure_with_mean_centres(tokens, xyz, regions)


def test_allocate_proportional_by_hand():
    # Wants [100, 10, 1, 1, 1] exceed 4. Shares 4 * n / 1120: 3.57, 0.36, 0.04, 0.02, 0.02; floors give
    # [3, 0, 0, 0, 0] and the last token goes to the largest remainder (.57): region 0.
    assert allocate_proportional(np.array([1000, 100, 10, 5, 5]), 10, 4).tolist() == [4, 0, 0, 0, 0]
    assert allocate_tokens(np.array([1000, 100, 10, 5, 5]), 10, 4).tolist() == [1, 1, 1, 1, 0]  # today's rule
    # Cap: wants [3, 1, 1, 1, 1, 1] exceed 5; region 0's share 5 * 300 / 400 = 3.75 reaches its want 3, so it
    # gets 3; the 2 left are shared over five equal regions (0.4 each): ties go to the lower index.
    assert allocate_proportional(np.array([300, 20, 20, 20, 20, 20]), 100, 5).tolist() == [3, 1, 1, 0, 0, 0]
    assert allocate_proportional(np.array([30, 5]), 10, 20).tolist() == [3, 1]  # fits: granted
    # Wants [5, 3, 2] exceed 2: shares 1.0, 0.6, 0.4 -> [1, 0, 0] + the largest remainder (.6).
    assert allocate_proportional(np.array([50, 30, 20]), 10, 2).tolist() == [1, 1, 0]


def test_allocate_proportional_spends_the_budget_and_never_exceeds_a_want():
    rng = np.random.default_rng(0)
    for _ in range(200):
        counts = rng.integers(1, 3000, size=rng.integers(1, 300))
        k, g = int(rng.choice([16, 32, 128])), int(rng.integers(1, 300))
        want = -(-counts // k)
        alloc = allocate_proportional(counts, k, g)
        assert alloc.sum() == min(g, want.sum()) and (alloc >= 0).all() and (alloc <= want).all()
        # Larger regions never get fewer tokens than smaller ones, unless the smaller one's want is met.
        larger = counts[:, None] > counts[None, :]
        assert (~larger | (alloc[:, None] >= alloc[None, :]) | (alloc == want)[:, None]).all()


def hand_made_split_frame() -> tuple[torch.Tensor, torch.Tensor]:
    """Region 2: cluster A (x = 0..5, points 0-5) and cluster B (x = 100, 101, points 6-7); region 1: four
    points right next to B (x = 102..105, y = 0.5, points 8-11). K = 4."""
    x = np.array([0, 1, 2, 3, 4, 5, 100, 101, 102, 103, 104, 105], dtype=np.float32)
    y = np.array([0] * 8 + [0.5] * 4, dtype=np.float32)
    xyz = np.stack([x, y, np.zeros_like(x)], axis=1)
    return torch.from_numpy(xyz), torch.tensor([2] * 8 + [1] * 4)


@pytest.mark.parametrize("seed", range(6))
def test_sam_split_knn_takes_the_k_nearest_inside_the_region(seed):
    xyz, regions = hand_made_split_frame()
    tokens = SamGuidedTokenizer(num_tokens=8, group_size=4, split="knn")(xyz, regions, seed=seed)
    # Region 2 wants 2 tokens, region 1 one; larger allocations first.
    assert tokens.valid.tolist() == [True] * 3 + [False] * 5 and tokens.region[:3].tolist() == [2, 2, 1]
    sets = [set(tokens.index[g].tolist()) for g in range(3)]
    # FPS puts one seed in A and one in B; B's 4 nearest inside region 2 are B and A's two nearest
    # points, never region 1's points next to it.
    assert {4, 5, 6, 7} in sets[:2]
    (a,) = [s for s in sets[:2] if s != {4, 5, 6, 7}]
    assert len(a) == 4 and a <= set(range(6))
    assert sets[2] == {8, 9, 10, 11}
    assert (tokens.index[:3, 0] != tokens.index[:3, 1]).all()  # K distinct points, nearest (the seed) first
    assert_region_pure_with_mean_centres(tokens, xyz, regions)


@pytest.mark.parametrize("seed", range(6))
def test_sam_split_nearest_seed_keeps_clusters_and_samples_large_parts(seed):
    xyz, regions = hand_made_split_frame()
    tokens = SamGuidedTokenizer(num_tokens=8, group_size=4)(xyz, regions, seed=seed)
    sets = [set(tokens.index[g].tolist()) for g in range(3)]
    assert {6, 7} in sets[:2]  # B alone, its 2 points repeated to K = 4
    (a,) = [s for s in sets[:2] if s != {6, 7}]
    assert len(a) == 4 and a <= set(range(6))  # A's 6 points sampled down to 4: two are left out
    assert sets[2] == {8, 9, 10, 11}


def test_sam_split_knn_seeds_are_region_fps_and_tokens_brute_force_knn():
    xyz, regions = zipf_frame(3000, 30, seed=2, unassigned=0.0)
    tokens = SamGuidedTokenizer(num_tokens=64, group_size=16, split="knn")(xyz, regions, seed=3)
    valid = tokens.valid.numpy()
    index, token_region = tokens.index.numpy()[valid], tokens.region.numpy()[valid]
    points, ids = xyz.numpy(), regions.numpy()
    for r in np.unique(token_region):
        mine = index[token_region == r]
        inside = np.flatnonzero(ids == r)
        if len(inside) < 16:
            assert len(mine) == 1 and set(mine[0].tolist()) == set(inside.tolist())
            continue
        local = {int(p): i for i, p in enumerate(inside)}
        seeds = reference_fps(points[inside], len(mine), local[int(mine[0, 0])])
        assert [int(inside[s]) for s in seeds] == mine[:, 0].tolist()  # FPS inside the region
        dist = np.linalg.norm(points[inside][None] - points[mine[:, 0]][:, None], axis=2)
        nearest = inside[np.argsort(dist, axis=1, kind="stable")[:, :16]]
        assert [set(row) for row in nearest.tolist()] == [set(row) for row in mine.tolist()]


def test_segment_fps_seeds_match_fps_per_segment():
    xyz = cloud(300, seed=4).numpy()
    counts, seeds, first = np.array([120, 100, 50, 30]), np.array([7, 5, 5, 1]), np.array([3, 0, 49, 10])
    picked = segment_fps_seeds(xyz, counts, seeds, first)
    starts = np.cumsum(counts) - counts
    expected = [starts[s] + i for s in range(4)
                for i in reference_fps(xyz[starts[s]:starts[s] + counts[s]], int(seeds[s]), int(first[s]))]
    assert picked.tolist() == expected
    labels = segment_fps(xyz, counts, seeds, first)
    for s in range(4):  # each point's label is its nearest seed of the segment
        part = slice(starts[s], starts[s] + counts[s])
        own = picked[sum(seeds[:s]):sum(seeds[:s + 1])]
        d = np.linalg.norm(xyz[part][:, None] - xyz[own][None], axis=2)
        assert (labels[part] == d.argmin(axis=1)).all()


@pytest.mark.parametrize("seed", range(4))
def test_sam_center_all_is_the_mean_of_every_point_of_the_part(seed):
    xyz, regions = hand_made_split_frame()
    tokens = SamGuidedTokenizer(num_tokens=8, group_size=4, center="all")(xyz, regions, seed=seed)
    by_set = {frozenset(tokens.index[g].tolist()): tokens.centers[g] for g in range(3)}
    a_center = next(c for s, c in by_set.items() if s <= set(range(6)))
    # A's part has 6 points (x = 0..5), only 4 sampled: its centre is still x = 2.5, the mean of all six.
    torch.testing.assert_close(a_center, torch.tensor([2.5, 0.0, 0.0]))
    torch.testing.assert_close(by_set[frozenset({6, 7})], torch.tensor([100.5, 0.0, 0.0]))
    sampled = SamGuidedTokenizer(num_tokens=8, group_size=4)(xyz, regions, seed=seed)
    assert torch.equal(sampled.index, tokens.index)  # the centre rule changes the centres only
    torch.testing.assert_close(tokens.rel, xyz[tokens.index] - tokens.centers[:, None])


def test_sam_center_all_and_sampled_differ_only_where_parts_exceed_k():
    xyz, regions = zipf_frame(4096, 40, seed=5)
    sampled = SamGuidedTokenizer(64, 32)(xyz, regions, seed=1)
    every = SamGuidedTokenizer(64, 32, center="all")(xyz, regions, seed=1)
    assert torch.equal(sampled.index, every.index)
    gap = (sampled.centers - every.centers).norm(dim=-1)
    assert gap.max() > 1e-3  # large parts: the K sampled points' mean is not the part's mean
    knn = [SamGuidedTokenizer(64, 32, split="knn", center=c)(xyz, regions, seed=1) for c in ("sampled", "all")]
    torch.testing.assert_close(knn[0].centers, knn[1].centers)  # KNN parts are their K points


def test_sam_budget_proportional_by_hand():
    # Regions of 64, 16, 4 and 4 points, far apart; G = 4, K = 8: wants [8, 2, 1, 1] exceed 4.
    # one_each: one token per region. proportional: shares 4 * [64, 16, 4, 4] / 88 = 2.91, 0.73, 0.18,
    # 0.18 -> floors [2, 0, 0, 0], the two left to the largest remainders: [3, 1, 0, 0].
    sizes = [64, 16, 4, 4]
    regions = torch.from_numpy(np.repeat([1, 2, 3, 4], sizes))
    rng = np.random.default_rng(0)
    xyz = torch.from_numpy((rng.random((88, 3)) + regions.numpy()[:, None] * 10).astype(np.float32))
    counts = {}
    for budget in ("one_each", "proportional"):
        tokens = SamGuidedTokenizer(num_tokens=4, group_size=8, budget=budget)(xyz, regions)
        counts[budget] = torch.bincount(tokens.region[tokens.valid], minlength=5)[1:].tolist()
        assert_region_pure_with_mean_centres(tokens, xyz, regions)
    assert counts == {"one_each": [1, 1, 1, 1], "proportional": [3, 1, 0, 0]}


def test_sam_budget_proportional_on_many_regions_matches_its_allocation():
    xyz, regions = zipf_frame(20000, 400, seed=3)
    for split in ("nearest_seed", "knn"):
        tokens = SamGuidedTokenizer(256, 128, budget="proportional", split=split)(xyz, regions, seed=0)
        ids, counts = np.unique(regions.numpy(), return_counts=True)
        per_region = torch.bincount(tokens.region[tokens.valid], minlength=int(ids.max()) + 1).numpy()[ids]
        assert per_region.tolist() == allocate_proportional(counts, 128, 256).tolist()
        assert int(tokens.valid.sum()) == 256
        assert_region_pure_with_mean_centres(tokens, xyz, regions)


@pytest.mark.parametrize("name", ["budget", "split", "center"])
def test_bad_option_values_raise_one_line(name):
    with pytest.raises(ValueError, match=f"^{name}: expected one of") as err:
        SamGuidedTokenizer(**{name: "largest-first"})
    assert "\n" not in str(err.value)


def test_options_are_gin_parameters():
    gin.parse_config("SamGuidedTokenizer.budget = 'proportional'\nSamGuidedTokenizer.split = 'knn'\n"
                     "SamGuidedTokenizer.center = 'all'")
    tokenizer = gin.get_configurable(SamGuidedTokenizer)()
    assert (tokenizer.budget, tokenizer.split, tokenizer.center) == ("proportional", "knn", "all")

"""Batched tokenization (``methods.tokenizers.batched``) gives the per-frame CPU tokenizers' tokens.

Equality on 100 random frames of each production shape (pretraining: 20,000 points -> 256 x 128, KNN
and SAM-guided with regions; detection: 40,000 points -> 2048 x 128, KNN without regions), then edge
cases by hand. KNN neighbour rows may differ only by exact distance ties; SAM-guided centres only by one
float32 step where their float64 mean lies on a float32 rounding midpoint (the CPU path sums with
OpenBLAS, whose order depends on the machine); everything else is equal.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.perf.tokenizers import synthetic_room
from methods.tokenizers import (
    KnnTokenizer,
    RandomSampler,
    SamGuidedTokenizer,
    SubsampledFPS,
    TokenSet,
    collate_tokenizer_inputs,
    majority,
    supports_batched,
    tokenize_batch,
    tokenizer_inputs,
)
from methods.tokenizers.batched_knn import first_argmax, majority_region

BATCH = 8
FRAMES = 100  # random frames per production shape; the detection shape's CPU reference alone is ~0.15 s a frame
# One torch thread: on a busy 2-core machine a second thread waits on the first and runs 4-10x slower.
pytestmark = pytest.mark.usefixtures("one_thread")


def tokenize_both(tok, frames: list[tuple[torch.Tensor, torch.Tensor | None]], seeds: list[int],
                  batch: int = BATCH) -> tuple[list[TokenSet], list[TokenSet]]:
    """(batched, CPU) TokenSets of ``frames``, ``batch`` frames at a time."""
    ours, ref = [], []
    for i in range(0, len(frames), batch):
        part, part_seeds = frames[i: i + batch], seeds[i: i + batch]
        items = [tokenizer_inputs(tok, xyz, regions, seed=s) for (xyz, regions), s in zip(part, part_seeds)]
        ours.append(tokenize_batch(tok, collate_tokenizer_inputs(items)))
        ref.append(TokenSet.stack([tok(xyz, regions, seed=s) for (xyz, regions), s in zip(part, part_seeds)]))
    return ours, ref


def squared_distances(xyz: torch.Tensor, centre: torch.Tensor, index: torch.Tensor) -> np.ndarray:
    """cKDTree's squared float64 distances ((dx^2 + dy^2) + dz^2) from ``centre`` to ``xyz[index]``."""
    d = xyz[index].double().numpy() - centre.double().numpy()
    return (d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]) + d[:, 2] * d[:, 2]


def one_float_step(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise: a equals b or its float neighbour on either side."""
    inf = torch.full_like(b, float("inf"))
    return (a == b) | (a == torch.nextafter(b, inf)) | (a == torch.nextafter(b, -inf))


def assert_same_tokens(ours: TokenSet, ref: TokenSet, frames: list, sam: bool = False) -> dict[str, int]:
    """Every field equal up to KNN distance ties (and SAM-guided centres up to one float step).

    A tie row holds the same distances as the CPU row; its regions are its own points' (another point at
    the K-th distance may carry another region). Returns counts of the tolerated differences.
    """
    assert ours.index.shape == ref.index.shape and ours.rel.dtype == ref.rel.dtype
    assert ours.index.dtype == ref.index.dtype == torch.int64
    assert torch.equal(ours.valid, ref.valid)
    tie_rows = 0
    for b, (xyz, regions) in enumerate(frames):
        n = len(xyz)
        valid = ours.valid[b]
        assert (ours.index[b][valid] < n).all() and (ours.index[b][valid] >= 0).all()  # never a padded point
        gathered = xyz[ours.index[b]]
        assert torch.equal(ours.rel[b][valid], (gathered - ours.centers[b][:, None])[valid])
        for name in ("index", "rel", "centers", "point_regions", "region"):  # padding layout
            assert (getattr(ours, name)[b][~valid] == (xyz[0] if name == "centers" else 0)).all(), name
        differ = torch.nonzero((ours.index[b] != ref.index[b]).any(-1)).flatten().tolist()
        assert not (sam and differ), "SAM-guided tokens draw no distances: their points must be equal"
        for g in differ:  # KNN: the same distances in another order, or another point at the same distance
            centre = ref.centers[b, g]
            a = squared_distances(xyz, centre, ours.index[b, g])
            r = squared_distances(xyz, centre, ref.index[b, g])
            assert np.array_equal(a, np.sort(a)), "neighbours nearest first"
            assert np.array_equal(np.sort(a), np.sort(r)), f"frame {b} token {g}: not a tie"
            ids = torch.zeros(n, dtype=torch.int64) if regions is None else regions
            assert torch.equal(ours.point_regions[b, g], ids[ours.index[b, g]])
            assert ours.region[b, g] == int(majority(ours.point_regions[b, g : g + 1].numpy())[0])
        tie_rows += len(differ)
        same = torch.ones_like(valid)
        same[differ] = False
        assert torch.equal(ours.point_regions[b][same], ref.point_regions[b][same])
        assert torch.equal(ours.region[b][same], ref.region[b][same])
    if sam:
        assert one_float_step(ours.centers, ref.centers).all()
        exact = (ours.centers == ref.centers).all(-1)
        assert torch.equal(ours.rel[exact], ref.rel[exact])
        return {"tie_rows": tie_rows, "centres_one_step": int((~exact).sum())}
    assert torch.equal(ours.centers, ref.centers)
    same_rows = (ours.index == ref.index).all(-1)
    assert torch.equal(ours.rel[same_rows], ref.rel[same_rows])
    return {"tie_rows": tie_rows, "centres_one_step": 0}


def check_frames(tok, frames, seeds=None, batch: int = BATCH, sam: bool = False) -> dict[str, int]:
    seeds = list(range(len(frames))) if seeds is None else seeds
    counts = {"tie_rows": 0, "centres_one_step": 0}
    for i, (ours, ref) in enumerate(zip(*tokenize_both(tok, frames, seeds, batch))):
        part = assert_same_tokens(ours, ref, frames[i * batch: (i + 1) * batch], sam)
        counts = {key: counts[key] + part[key] for key in counts}
    return counts


def rooms(n: int, count: int, regions: bool = True) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    return [(xyz, ids if regions else None) for xyz, ids in (synthetic_room(n, 100 + i) for i in range(count))]


# ---------------------------------------------------------------- the production shapes, 100 frames each


def test_knn_pretraining_shape_matches_cpu_on_100_frames():
    counts = check_frames(KnnTokenizer(256, 128), rooms(20_000, FRAMES), seeds=[7 * i + 1 for i in range(FRAMES)])
    assert counts["tie_rows"] < FRAMES * 256 // 100  # ties are rare on these frames


def test_sam_guided_pretraining_shape_matches_cpu_on_100_frames():
    counts = check_frames(SamGuidedTokenizer(256, 128), rooms(20_000, FRAMES), seeds=list(range(FRAMES)), sam=True)
    assert counts["centres_one_step"] < FRAMES * 256 * 3 // 1000  # midpoints are rare


def test_knn_detection_shape_matches_cpu_on_100_frames():
    counts = check_frames(KnnTokenizer(2048, 128), rooms(40_000, FRAMES, regions=False), seeds=list(range(FRAMES)))
    assert counts["tie_rows"] < FRAMES * 2048 // 100


# ---------------------------------------------------------------- edge cases


def cloud(n: int, seed: int = 0, offset: float = 0.0, scale: float = 4.0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random((n, 3), dtype=np.float32) * scale + offset)


def labelled(xyz: torch.Tensor, num_regions: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return xyz, torch.from_numpy(np.random.default_rng(seed).integers(0, num_regions + 1, len(xyz)))


@pytest.mark.parametrize("make", [lambda g, k: KnnTokenizer(g, k), lambda g, k: SamGuidedTokenizer(g, k)],
                         ids=["knn", "sam"])
def test_frames_of_different_sizes_in_one_batch(make):
    """N < G, N < K, a single point, and padded points that FPS would pick (far) or KNN would take (near)."""
    frames = [
        labelled(cloud(3000, 1, offset=50.0), 12),  # padding at the origin is farthest from every point
        labelled(cloud(200, 2, offset=-0.5, scale=1.0), 3),  # padding at the origin sits amid the points
        labelled(cloud(40, 3), 2),  # N < G and N < K
        labelled(cloud(1, 4), 1),
        labelled(cloud(700, 5), 30),
    ]
    check_frames(make(64, 48), frames, sam=isinstance(make(1, 1), SamGuidedTokenizer))


def test_padded_points_are_never_chosen():
    """Padding sits at the origin: amid a small frame's points (KNN would take it), far from an offset
    frame's (FPS would pick it). Neither happens, and the tokens are the CPU path's."""
    tok = KnnTokenizer(32, 16)
    small, far, big = cloud(20, 1, offset=-1.0, scale=2.0), cloud(100, 2, offset=50.0), cloud(500, 3)
    inputs = collate_tokenizer_inputs([tokenizer_inputs(tok, xyz, None, seed=3) for xyz in (small, far, big)])
    assert inputs["xyz"].shape == (3, 500, 3) and inputs["point_valid"].sum(1).tolist() == [20, 100, 500]
    tokens = tokenize_batch(tok, inputs)
    ref = tok(small, None, seed=3)
    origin_nearer = (ref.centers[ref.valid].double().norm(dim=1) ** 2)[:, None] < squared_kth(small, ref)
    assert origin_nearer.any()  # the premise: unmasked padding would be some centre's neighbour
    assert (tokens.index[0] < 20).all() and (tokens.index[1] < 100).all()
    check_frames(tok, [(small, None), (far, None), (big, None)], seeds=[3, 3, 3])


def squared_kth(xyz: torch.Tensor, tokens: TokenSet) -> torch.Tensor:
    """(G, 1) squared distance of each valid token's farthest neighbour."""
    return torch.stack([torch.from_numpy(squared_distances(xyz, c, i)).max() for c, i in
                        zip(tokens.centers[tokens.valid], tokens.index[tokens.valid])])[:, None]


def test_sam_one_point_regions_duplicates_and_empty_seeds():
    """One-point regions, and a region of 3 distinct locations wanting 25 tokens (most seeds get no point)."""
    xyz = torch.cat([cloud(300, 1), torch.tensor([[9.0, 9, 9], [8.0, 8, 8]]), cloud(3, 2).repeat(134, 1)])
    regions = torch.cat([torch.randint(0, 4, (300,), generator=torch.Generator().manual_seed(0)),
                         torch.tensor([5, 6]), torch.full((402,), 7)])
    tok = SamGuidedTokenizer(64, 16)
    counts = check_frames(tok, [(xyz, regions), (xyz[:302], regions[:302])], sam=True)
    ref = tok(xyz, regions, seed=0)
    assert ref.valid.sum() < 64 and (ref.region[ref.valid] == 7).sum() == 3  # empty seeds were dropped
    assert counts["centres_one_step"] <= 1


def test_sam_points_in_no_region_only():
    tok = SamGuidedTokenizer(16, 8)
    check_frames(tok, [(cloud(100, 1), torch.zeros(100, dtype=torch.int64))], sam=True)
    drop = SamGuidedTokenizer(16, 8, unassigned="drop")
    frames = [(cloud(100, 1), torch.zeros(100, dtype=torch.int64)), labelled(cloud(200, 2), 4)]
    check_frames(drop, frames, sam=True)
    assert not tokenize_batch(drop, collate_tokenizer_inputs([tokenizer_inputs(drop, *frames[0])])).valid.any()


@pytest.mark.parametrize("options", [
    dict(unassigned="drop"), dict(min_region_points=120), dict(budget="proportional"), dict(num_tokens=8),
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_sam_supported_options_match_cpu(options):
    tok = SamGuidedTokenizer(**{"num_tokens": 48, "group_size": 32, **options})
    check_frames(tok, [labelled(cloud(3000, s), 25, s) for s in range(4)], sam=True)


def test_knn_regions_majority_and_float64_inputs():
    frames = [labelled(cloud(2000, s).double(), 6, s) for s in range(3)]
    ours, ref = tokenize_both(KnnTokenizer(40, 24), frames, [0, 1, 2])
    assert ours[0].centers.dtype == torch.float64 and (ours[0].region > 0).any()
    assert_same_tokens(ours[0], ref[0], frames)


def test_sam_float64_inputs_keep_float64():
    """float64 points: the same points per token; centres (float64 means summed in another order) agree
    to a few float64 steps."""
    tok = SamGuidedTokenizer(32, 16)
    frames = [labelled(cloud(800, s).double(), 5, s) for s in range(2)]
    ours, ref = tokenize_both(tok, frames, [0, 1])
    assert ours[0].centers.dtype == ours[0].rel.dtype == torch.float64
    assert torch.equal(ours[0].index, ref[0].index) and torch.equal(ours[0].valid, ref[0].valid)
    torch.testing.assert_close(ours[0].centers, ref[0].centers, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(ours[0].rel, ref[0].rel, rtol=1e-14, atol=1e-14)


def test_knn_coincident_points_tie():
    """Many points at few locations (with different regions): FPS repeats locations, neighbour rows are
    ties in any order, and a tie row's regions are its own points'."""
    xyz = cloud(12, 1).repeat(40, 1)
    counts = check_frames(KnnTokenizer(20, 50), [labelled(xyz, 3), (cloud(500, 2), None)])
    assert counts["tie_rows"] > 0


def test_majority_region_is_majority():
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, 4, (500, 7)))
    ids[:50] = 0
    assert torch.equal(majority_region(ids), torch.from_numpy(majority(ids.numpy())))
    assert majority_region(ids.view(50, 10, 7)).shape == (50, 10)


def test_seed_none_uses_the_tokenizer_seed():
    tok = KnnTokenizer(16, 8, seed=11)
    xyz = cloud(300)
    tokens = tokenize_batch(tok, collate_tokenizer_inputs([tokenizer_inputs(tok, xyz, None)]))
    assert torch.equal(tokens.centers[0], tok(xyz, None).centers)


# ---------------------------------------------------------------- API: support, collation, checks


def test_supports_batched_names_what_is_not_ported():
    assert supports_batched(KnnTokenizer()) is None and supports_batched(SamGuidedTokenizer()) is None
    for tok, word in [(KnnTokenizer(sampler=RandomSampler()), "RandomSampler"),
                      (KnnTokenizer(sampler=SubsampledFPS()), "SubsampledFPS"),
                      (SamGuidedTokenizer(split="knn"), "split"), (SamGuidedTokenizer(center="all"), "center"),
                      (object(), "object")]:
        reason = supports_batched(tok)
        assert word in reason and "\n" not in reason
        with pytest.raises(ValueError, match=word):
            tokenizer_inputs(tok, cloud(10), None)


def test_collate_pads_with_zeros_and_checks_items():
    tok = SamGuidedTokenizer(16, 8)
    items = [tokenizer_inputs(tok, *labelled(cloud(n, n), r)) for n, r in [(30, 2), (50, 5)]]
    batch = collate_tokenizer_inputs(items)
    assert batch["xyz"].shape == (2, 50, 3) and batch["point_valid"].sum(1).tolist() == [30, 50]
    assert (batch["xyz"][0, 30:] == 0).all() and batch["segment_tokens"].shape[0] == 2
    with pytest.raises(ValueError, match="keys"):
        collate_tokenizer_inputs([items[0], tokenizer_inputs(KnnTokenizer(16, 8), cloud(30), None)])
    with pytest.raises(ValueError, match="empty"):
        collate_tokenizer_inputs([])
    with pytest.raises(ValueError, match="G, K"):
        tokenize_batch(SamGuidedTokenizer(16, 4), batch)


def test_first_argmax_is_the_first_maximum():
    values = torch.randint(0, 5, (6, 1024)).float()
    values[2] = float("-inf")
    values[3, 700:] = 9.0
    assert torch.equal(first_argmax(values), values.argmax(1)) and first_argmax(values)[3] == 700

"""Token report on hand-made frames: valid tokens, distinct points per token, coverage, region mixing."""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from methods.batching import TokenizedFrames, frame_inputs, frame_seed
from methods.tokenizers import KnnTokenizer, SamGuidedTokenizer
from methods.tokenizers.report import REPORT_FRAMES, stage_token_report, token_report


def frame(x, region, frame_id="f", y=None) -> types.SimpleNamespace:
    """A prepared frame as the report reads it: points on the x axis (y optional) and their region ids."""
    x = np.asarray(x, dtype=np.float32)
    xyz = np.stack([x, np.zeros_like(x) if y is None else np.asarray(y, np.float32), np.zeros_like(x)], axis=1)
    return types.SimpleNamespace(xyz=xyz, region=np.asarray(region, dtype=np.int32), frame_id=frame_id)


def sam_frame() -> types.SimpleNamespace:
    """Region 1: two clusters of 3 (x = 0..2 and 50..52); region 2: 4 points; no region: 2 points (K = 4)."""
    return frame([0, 1, 2, 50, 51, 52, 100, 101, 102, 103, 200, 201], [1] * 6 + [2] * 4 + [0] * 2)


@pytest.mark.parametrize("seed", range(4))
def test_sam_report_by_hand(seed):
    one = frame([0, 1, 2, 3], [7] * 4, "one")
    report = token_report(SamGuidedTokenizer(num_tokens=8, group_size=4), [sam_frame(), one], seed)
    # Frame 1: region 1 wants 2 tokens, one per cluster (3 points each, 1 repeat), region 2 one of its 4
    # points, no region one of its 2: tokens of 3, 3, 4, 2 distinct points, every point covered.
    # Frame 2: one token of 4. Pooled over both: (3 + 3 + 4 + 2 + 4) / 5 = 3.2 points per token.
    assert report == {"frames": 2.0, "tokens_mean": 2.5, "tokens_min": 1.0, "tokens_max": 4.0,
                      "points_per_token_mean": pytest.approx(3.2), "points_per_token_min": 2.0,
                      "coverage_mean": 1.0, "coverage_min": 1.0, "coverage_max": 1.0,
                      "mixed_mean": 0.0, "mixed_regions_mean": 0.0}


@pytest.mark.parametrize("seed", range(4))
def test_sam_report_of_the_options_by_hand(seed):
    # split="knn": each cluster's seed takes its 3 points and the nearest of the other cluster (K = 4).
    knn = token_report(SamGuidedTokenizer(8, 4, split="knn"), [sam_frame()], seed)
    assert (knn["tokens_mean"], knn["points_per_token_mean"], knn["coverage_mean"]) == (4.0, 3.5, 1.0)
    # unassigned="drop": the two points of no region are in no token, 10 of 12 covered.
    drop = token_report(SamGuidedTokenizer(8, 4, unassigned="drop"), [sam_frame()], seed)
    assert (drop["tokens_mean"], drop["points_per_token_mean"]) == (3.0, pytest.approx(10 / 3))
    assert drop["coverage_mean"] == pytest.approx(10 / 12)
    # A one-point region counted as no region joins the unassigned points: its token mixes ids 0 and 5,
    # which the report reads from the points' own ids (no two SAM regions, though).
    small = frame([0, 1, 2, 3, 200, 201, 202], [1] * 4 + [0, 0, 5])
    merged = token_report(SamGuidedTokenizer(8, 4, min_region_points=2), [small], seed)
    assert (merged["tokens_mean"], merged["mixed_mean"], merged["mixed_regions_mean"]) == (2.0, 0.5, 0.0)


@pytest.mark.parametrize("seed", range(4))
def test_knn_report_by_hand(seed):
    # Two clusters of 4 far apart; G = 2, K = 4: whichever FPS start, the tokens are the two clusters.
    # Cluster A holds regions 1 and 0 (a mix, but of one SAM region), cluster B regions 2 and 3.
    f = frame([0, 1, 2, 3, 10, 11, 12, 13], [1, 1, 0, 0, 2, 2, 2, 3])
    report = token_report(KnnTokenizer(num_tokens=2, group_size=4), [f], seed)
    assert (report["tokens_mean"], report["points_per_token_mean"], report["coverage_mean"]) == (2.0, 4.0, 1.0)
    assert (report["mixed_mean"], report["mixed_regions_mean"]) == (1.0, 0.5)


def test_knn_report_counts_padding_out():
    # 3 points, G = 5: three valid tokens of the 3 points (each repeated cyclically to K = 4).
    report = token_report(KnnTokenizer(num_tokens=5, group_size=4), [frame([0, 1, 5], [1, 1, 2])], 0)
    assert (report["tokens_mean"], report["points_per_token_mean"], report["coverage_mean"]) == (3.0, 3.0, 1.0)
    assert report["mixed_regions_mean"] == 1.0  # every token holds all 3 points: regions 1 and 2


class Recording:
    """A tokenizer that records its inputs and seeds."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, xyz, region_ids, *, seed):
        self.calls.append((xyz.clone(), region_ids.clone(), seed))
        return self.inner(xyz, region_ids, seed=seed)


def test_report_sees_the_tokens_of_the_first_training_epoch():
    f = sam_frame()  # plus the region table that training batches carry
    f.region_ids, f.region_features, f.region_groups = np.array([1, 2], np.int32), np.zeros((2, 3), np.float16), np.zeros(2)
    training, reporting = Recording(SamGuidedTokenizer(8, 4)), Recording(SamGuidedTokenizer(8, 4))
    TokenizedFrames([f], training, seed=11)[0]
    token_report(reporting, [f], seed=11)
    (xyz_t, reg_t, seed_t), (xyz_r, reg_r, seed_r) = training.calls[0], reporting.calls[0]
    assert torch.equal(xyz_t, xyz_r) and torch.equal(reg_t, reg_r) and seed_t == seed_r == frame_seed(11, 0, "f")
    assert torch.equal(frame_inputs(f)[0], xyz_r)


def test_stage_token_report_keys_and_frame_sample():
    frames = [frame([0, 1, 2, 3], [1] * 4, f"f{i}") for i in range(REPORT_FRAMES + 8)]
    metrics = stage_token_report("stage1", SamGuidedTokenizer(8, 4), frames, seed=0)
    assert metrics["tokens/stage1/frames"] == REPORT_FRAMES and metrics["tokens/stage1/coverage_mean"] == 1.0
    assert all(key.startswith("tokens/stage1/") for key in metrics)
    assert stage_token_report("s", SamGuidedTokenizer(8, 4), frames[:3], seed=0)["tokens/s/frames"] == 3.0
    with pytest.raises(ValueError, match="^frames: expected"):
        token_report(SamGuidedTokenizer(8, 4), [], seed=0)

"""Group-balanced re-weighting (methods/reweighting.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from methods.region_groups import RegionSample, cluster_region_features
from methods.reweighting import GroupBalancing, assign_groups, group_counts, group_weights, token_weights


def test_group_weights_match_hand_computation():
    # n = [10, 5, 1, 4]: n_min = 1, n_max = 10
    # k   = (n - 1) / 10 = [0.9, 0.4, 0.0, 0.3]
    # tau = 1 - k        = [0.1, 0.6, 1.0, 0.7], sum 2.4
    # w   = tau / 2.4    = [1/24, 6/24, 10/24, 7/24]
    w = group_weights(np.array([10, 5, 1, 4]))
    np.testing.assert_allclose(w, np.array([1, 6, 10, 7]) / 24)
    assert w.sum() == pytest.approx(1.0)


def test_empty_groups_get_zero_weight_and_do_not_change_the_others():
    # Empty groups are skipped: n_min / n_max / the normalisation use non-empty groups only.
    w = group_weights(np.array([10, 0, 5, 1, 0, 4]))
    np.testing.assert_allclose(w, np.array([1, 0, 6, 10, 0, 7]) / 24)
    with pytest.raises(ValueError, match="empty"):
        group_weights(np.zeros(3))


def test_equal_counts_give_uniform_weights():
    np.testing.assert_allclose(group_weights(torch.tensor([3, 3, 3, 3])), np.full(4, 0.25))


def test_token_weights_lookup_and_mean_one_over_valid_tokens():
    w = np.array([1, 6, 10, 7]) / 24
    groups = torch.tensor([[0, 2, 2, -1], [1, 3, 0, 0]])
    valid = torch.tensor([[True, True, True, False], [True, True, True, False]])
    out = token_weights(groups, w, valid)
    raw = torch.tensor([[1, 10, 10, 0], [6, 7, 1, 0]], dtype=torch.float32) / 24
    torch.testing.assert_close(out, raw / (raw.sum() / 6))
    assert out[valid].mean() == pytest.approx(1.0)
    assert torch.all(out[~valid] == 0)  # group -1 on a padded token is never read
    torch.testing.assert_close(token_weights(groups, w, valid, normalize=False), raw)


def test_token_weights_off_is_all_ones_and_bad_ids_fail():
    groups = torch.tensor([[0, 5, 1]])
    valid = torch.tensor([[True, True, False]])
    assert token_weights(groups, None, valid).tolist() == [[1.0, 1.0, 0.0]]
    with pytest.raises(ValueError, match="group_of_token"):
        token_weights(groups, np.full(4, 0.25), valid)


def _blobs(seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0, 0], [10, 0], [0, 10]], dtype=np.float64)
    sizes = [30, 12, 3]
    return np.concatenate([c + 0.1 * rng.standard_normal((s, 2)) for c, s in zip(centres, sizes)]), sizes


def test_kmeans_is_deterministic_and_counts_sum_to_r():
    feats, sizes = _blobs()
    first = cluster_region_features(feats, num_groups=3, seed=4)
    second = cluster_region_features(torch.from_numpy(feats).float().double(), num_groups=3, seed=4)
    c1, a1 = first.centroids, first.assignment
    np.testing.assert_array_equal(a1, second.assignment)
    np.testing.assert_allclose(c1, second.centroids, rtol=1e-6)  # float32-rounded input: nearly the same
    np.testing.assert_array_equal(c1, cluster_region_features(feats, num_groups=3, seed=4).centroids)  # bytes
    assert a1.dtype == np.int64 and c1.shape == (3, 2)
    assert 1 <= first.iterations < 300 and first.inertia == pytest.approx(
        sum(((feats - c1[a1]) ** 2).sum(axis=1)))  # converged, and its inertia is the sum of squared distances
    counts = group_counts(a1, 3)
    assert counts.sum() == len(feats)
    assert sorted(counts.tolist()) == sorted(sizes)  # well-separated blobs are recovered


def test_kmeans_caps_groups_at_distinct_rows():
    feats = np.array([[0.0, 1.0], [0.0, 1.0], [2.0, 2.0], [2.0, 2.0], [5.0, 5.0]])
    fit = cluster_region_features(feats, num_groups=32, seed=0)
    centroids, assignment = fit.centroids, fit.assignment
    assert centroids.shape == (3, 2)
    assert group_counts(assignment, len(centroids)).tolist().count(0) == 0
    assert assignment[0] == assignment[1] and assignment[2] == assignment[3]
    assert cluster_region_features(feats[:1], num_groups=32).assignment.tolist() == [0]
    with pytest.raises(ValueError):
        cluster_region_features(np.zeros((0, 4)))


def test_kmeans_counts_distinct_rows_by_value_and_leaves_the_input_alone():
    # -0.0 and 0.0 are one value: two distinct rows here, whatever their bytes.
    feats = np.array([[0.0, 1.0], [-0.0, 1.0], [3.0, 3.0], [3.0, 3.0]])
    before = feats.copy()
    fit = cluster_region_features(feats, num_groups=32, seed=0)
    assert fit.centroids.shape == (2, 2) and fit.assignment[0] == fit.assignment[1] != fit.assignment[2]
    np.testing.assert_array_equal(feats, before)  # the fit centres its own copy, never the caller's array
    assert np.signbit(feats[1, 0])
    # Many rows, many distinct: K groups, exactly as the sorted count would give.
    blobs, _ = _blobs()
    assert len(cluster_region_features(np.repeat(blobs, 3, axis=0), num_groups=7, seed=0).centroids) == 7


def test_assign_groups_picks_the_nearest_centroid():
    centroids = np.array([[0.0, 0.0], [10.0, 0.0]])
    feats = torch.tensor([[[1.0, 0.5], [9.0, -1.0]], [[6.0, 0.0], [4.0, 0.0]]])
    assert assign_groups(feats, centroids).tolist() == [[0, 1], [1, 0]]


def test_group_balancing_switch():
    groups = torch.tensor([[0, 1, 1, 0]])
    valid = torch.tensor([[True, True, True, False]])
    weights = np.array([0.75, 0.25])
    on = GroupBalancing().weights_of_tokens(groups, weights, valid)
    # Raw weights 0.75, 0.25, 0.25 rescaled to mean 1 over the three valid tokens: 1.8, 0.6, 0.6.
    assert on.tolist()[0][:3] == pytest.approx([1.8, 0.6, 0.6]) and on[0, 3] == 0
    off = GroupBalancing(enabled=False).weights_of_tokens(groups, weights, valid)
    assert off.tolist() == [[1.0, 1.0, 1.0, 0.0]]

def test_a_region_sample_keeps_everything_in_order_while_it_fits_and_a_fair_share_after():
    rows = np.arange(40, dtype=np.float32).reshape(20, 2)
    small = RegionSample(100, seed=0)
    for part in np.split(rows, [3, 9]):
        small.add(part)
    np.testing.assert_array_equal(small.rows(), rows)
    hits = np.zeros(1000)
    for seed in range(400):  # every row of the stream ends in a 100-row sample with chance 1/10
        sample = RegionSample(100, seed)
        stream = np.arange(1000, dtype=np.float32)[:, None]
        for part in np.array_split(stream, 7):
            sample.add(part)
        assert sample.seen == 1000 and sample.rows().shape == (100, 1)
        hits[sample.rows()[:, 0].astype(int)] += 1
    assert abs(hits.mean() - 40) < 1e-9 and hits[:500].mean() == pytest.approx(hits[500:].mean(), rel=0.05)
    again = RegionSample(100, 3)
    for part in np.array_split(np.arange(1000, dtype=np.float32)[:, None], 2):  # other chunks, same stream
        again.add(part)
    reference = RegionSample(100, 3)
    for part in np.array_split(np.arange(1000, dtype=np.float32)[:, None], 7):
        reference.add(part)
    np.testing.assert_array_equal(again.rows(), reference.rows())  # the stream decides, not its chunks

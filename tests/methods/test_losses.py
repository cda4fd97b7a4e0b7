"""Pretraining losses (methods/losses.py): zero at equality, hand cases, selections, empty inputs."""
from __future__ import annotations

import pytest
import torch

from methods.losses import (chamfer_l2, instance_loss, masked_mean_pool, masked_token_loss,
                            mixed_region_targets, region_distillation_loss, smooth_l1_distillation)


def _pair(*shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen), torch.randn(*shape, generator=gen)


def _assert_empty_is_zero_with_graph(loss_fn, pred, *args):
    pred = pred.clone().requires_grad_(True)
    loss = loss_fn(pred, *args)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.all(pred.grad == 0)


# ------------------------------------------------------------------------ region distillation (DD)


def test_region_distillation_hand_case():
    pred = torch.tensor([[[1.0, 2.0], [0.0, 0.0], [5.0, 5.0]]])
    target = torch.tensor([[[0.0, 0.0], [1.0, -1.0], [0.0, 0.0]]])
    weight = torch.tensor([[2.0, 0.5, 9.0]])
    has_target = torch.tensor([[True, True, False]])  # token 2 has no region: left out
    # L1 per token (mean over channels): (1 + 2) / 2 = 1.5 and (1 + 1) / 2 = 1.0
    # L = (2 * 1.5 + 0.5 * 1.0) / M, M = 2 tokens with a target -> 1.75
    assert region_distillation_loss(pred, target, weight, has_target).item() == pytest.approx(1.75)
    assert region_distillation_loss(pred, target, None, has_target).item() == pytest.approx(1.25)


def test_region_distillation_zero_at_equality_and_empty():
    pred, _ = _pair(2, 4, 5)
    has = torch.ones(2, 4, dtype=torch.bool)
    assert region_distillation_loss(pred, pred.clone(), torch.rand(2, 4), has).item() == 0.0
    _assert_empty_is_zero_with_graph(region_distillation_loss, pred, torch.zeros_like(pred), None, ~has)


def test_region_distillation_ignores_nan_outside_selection():
    pred, target = _pair(1, 3, 2)
    target[0, 2] = float("nan")
    has = torch.tensor([[True, True, False]])
    assert torch.isfinite(region_distillation_loss(pred, target, None, has))


def test_mixed_region_targets_point_count_weighted():
    # Per-sample tables: row r = region r's feature, row 0 (no region) is never read.
    table = torch.tensor([[[99.0, 99.0], [1.0, 0.0], [0.0, 1.0], [4.0, 4.0]],
                          [[99.0, 99.0], [2.0, 2.0], [-8.0, -8.0], [0.0, 0.0]]])
    point_regions = torch.tensor([
        [[1, 1, 1, 2], [0, 0, 0, 0], [3, 0, 0, 3]],  # 3:1 mix of regions 1 and 2; no region; region 3
        [[1, 2, 0, 0], [2, 2, 2, 2], [1, 1, 1, 1]],  # padding token last
    ])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    targets, has = mixed_region_targets(point_regions, table, valid)
    assert has.tolist() == [[True, False, True], [True, True, False]]
    torch.testing.assert_close(targets[0, 0], torch.tensor([0.75, 0.25]))  # (3*[1,0] + 1*[0,1]) / 4
    torch.testing.assert_close(targets[0, 2], torch.tensor([4.0, 4.0]))  # region-0 points ignored
    torch.testing.assert_close(targets[1, 0], torch.tensor([-3.0, -3.0]))  # per-sample table
    assert torch.all(targets[~has] == 0)
    region_valid = torch.tensor([[True, True, False, True], [True, True, True, True]])
    targets, has = mixed_region_targets(point_regions, table, valid, region_valid)
    torch.testing.assert_close(targets[0, 0], torch.tensor([1.0, 0.0]))  # region 2 has no feature
    with pytest.raises(ValueError, match="point_regions"):
        mixed_region_targets(point_regions + 1, table, valid)


# ------------------------------------------------------------------------------ masked token (MTP)


def test_masked_token_loss_hand_case():
    student = torch.tensor([[[1.0, 1.0], [3.0, 0.0], [7.0, 7.0]]])
    teacher = torch.tensor([[[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, False]])
    # MSE per masked token: (1 + 0) / 2 = 0.5 and (9 + 0) / 2 = 4.5 -> mean 2.5
    assert masked_token_loss(student, teacher, mask).item() == pytest.approx(2.5)
    assert masked_token_loss(teacher, teacher.clone(), mask).item() == 0.0
    _assert_empty_is_zero_with_graph(masked_token_loss, student, teacher, torch.zeros_like(mask))


def test_masked_mean_pool_and_instance_loss():
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 5.0], [0.0, 0.0], [0.0, 0.0]]])
    valid = torch.tensor([[True, True, False], [False, False, False]])
    pooled = masked_mean_pool(x, valid)
    torch.testing.assert_close(pooled, torch.tensor([[2.0, 3.0], [0.0, 0.0]]))
    # MSE over everything: ((2-0)^2 + (3-1)^2 + 0 + 0) / 4 = 2
    assert instance_loss(pooled, torch.tensor([[0.0, 1.0], [0.0, 0.0]])).item() == pytest.approx(2.0)
    assert instance_loss(pooled, pooled.clone()).item() == 0.0
    _assert_empty_is_zero_with_graph(instance_loss, torch.zeros(0, 4), torch.zeros(0, 4))


# ------------------------------------------------------------------------------- Chamfer (Point-MAE)


def test_chamfer_hand_case():
    pred = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    target = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 2.0, 0.0]]])
    # pred -> target nearest squared: 0 and 1 -> mean 0.5
    # target -> pred nearest squared: 0 and min(4, 1 + 4) = 4 -> mean 2.0
    assert chamfer_l2(pred, target).item() == pytest.approx(2.5)


def test_chamfer_zero_symmetric_and_valid_groups():
    pred, target = _pair(2, 3, 32, 3)  # 32 points: past the size where cdist would use matmul
    assert chamfer_l2(pred, pred.clone()).item() == 0.0
    assert chamfer_l2(pred, target).item() == pytest.approx(chamfer_l2(target, pred).item())
    valid = torch.tensor([[True, False, True], [False, False, True]])
    per_group = torch.stack([chamfer_l2(pred[b, g][None], target[b, g][None]) for b, g in valid.nonzero()])
    assert chamfer_l2(pred, target, valid).item() == pytest.approx(per_group.mean().item(), rel=1e-6)
    _assert_empty_is_zero_with_graph(chamfer_l2, pred, target, torch.zeros_like(valid))


def test_chamfer_gradient_is_finite_at_equality():
    pred = torch.randn(4, 8, 3, requires_grad=True)
    chamfer_l2(pred, pred.detach().clone()).backward()
    assert torch.isfinite(pred.grad).all()


# --------------------------------------------------------------------------- SmoothL1 (Bridge3D)


def test_smooth_l1_hand_case_and_selection():
    pred = torch.tensor([[0.5, 3.0], [10.0, 10.0]])
    target = torch.zeros(2, 2)
    # beta = 1: 0.5 * 0.5^2 = 0.125 and 3 - 0.5 = 2.5 -> mean over channels 1.3125; row 1 left out
    valid = torch.tensor([True, False])
    assert smooth_l1_distillation(pred, target, valid).item() == pytest.approx(1.3125)
    assert smooth_l1_distillation(pred, pred.clone()).item() == 0.0
    _assert_empty_is_zero_with_graph(smooth_l1_distillation, pred, target, torch.zeros(2, dtype=torch.bool))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        masked_token_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4), torch.ones(1, 2, dtype=torch.bool))

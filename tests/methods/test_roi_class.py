"""The class head that looks at the points inside each box (methods.downstream.detection.roi_class)."""
from __future__ import annotations

import math

import pytest
import torch

from methods.downstream.detection.roi_class import RoiClassifier
from tests.methods.test_groupfree import _detector
from tests.methods.test_detection import _batch

C = 3


def _box(center, size, yaw):
    return (torch.tensor([[center]], dtype=torch.float32), torch.log(torch.tensor([[size]], dtype=torch.float32)),
            torch.tensor([[yaw]], dtype=torch.float32))


def _rotate(points: torch.Tensor, yaw: float) -> torch.Tensor:
    c, s = math.cos(yaw), math.sin(yaw)
    x, y = points[..., 0], points[..., 1]
    return torch.stack([c * x - s * y, s * x + c * y, points[..., 2]], dim=-1)


@pytest.fixture
def roi() -> RoiClassifier:
    torch.manual_seed(0)
    return RoiClassifier(C, width=16, num_points=8, margin=0.1)


def test_only_points_inside_the_grown_box_count(roi):
    # A 2 x 1 x 1 box at (1, 0, 0.5): faces at x 0..2, grown by 0.1 of the extent -> x -0.2..2.2.
    inside = torch.tensor([[[0.5, 0.1, 0.4], [1.5, -0.3, 0.8], [2.1, 0.0, 0.5]]])
    far = torch.tensor([[[5.0, 5.0, 0.5], [-0.3, 0.0, 0.5]]])  # the second lies just beyond the grown face
    box = _box([1.0, 0.0, 0.5], [2.0, 1.0, 1.0], 0.0)
    alone = roi(inside, *box)
    assert torch.allclose(roi(torch.cat([inside, far], dim=1), *box), alone)
    moved = inside.clone()
    moved[0, 2, 2] = 0.9  # the point inside only thanks to the margin still counts
    assert not torch.allclose(roi(moved, *box), alone)


def test_the_points_are_seen_in_the_boxs_own_frame(roi):
    points = torch.tensor([[[0.3, 0.2, 0.1], [-0.4, 0.1, 0.6], [0.2, -0.3, 0.9], [0.0, 0.0, 0.5]]])
    upright = roi(points, *_box([0.0, 0.0, 0.0], [1.2, 0.8, 2.0], 0.0))
    # Rotating and moving the scene with the box changes nothing.
    yaw, shift = 0.7, torch.tensor([3.0, -1.0, 0.2])
    turned = roi(_rotate(points, yaw) + shift, *_box(shift.tolist(), [1.2, 0.8, 2.0], yaw))
    assert torch.allclose(upright, turned, atol=1e-5)


def test_an_empty_box_is_classified_by_its_size_alone(roi):
    points = torch.tensor([[[9.0, 9.0, 9.0]]])
    center, log_size, yaw = _box([0.0, 0.0, 0.0], [1.0, 2.0, 0.5], 0.0)
    expected = roi.head(torch.cat([torch.zeros(1, 1, 32), log_size], dim=-1))
    assert torch.allclose(roi(points, center, log_size, yaw), expected)


def test_boxes_get_no_gradient_and_the_global_generator_is_not_drawn(roi):
    batch = _batch()
    center = batch["gt_boxes"][..., :3].clone().requires_grad_(True)
    log_size = torch.log(batch["gt_boxes"][..., 3:6].clamp(min=0.1)).requires_grad_(True)
    yaw = batch["gt_boxes"][..., 6]
    state = torch.get_rng_state()
    first = roi(batch["points"], center, log_size, yaw)
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(first, roi(batch["points"], center, log_size, yaw))  # the same points every time
    first.sum().backward()
    assert center.grad is None and log_size.grad is None
    assert roi.point_mlp[0].weight.grad.abs().sum() > 0


def test_the_detector_adds_it_to_every_box_set_and_keeps_its_other_initial_values():
    plain, with_roi = _detector(), _detector(roi_class=True, roi_points=16)
    assert plain.roi_classifier is None
    shared = dict(plain.named_parameters())
    for name, value in with_roi.named_parameters():
        if not name.startswith("roi_classifier."):
            assert torch.equal(value, shared[name]), name
    batch = _batch()
    for a, b in zip(plain.eval()(batch), with_roi.eval()(batch)):
        assert torch.allclose(a["center"], b["center"])
        extra = with_roi.roi_classifier(batch["points"], b["center"], b["log_size"], b["yaw"])
        assert torch.allclose(b["class_logits"] - extra, a["class_logits"], atol=1e-5)


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="num_points >= 1 and margin >= 0"):
        RoiClassifier(C, num_points=0)

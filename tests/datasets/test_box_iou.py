"""Exact 3D IoU of boxes: hand-computed cases, degenerate boxes, and a dense-sampling check."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from datasets.box_iou import box_iou_3d, paired_box_iou_3d

SQRT2 = math.sqrt(2.0)


def iou1(a, b) -> float:
    return float(box_iou_3d(np.asarray([a], float), np.asarray([b], float))[0, 0])


@pytest.mark.parametrize("yaw", [0.0, 0.3, math.pi / 4, 2.0])
def test_unit_cubes_offset_by_half_along_their_x_axis(yaw):
    c, s = math.cos(yaw), math.sin(yaw)
    a = [1.0, 2.0, 3.0, 1, 1, 1, yaw]
    b = [1.0 + 0.5 * c, 2.0 + 0.5 * s, 3.0, 1, 1, 1, yaw]
    assert iou1(a, b) == pytest.approx(1 / 3, abs=1e-12)
    # A yaw differing by a full turn takes the polygon-clipping path: same geometry.
    b_turned = b[:6] + [yaw + 2 * math.pi]
    assert iou1(a, b_turned) == pytest.approx(1 / 3, abs=1e-9)


def test_identical_boxes_have_iou_one_on_both_paths():
    box = [0.3, -1.0, 0.5, 2.0, 0.7, 1.2, math.pi / 4]
    assert iou1(box, box) == pytest.approx(1.0, abs=1e-12)
    assert iou1(box, box[:6] + [math.pi / 4 + 2 * math.pi]) == pytest.approx(1.0, abs=1e-9)
    assert iou1(box, box[:6] + [math.pi / 4 + math.pi]) == pytest.approx(1.0, abs=1e-9)


def test_square_against_itself_rotated_by_45_degrees():
    # Intersection is a regular octagon: the unit square minus four corner triangles.
    octagon = 2 * (SQRT2 - 1)
    expected = octagon / (2 - octagon)
    assert iou1([0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1, math.pi / 4]) == pytest.approx(expected, abs=1e-12)


def test_rotation_by_90_degrees_equals_swapped_extents():
    others = np.array([
        [0.4, 0.1, 0.2, 1.5, 0.8, 0.9, 0.7],
        [-0.5, 0.3, 0.0, 1.0, 2.5, 1.0, -1.2],
        [0, 0, 0, 2, 1, 1, 0],
    ])
    rotated = np.array([[0.1, 0.2, 0.0, 2.0, 1.0, 1.0, math.pi / 2]])
    swapped = np.array([[0.1, 0.2, 0.0, 1.0, 2.0, 1.0, 0.0]])
    np.testing.assert_allclose(box_iou_3d(rotated, others), box_iou_3d(swapped, others), atol=1e-12)
    assert box_iou_3d(rotated, others)[0, 2] == pytest.approx(1 / 3, abs=1e-12)  # a cross of two 2x1 boxes


def test_disjoint_touching_and_nested_boxes():
    unit = [0, 0, 0, 1, 1, 1, 0]
    assert iou1(unit, [3, 0, 0, 1, 1, 1, 0]) == 0.0
    assert iou1(unit, [0, 0, 3, 1, 1, 1, 0.4]) == 0.0  # BEV overlap, no z overlap
    assert iou1(unit, [1, 0, 0, 1, 1, 1, 0]) == 0.0  # sharing a face
    assert iou1(unit, [1.0, 0, 0, 1, 1, 1, math.pi / 2 + 1e-12]) == pytest.approx(0.0, abs=1e-9)
    assert iou1([0, 0, 0, 4, 4, 4, 0.5], [0.2, 0.1, 0.3, 1, 1, 1, 1.1]) == pytest.approx(1 / 64, abs=1e-12)


def test_zero_extent_boxes_give_zero_without_warnings():
    flat = [0, 0, 0, 1, 1, 0, 0]
    line = [0, 0, 0, 0, 0, 1, 0.3]
    point = [0, 0, 0, 0, 0, 0, 0]
    unit = [0, 0, 0, 1, 1, 1, 0.2]
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        boxes = np.array([flat, line, point, unit, point[:6] + [1.0]], float)
        iou = box_iou_3d(boxes, boxes)
    assert np.isfinite(iou).all()
    np.testing.assert_array_equal(iou[:3], 0.0)
    np.testing.assert_array_equal(iou[:, :3], 0.0)
    assert iou[3, 3] == pytest.approx(1.0)


def test_six_and_seven_column_boxes_mix():
    aligned = np.array([[0, 0, 0, 2, 1, 1], [5, 5, 5, 1, 1, 1]], float)
    rotated = np.array([[0, 0, 0, 2, 1, 1, 0.0], [0, 0, 0, 1, 1, 1, 0.5]])
    iou = box_iou_3d(aligned, rotated)
    assert iou.shape == (2, 2)
    assert iou[0, 0] == pytest.approx(1.0)
    np.testing.assert_allclose(iou, box_iou_3d(rotated, aligned).T, atol=1e-12)


def test_empty_inputs_and_paired_form():
    assert box_iou_3d(np.zeros((0, 7)), np.zeros((3, 6))).shape == (0, 3)
    a = np.array([[0, 0, 0, 1, 1, 1, 0.2], [0, 0, 0, 1, 1, 1, 0.0]])
    b = np.array([[0.5, 0, 0, 1, 1, 1, 0.9], [0.5, 0, 0, 1, 1, 1, 0.0]])
    np.testing.assert_allclose(paired_box_iou_3d(a, b), np.diag(box_iou_3d(a, b)), atol=1e-15)


@pytest.mark.parametrize(
    "boxes, match",
    [
        (np.zeros((2, 5)), r"boxes_a: expected shape \(N, 6\) or \(N, 7\), got \(2, 5\)"),
        (np.array([[0, 0, 0, 1, np.nan, 1]]), r"boxes_a: expected finite values, found nan/inf in row 0"),
        (np.array([[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, -1, 1]]), r"boxes_a: expected extents dx, dy, dz >= 0"),
    ],
)
def test_invalid_boxes_raise_one_clear_line(boxes, match):
    with pytest.raises(ValueError, match=match):
        box_iou_3d(boxes, np.zeros((1, 6)))


def _sampled_iou(a: np.ndarray, b: np.ndarray, n: int = 700) -> float:
    """IoU from a dense BEV grid over both boxes' bounding square; the z overlap is 1-D and exact."""
    reach = max(np.hypot(a[3], a[4]), np.hypot(b[3], b[4])) / 2
    lo = np.minimum(a[:2], b[:2]) - reach
    hi = np.maximum(a[:2], b[:2]) + reach
    cell = (hi - lo) / n
    gx, gy = np.meshgrid(lo[0] + cell[0] * (np.arange(n) + 0.5), lo[1] + cell[1] * (np.arange(n) + 0.5))

    def inside(box):
        c, s = math.cos(box[6]), math.sin(box[6])
        u = c * (gx - box[0]) + s * (gy - box[1])
        v = -s * (gx - box[0]) + c * (gy - box[1])
        return (np.abs(u) <= box[3] / 2) & (np.abs(v) <= box[4] / 2)

    area = np.count_nonzero(inside(a) & inside(b)) * cell[0] * cell[1]
    dz = max(0.0, min(a[2] + a[5] / 2, b[2] + b[5] / 2) - max(a[2] - a[5] / 2, b[2] - b[5] / 2))
    inter = area * dz
    return inter / (np.prod(a[3:6]) + np.prod(b[3:6]) - inter)


def test_rotated_iou_matches_dense_sampling():
    rng = np.random.default_rng(7)
    a = np.c_[rng.uniform(-1, 1, (12, 3)), rng.uniform(0.3, 2.5, (12, 3)), rng.uniform(-np.pi, np.pi, 12)]
    b = np.c_[a[:, :3] + rng.uniform(-0.8, 0.8, (12, 3)), rng.uniform(0.3, 2.5, (12, 4))]
    b[:, 6] = rng.uniform(-np.pi, np.pi, 12)
    exact = paired_box_iou_3d(a, b)
    sampled = np.array([_sampled_iou(x, y) for x, y in zip(a, b)])
    assert (exact > 0.05).sum() >= 6  # the check is not vacuous
    np.testing.assert_allclose(exact, sampled, atol=1e-2)


def test_random_rotated_iou_is_symmetric_and_bounded():
    rng = np.random.default_rng(3)
    boxes = np.c_[rng.uniform(-1, 1, (40, 3)), rng.uniform(0, 2, (40, 3)), rng.uniform(-4, 4, 40)]
    boxes[::7, 3] = 0.0  # some degenerate boxes
    iou = box_iou_3d(boxes, boxes)
    assert ((iou >= 0) & (iou <= 1 + 1e-12)).all()
    np.testing.assert_allclose(iou, iou.T, atol=1e-9)

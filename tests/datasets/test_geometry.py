"""Camera and box geometry (and the tests' point-in-box oracle) against hand-computed cases."""
from __future__ import annotations

import numpy as np
import pytest

from datasets.geometry import (
    aligned_box_of_oriented,
    backproject,
    box_corners,
    look_at_pose,
    pinhole_intrinsics,
    pixel_rays,
    project,
)
from tests.geometry import points_in_boxes


def test_pinhole_intrinsics_centre_and_focal():
    K = pinhole_intrinsics((4, 6), 90.0)
    # Horizontal fov 90 deg: f = (W / 2) / tan(45 deg) = 3; pixel centres 0..5 -> centre 2.5.
    np.testing.assert_allclose(K, [[3.0, 0.0, 2.5], [0.0, 3.0, 1.5], [0.0, 0.0, 1.0]])
    with pytest.raises(ValueError):
        pinhole_intrinsics((4, 6), 180.0)


def test_look_at_pose_is_opencv_camera_to_world():
    pose = look_at_pose([1.0, 2.0, 1.5], [4.0, 2.0, 1.5])  # looking along +x, level
    R = pose[:3, :3]
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    np.testing.assert_allclose(R[:, 2], [1, 0, 0], atol=1e-12)  # camera z = forward
    np.testing.assert_allclose(R[:, 1], [0, 0, -1], atol=1e-12)  # camera y = down
    np.testing.assert_allclose(R[:, 0], [0, -1, 0], atol=1e-12)  # camera x = right of +x is -y
    np.testing.assert_allclose(pose[:3, 3], [1.0, 2.0, 1.5])


def test_backproject_hand_case_and_pixel_order():
    K = np.array([[2.0, 0, 1.0], [0, 2.0, 1.0], [0, 0, 1]])
    pose = np.eye(4)
    pose[:3, 3] = [10.0, 0.0, 0.0]
    depth = np.zeros((3, 4), dtype=np.float32)
    depth[1, 1] = 4.0  # principal point
    depth[2, 3] = 2.0  # row 2, col 3: x = (3 - 1) / 2 * 2 = 2, y = (2 - 1) / 2 * 2 = 1
    xyz, pix = backproject(depth, K, pose)
    assert xyz.dtype == np.float32 and pix.dtype == np.int64
    np.testing.assert_array_equal(pix, [[1, 1], [2, 3]])
    np.testing.assert_allclose(xyz, [[10.0, 0.0, 4.0], [12.0, 1.0, 2.0]])
    uv, z = project(xyz, K, pose)
    np.testing.assert_allclose(uv, [[1.0, 1.0], [3.0, 2.0]])  # [u=col, v=row]
    np.testing.assert_allclose(z, [4.0, 2.0])


def test_backproject_project_round_trip_exact_after_rounding():
    rng = np.random.default_rng(0)
    K = pinhole_intrinsics((30, 40), 70.0)
    pose = look_at_pose([1.0, -2.0, 1.6], [3.0, 1.0, 0.4])
    depth = rng.uniform(0.3, 8.0, (30, 40)).astype(np.float32)
    depth[rng.random((30, 40)) < 0.2] = 0.0
    xyz, pix = backproject(depth, K, pose)
    assert len(xyz) == int((depth > 0).sum())
    uv, z = project(xyz, K, pose)
    np.testing.assert_array_equal(np.rint(uv[:, ::-1]).astype(np.int64), pix)
    np.testing.assert_allclose(z, depth[pix[:, 0], pix[:, 1]], rtol=1e-5)


def test_pixel_rays_have_unit_camera_z_and_hit_backprojected_points():
    K = pinhole_intrinsics((5, 7), 60.0)
    pose = look_at_pose([0.0, 0.0, 1.0], [1.0, 2.0, 0.5])
    rays = pixel_rays((5, 7), K, pose)
    np.testing.assert_allclose((rays @ pose[:3, :3])[:, 2], 1.0)
    depth = np.full((5, 7), 2.5, dtype=np.float32)
    xyz, _ = backproject(depth, K, pose)
    np.testing.assert_allclose(xyz, pose[:3, 3] + 2.5 * rays, atol=1e-5)


def test_box_corners_with_yaw():
    corners = box_corners(np.array([[1.0, 2.0, 0.5, 4.0, 2.0, 1.0, np.pi / 2]]))
    assert corners.shape == (1, 8, 3)
    # Local (-2, -1) rotated by 90 deg -> (1, -2); local (2, -1) -> (1, 2).
    np.testing.assert_allclose(corners[0, 0], [2.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(corners[0, 1], [2.0, 4.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(corners[0, 6], [0.0, 4.0, 1.0], atol=1e-12)


def test_points_in_boxes_hand_cases_with_yaw():
    boxes = np.array([
        [0.0, 0.0, 0.0, 4.0, 1.0, 2.0, np.pi / 2],  # long along world y after the turn
        [10.0, 0.0, 0.0, 2.0, 2.0, 2.0, np.pi / 4],  # diamond seen from above
    ])
    points = np.array([
        [0.0, 1.9, 0.0],  # inside box 0 (along its long axis)
        [1.9, 0.0, 0.0],  # outside box 0 (would be inside without the yaw)
        [0.4, -1.0, 0.9],  # inside box 0
        [0.0, 0.0, 1.1],  # above box 0
        [10.0, 1.3, 0.0],  # inside box 1: the corner of the diamond reaches sqrt(2)
        [10.9, 0.9, 0.0],  # outside box 1: inside its axis-aligned hull only
    ])
    expected = np.array([[1, 0], [0, 0], [1, 0], [0, 0], [0, 1], [0, 0]], dtype=bool)
    np.testing.assert_array_equal(points_in_boxes(points, boxes), expected)
    on_face = np.array([[0.0, 2.0, 0.0]])
    assert points_in_boxes(on_face + [0, 1e-3, 0], boxes[:1])[0, 0] == False  # noqa: E712
    assert points_in_boxes(on_face + [0, 1e-3, 0], boxes[:1], eps=2e-3)[0, 0] == True  # noqa: E712


def test_aligned_box_of_oriented_hand_case_and_dtype():
    box = np.array([[1.0, 2.0, 3.0, 4.0, 2.0, 1.0, np.pi / 2]], dtype=np.float32)
    out = aligned_box_of_oriented(box)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[1.0, 2.0, 3.0, 2.0, 4.0, 1.0, 0.0]], atol=1e-6)
    diamond = aligned_box_of_oriented(np.array([[0.0, 0.0, 0.0, 2.0, 2.0, 1.0, np.pi / 4]]))
    np.testing.assert_allclose(diamond[0, 3:5], [2 * np.sqrt(2)] * 2)


def test_aligned_box_contains_oriented_corners_tightly():
    rng = np.random.default_rng(1)
    boxes = np.concatenate([rng.uniform(-5, 5, (50, 3)), rng.uniform(0.1, 3, (50, 3)),
                            rng.uniform(-4, 4, (50, 1))], axis=1)
    aligned = aligned_box_of_oriented(boxes)
    assert (aligned[:, 6] == 0).all()
    corners = box_corners(boxes)
    for b in range(len(boxes)):
        assert points_in_boxes(corners[b], aligned[b:b + 1], eps=1e-9).all()
        # Tight: the corners reach every face of the aligned box.
        lo, hi = corners[b].min(axis=0), corners[b].max(axis=0)
        np.testing.assert_allclose(hi - lo, aligned[b, 3:6], atol=1e-9)

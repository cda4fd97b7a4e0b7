"""SUN RGB-D readers on the real excerpts (MANIFEST.md section 3): projection, boxes, raw layout, errors."""
from __future__ import annotations

import collections

import numpy as np
import pytest

from datasets.geometry import backproject, project, zbuffer
from datasets.sunrgbd import (
    CV_TO_TILTED,
    SUNRGBD_INFO,
    SunRgbdError,
    SunRgbdVotenet,
    decode_depth_png,
    load_calib,
    load_votenet_frame,
    read_raw_frame,
    read_votenet_boxes,
    read_votenet_frame,
    read_votenet_points,
)
from datasets.sunrgbd.votenet import TRAINVAL
from datasets.types import IGNORE_INDEX
from datasets.verify import scene_problems
from tests.geometry import points_in_boxes

TOY = "sunrgbd/sunrgbd-toy_feca6a0"
KINECT_V2 = "2014-12-18_11-31-54_260595134347"


@pytest.fixture(scope="module")
def frame1():
    """Frame 000001 of the VoteNet export: (points, Frame, boxes, labels), read once for the module."""
    from tests.conftest import REAL_DATA

    root = REAL_DATA / TRAINVAL
    if not root.is_dir():
        pytest.skip(f"real data excerpts not found at {root}")
    frame, boxes, labels = read_votenet_frame(root, 1)
    return read_votenet_points(root, 1), frame, boxes, labels


def test_points_project_onto_their_own_pixel_colours(frame1):
    points, frame, _, _ = frame1
    uv, z = project(points[:, :3], frame.intrinsics, frame.pose)
    assert (z > 0).all()
    col, row = np.round(uv[:, 0]).astype(int), np.round(uv[:, 1]).astype(int)
    h, w = frame.hw
    assert col.min() >= 0 and row.min() >= 0 and col.max() < w and row.max() < h
    # The export back-projected one point per pixel: projections land on pixel centres (sub-pixel 0.003).
    assert np.abs(uv - np.round(uv)).max() < 0.01
    stored = np.round(points[:, 3:6] * 255.0)
    assert np.abs(frame.rgb[row, col].astype(np.float64) - stored).mean() < 0.5


def test_pose_is_a_rotation_about_the_origin_and_matches_votenet_projection(real_data, frame1):
    points, frame, _, _ = frame1
    rtilt, _ = load_calib(real_data / TRAINVAL / "calib" / "000001.txt")
    np.testing.assert_allclose(frame.pose[:3, :3], rtilt @ CV_TO_TILTED, atol=1e-12)
    np.testing.assert_allclose(frame.pose[:3, :3].T @ frame.pose[:3, :3], np.eye(3), atol=1e-4)
    assert np.linalg.det(frame.pose[:3, :3]) > 0 and not frame.pose[:3, 3].any()
    uv, _ = project(points[:1000, :3], frame.intrinsics, frame.pose)
    legacy = load_votenet_frame(real_data, "000001").pix[:1000]  # votenet's own recipe, 0-based (row, col)
    np.testing.assert_array_equal(np.round(uv[:, ::-1]).astype(int), legacy)


def test_zbuffered_depth_backprojects_onto_the_points(frame1):
    points, frame, _, _ = frame1
    xyz, pix = backproject(frame.depth, frame.intrinsics, frame.pose)
    assert len(xyz) > 0.95 * len(points)  # the export holds one point per valid pixel
    uv, _ = project(points[:, :3], frame.intrinsics, frame.pose)
    owner = np.full(frame.hw, -1)
    owner[np.round(uv[:, 1]).astype(int), np.round(uv[:, 0]).astype(int)] = np.arange(len(points))
    dist = np.linalg.norm(xyz - points[owner[pix[:, 0], pix[:, 1]], :3], axis=1)
    assert np.median(dist) < 0.01 and dist.max() < 0.001  # measured: 9 um median, 26 um max


def test_zbuffer_keeps_the_nearest_point_of_a_pixel():
    K = np.array([[100.0, 0.0, 2.0], [0.0, 100.0, 2.0], [0.0, 0.0, 1.0]])
    pts = np.array([[0.0, 0.0, 3.0], [0.0, 0.0, 2.0], [0.0, 0.0, 4.0], [0.0, 0.0, -1.0]])
    depth, _ = zbuffer(pts, K, np.eye(4), (5, 5))
    assert depth[2, 2] == 2.0 and np.count_nonzero(depth) == 1


def test_boxes_equal_votenet_bbox_npy_after_the_convention_change(real_data, frame1):
    _, _, boxes, labels = frame1
    ref = np.load(real_data / TOY / "sunrgbd_pc_bbox_votes_50k_v2_val" / "000001_bbox.npy")
    # votenet: [cx, cy, cz, half along heading, half across, half height, heading, class]
    expected = np.concatenate([ref[:, :3], 2.0 * ref[:, 3:6], -ref[:, 6:7]], axis=1)
    np.testing.assert_allclose(boxes, expected, atol=1e-5)
    np.testing.assert_array_equal(labels, ref[:, 7].astype(int))
    assert [SUNRGBD_INFO.det_classes[i] for i in labels] == ["bed", "night_stand", "dresser"]


def test_boxes_contain_their_objects(frame1):
    points, _, boxes, _ = frame1
    inside = points_in_boxes(points[:, :3], boxes)
    assert (inside.sum(axis=0) > 300).all()
    bed = inside[:, 0]
    floor = np.percentile(points[:, 2], 1)
    assert bed.sum() > 10_000 and (points[bed, 2] > floor + 0.1).mean() > 0.9


def test_yaw_follows_the_room_walls(frame1):
    """The walls of 000001 run at -7.5 deg; yaw = atan2(oy, ox) agrees, the negated yaw would be 13 deg off."""
    points, _, boxes, _ = frame1
    high = points[points[:, 2] > 0.9, :2].astype(np.float64)
    angles = np.deg2rad(np.arange(-45.0, 45.0, 0.5))
    peaks = [np.histogram(high @ [np.cos(a), np.sin(a)], bins=np.arange(-4, 8, 0.02))[0].max() for a in angles]
    wall = angles[int(np.argmax(peaks))]
    off = lambda yaw: abs((yaw - wall + np.pi / 4) % (np.pi / 2) - np.pi / 4)  # noqa: E731  mod 90 deg
    bed, dresser = boxes[0, 6], boxes[2, 6]
    assert np.rad2deg(off(bed)) < 2.0 and np.rad2deg(off(dresser)) < 2.0
    assert np.rad2deg(off(-bed)) > 10.0


def test_non_benchmark_classes_are_dropped_and_counted(real_data):
    dropped = collections.Counter()
    boxes, labels = read_votenet_boxes(real_data / TRAINVAL / "label" / "000001.txt", dropped)
    assert boxes.shape == (3, 7) and labels.dtype == np.int32
    assert dropped == {"ottoman": 1, "dresser_mirror": 1, "lamp": 1}


def test_dataset_scenes(real_data):
    ds = SunRgbdVotenet(real_data / TRAINVAL, source="lidar")
    assert [ds.num_scenes(s) for s in ds.splits] == [2, 2]
    assert ds.scene_id("val", 0) == "sunrgbd-000003"
    scene = ds.scene("train", 0)
    assert scene_problems(scene, ds.info) == []
    assert scene.num_points == 50_000 and (scene.semantic == IGNORE_INDEX).all()
    assert scene.boxes.dtype == np.float32 and len(scene.boxes) == 3 and len(scene.frames) == 1
    assert scene.frames[0].rgb.shape == (530, 730, 3)
    assert ds.dropped_names["ottoman"] == 1
    with pytest.raises(IndexError):
        ds.scene("val", 2)


def _level_error_deg(xyz: np.ndarray, lowest: float = 3.0, tol: float = 0.01, seed: int = 0) -> float:
    """Angle to +z of the plane RANSAC finds among the lowest ``lowest`` % of the points."""
    low = xyz[xyz[:, 2] <= np.percentile(xyz[:, 2], lowest)].astype(np.float64)
    low = low[:: max(1, len(low) // 4000)]
    rng = np.random.default_rng(seed)
    best = np.zeros(len(low), bool)
    for _ in range(200):
        a, b, c = low[rng.choice(len(low), 3, replace=False)]
        n = np.cross(b - a, c - a)
        if np.linalg.norm(n) < 1e-9:
            continue
        inliers = np.abs((low - a) @ (n / np.linalg.norm(n))) < tol
        best = inliers if inliers.sum() > best.sum() else best
    q = low[best]
    normal = np.linalg.svd(q - q.mean(axis=0))[2][2]
    return float(np.rad2deg(np.arccos(abs(normal[2]))))


@pytest.mark.parametrize("seq", [KINECT_V2, "img_0063"])
@pytest.mark.parametrize("use_bfx", [False, True])
def test_raw_frame_backprojects_to_a_level_floor(real_data, seq, use_bfx):
    frame = read_raw_frame(real_data / TOY / "images" / seq, use_bfx=use_bfx)
    assert frame.depth.shape == frame.rgb.shape[:2] and frame.depth.max() <= 8.0
    assert (frame.depth > 0).mean() > (0.99 if use_bfx else 0.6)
    xyz, _ = backproject(frame.depth, frame.intrinsics, frame.pose)
    assert _level_error_deg(xyz) < 2.0
    # The camera itself is pitched 12-20 deg (its down axis vs -z), so levelling is Rtilt's doing.
    assert np.rad2deg(np.arccos(-frame.pose[2, 1])) > 10.0


def test_depth_png_decoding_rotates_16_bits_right_by_3():
    mm = np.array([[0, 1, 1234, 8000, 9000]], dtype=np.uint32)
    stored = ((mm << 3) | (mm >> 13)) & 0xFFFF  # how SUN RGB-D wrote them
    np.testing.assert_allclose(decode_depth_png(stored.astype(np.uint16)), [[0, 0.001, 1.234, 8.0, 8.0]], atol=1e-6)


def test_error_names_the_missing_calib_file(real_data, tmp_path):
    root = tmp_path / "sunrgbd_trainval"
    for sub in ("depth", "image", "label"):
        (root / sub).mkdir(parents=True)
        src = real_data / TRAINVAL / sub
        name = {"depth": "000001.mat", "image": "000001.jpg", "label": "000001.txt"}[sub]
        (root / sub / name).symlink_to(src / name)
    with pytest.raises(SunRgbdError, match=r"calib/000001\.txt: missing calib file \(expected calib/NNNNNN\.txt"):
        read_votenet_frame(root, 1)


def test_error_names_the_malformed_label_line(tmp_path):
    path = tmp_path / "000001.txt"
    path.write_text("bed 328 152 346 320 1.04 4.16 -0.24 0.94 1.15 0.98 -0.12 -0.99\nchair 1 2 3 4 5\n")
    with pytest.raises(SunRgbdError, match=r"000001\.txt: line 2: 6 fields, expected 'classname xmin ymin"):
        read_votenet_boxes(path)
    path.write_text("chair 1 2 3 4 5 6 7 8 9 10 11 twelve\n")
    with pytest.raises(SunRgbdError, match=r"line 1: non-numeric field"):
        read_votenet_boxes(path)
    with pytest.raises(SunRgbdError, match=r"missing label file"):
        read_votenet_boxes(tmp_path / "absent.txt")


def test_error_names_missing_raw_files(real_data, tmp_path):
    folder = tmp_path / "seq"
    (folder / "image").mkdir(parents=True)
    src = real_data / TOY / "images" / "img_0063"
    (folder / "image" / "img_0063.jpg").symlink_to(src / "image" / "img_0063.jpg")
    with pytest.raises(SunRgbdError, match=r"seq/depth: no \*\.png file \(expected layout: <seq>/"):
        read_raw_frame(folder)
    (folder / "depth").mkdir()
    (folder / "depth" / "d.png").symlink_to(src / "depth" / "img_0063_abs.png")
    (folder / "intrinsics.txt").write_text("1 0 0\n0 1\n")
    with pytest.raises(SunRgbdError, match=r"intrinsics\.txt: 5 numbers, expected a 3x3 matrix"):
        read_raw_frame(folder)

"""Points with NaN/inf coordinates: every reader drops them (warned) or refuses the scene, by ``non_finite``."""
from __future__ import annotations

import inspect
import logging
import pathlib

import gin
import numpy as np
import pytest

from datasets.geometry import zbuffer
from datasets.s3dis import S3DISBin, S3DISRaw
from datasets.scannet import ScanNetBin, ScanNetExport, ScanNetRaw, nyu40_to_seg
from datasets.scene_list import SceneListDataset
from datasets.sunrgbd import SunRgbdMmdet3d, SunRgbdVotenet
from datasets.verify import verify_scannet, verify_sunrgbd
from infra.errors import DataError

SCENE = "scene0001_00"
# Nine points: a chair (instance 1, NYU40 5), a wall (instance 2, NYU40 1), two unlabelled points.
XYZ = np.array([[0, 0, 0], [np.nan, 0, 0], [1, 1, 1], [0.5, 2, 0.5], [3, 0, 0], [3, np.inf, 0], [3, 1, 2],
                [0, np.nan, np.nan], [4, 4, 4]], dtype=np.float32)
RGB = np.arange(27, dtype=np.float32).reshape(9, 3)
NYU40 = np.array([5, 5, 5, 5, 1, 1, 1, 0, 0], dtype=np.uint32)
INSTANCE = np.array([1, 1, 1, 1, 2, 2, 2, 0, 0], dtype=np.uint32)
FINITE = np.array([0, 2, 3, 4, 6, 8])
BBOX = np.array([[0.5, 1.0, 0.5, 1.0, 2.0, 1.0, 5]])  # VoteNet _bbox.npy: [cx, cy, cz, dx, dy, dz, nyu40 id]


def votenet_root(tmp_path: pathlib.Path, xyz: np.ndarray = XYZ) -> pathlib.Path:
    """A VoteNet ``scannet/`` root: ``scannet_train_detection_data/`` with one scene, and ``meta_data/``."""
    export = tmp_path / "scannet" / "scannet_train_detection_data"
    export.mkdir(parents=True)
    np.save(export / f"{SCENE}_vert.npy", np.c_[xyz, RGB].astype(np.float32))
    np.save(export / f"{SCENE}_sem_label.npy", NYU40)
    np.save(export / f"{SCENE}_ins_label.npy", INSTANCE)
    np.save(export / f"{SCENE}_bbox.npy", BBOX)
    meta = tmp_path / "scannet" / "meta_data"
    meta.mkdir()
    (meta / "scannetv2_train.txt").write_text(f"{SCENE}\n")
    (meta / "scannetv2_val.txt").write_text("")
    return tmp_path / "scannet"


def test_drop_keeps_every_per_point_field_aligned_and_the_boxes(tmp_path, caplog):
    ds = ScanNetExport(votenet_root(tmp_path), splits=("train",))
    with caplog.at_level(logging.WARNING, logger="datasets.scene_list"):
        scene = ds.scene("train", 0)
    np.testing.assert_array_equal(scene.points, XYZ[FINITE])
    np.testing.assert_array_equal(scene.colors, RGB[FINITE].astype(np.uint8))
    np.testing.assert_array_equal(scene.semantic, nyu40_to_seg(NYU40[FINITE].astype(np.int64)))
    np.testing.assert_array_equal(scene.instance, INSTANCE[FINITE])
    np.testing.assert_allclose(scene.boxes, [[0.5, 1.0, 0.5, 1.0, 2.0, 1.0, 0.0]])  # the file's box, unchanged
    assert scene.box_labels.tolist() == [2]  # chair
    (record,) = caplog.records
    message = record.getMessage()
    assert "\n" not in message and f"ScanNetExport scene {SCENE!r}" in message
    assert "3 of 9 points have non-finite (NaN/inf) coordinates" in message and "dropped" in message
    assert f"{SCENE}_vert.npy" in message


def test_boxes_from_instances_ignore_non_finite_points(tmp_path):
    scene = ScanNetExport(votenet_root(tmp_path), splits=("train",), use_bbox_file=False).scene("train", 0)
    chair = XYZ[[0, 2, 3]]  # the chair's finite points
    lo, hi = chair.min(axis=0), chair.max(axis=0)
    np.testing.assert_allclose(scene.boxes[0, :6], np.r_[(lo + hi) / 2, hi - lo])
    assert np.isfinite(scene.boxes).all()


def test_error_refuses_the_scene_naming_it_the_file_and_what_was_expected(tmp_path):
    ds = ScanNetExport(votenet_root(tmp_path), splits=("train",), non_finite="error")
    with pytest.raises(DataError) as e:
        ds.scene("train", 0)
    message = str(e.value)
    assert "\n" not in message and f"ScanNetExport scene {SCENE!r}" in message
    assert f"scannet_train_detection_data/{SCENE}_vert.npy: 3 of 9 points" in message
    assert "expected finite x, y, z for every point" in message


def test_a_scene_with_no_finite_point_is_refused_even_when_dropping(tmp_path):
    ds = ScanNetExport(votenet_root(tmp_path, np.full((9, 3), np.nan, np.float32)), splits=("train",))
    with pytest.raises(DataError, match="9 of 9 points .*expected at least one finite point"):
        ds.scene("train", 0)


def test_the_policy_is_set_in_gin_and_checked(tmp_path):
    root = votenet_root(tmp_path)
    gin.parse_config([f"ScanNetExport.root = '{root}'", "ScanNetExport.non_finite = 'error'"])
    with pytest.raises(DataError, match="non-finite"):
        gin.get_configurable(ScanNetExport)(splits=("train",)).scene("train", 0)
    with pytest.raises(DataError, match="non_finite must be one of 'drop', 'error', got 'keep'"):
        ScanNetExport(root, non_finite="keep")


@pytest.mark.parametrize("reader", [ScanNetExport, ScanNetBin, ScanNetRaw, S3DISBin, S3DISRaw, SunRgbdVotenet,
                                    SunRgbdMmdet3d])
def test_every_reader_takes_the_policy(reader):
    assert issubclass(reader, SceneListDataset)
    assert inspect.signature(reader.__init__).parameters["non_finite"].default == "drop"
    assert "non_finite" in reader.__doc__
    assert reader.points_source is not SceneListDataset.points_source


def test_s3dis_bin_drop_and_error(tmp_path):
    for kind in ("points", "semantic_mask", "instance_mask"):
        (tmp_path / kind).mkdir()
    room = "Area_1_office_1"
    np.c_[XYZ, RGB].astype("<f4").tofile(tmp_path / "points" / f"{room}.bin")
    np.array([8, 8, 8, 8, 2, 2, 2, 12, 12], dtype="<i8").tofile(tmp_path / "semantic_mask" / f"{room}.bin")
    INSTANCE.astype("<i8").tofile(tmp_path / "instance_mask" / f"{room}.bin")
    scene = S3DISBin(tmp_path).scene("train", 0)
    np.testing.assert_array_equal(scene.points, XYZ[FINITE])
    assert scene.semantic.tolist() == [8, 8, 8, 2, 2, 12] and scene.instance.tolist() == [1, 1, 1, 2, 2, 0]
    assert len(scene.boxes) == 1 and np.isfinite(scene.boxes).all()  # the chair
    with pytest.raises(DataError, match=rf"S3DISBin scene '{room}': .*points/{room}\.bin: 3 of 9 points"):
        S3DISBin(tmp_path, non_finite="error").scene("train", 0)


def test_s3dis_raw_nan_coordinates_are_the_policys_not_a_malformed_line(tmp_path):
    annotations = tmp_path / "Area_5" / "office_1" / "Annotations"
    annotations.mkdir(parents=True)
    (annotations / "chair_1.txt").write_text("0 0 0 1 2 3\nnan 0 0 1 2 3\n1 1 1 1 2 3\n")
    assert S3DISRaw(tmp_path).scene("val", 0).num_points == 2
    with pytest.raises(DataError, match=r"Annotations/\*\.txt: 1 of 3 points"):
        S3DISRaw(tmp_path, non_finite="error").scene("val", 0)


def sunrgbd_root(tmp_path: pathlib.Path) -> pathlib.Path:
    """A VoteNet ``sunrgbd_trainval/`` with one frame's 50k-style ``lidar/`` points and one bed."""
    root = tmp_path / "sunrgbd_trainval"
    (root / "lidar").mkdir(parents=True)
    (root / "label").mkdir()
    np.savez(root / "lidar" / "000001.npz", pc=np.c_[XYZ, RGB / 27.0].astype(np.float32))
    (root / "label" / "000001.txt").write_text("bed 0 0 10 10 1.0 2.0 0.5 0.5 1.0 0.4 1 0\n")
    (root / "train_data_idx.txt").write_text("1\n")
    (root / "val_data_idx.txt").write_text("")
    return root


def test_sunrgbd_drop_and_error(tmp_path):
    root = sunrgbd_root(tmp_path)
    scene = SunRgbdVotenet(root, source="lidar").scene("train", 0)
    np.testing.assert_array_equal(scene.points, XYZ[FINITE])
    assert scene.colors.shape == (6, 3) and scene.semantic.shape == (6,) and len(scene.boxes) == 1
    with pytest.raises(DataError, match=r"SunRgbdVotenet scene 'sunrgbd-000001': .*lidar/000001\.npz: 3 of 9"):
        SunRgbdVotenet(root, source="lidar", non_finite="error").scene("train", 0)


def test_verify_reports_non_finite_points(tmp_path):
    report = verify_scannet(votenet_root(tmp_path))
    assert not report["ok"]
    (problem,) = report["problems"]
    assert problem["scene_id"] == SCENE and "3 of 9 points have non-finite (NaN/inf) coordinates" in problem["message"]


def test_zbuffer_skips_non_finite_points():
    k = np.array([[10.0, 0, 2.0], [0, 10.0, 2.0], [0, 0, 1]])
    points = np.array([[0, 0, 1.0], [np.nan, 0, 1.0], [np.inf, 0, 1.0], [0, 0, np.inf]])
    with np.errstate(all="raise"):
        depth, index = zbuffer(points[:, :3], k, np.eye(4), (4, 4))
    assert index[2, 2] == 0 and (index >= 0).sum() == 1 and np.isfinite(depth).all()


def test_verify_sunrgbd_reports_non_finite_points_instead_of_dropping_them(tmp_path):
    import scipy.io

    root = sunrgbd_root(tmp_path)
    (root / "depth").mkdir()
    scipy.io.savemat(root / "depth" / "000001.mat", {"instance": np.c_[XYZ, RGB / 27.0].astype(np.float32)})
    (problem,) = verify_sunrgbd(root)["problems"]
    assert "depth/000001.mat: 3 of 9 points have non-finite" in problem["message"]

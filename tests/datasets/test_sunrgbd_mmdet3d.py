"""SUN RGB-D in the mmdet3d v1.x layout on the real frame 000017 (MANIFEST section 3: depth2img recipe)."""
from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest

from datasets.geometry import project
from datasets.safe_pickle import load_pickle
from datasets.sunrgbd import SunRgbdMmdet3d, camera_from_depth2img
from datasets.sunrgbd.camera import zero_based_intrinsics
from infra.errors import DataError
from tests.geometry import points_in_boxes

DEMO = ("sunrgbd", "mmdet3d_fe25f7a", "demo")
INFOS = {"val": "sunrgbd_000017_infos.pkl"}


@pytest.fixture
def demo(real_data):
    root = real_data.joinpath(*DEMO)
    return root, SunRgbdMmdet3d(root, infos=INFOS, points_dir="", images_dir="")


def test_points_project_onto_their_own_pixel_colours(demo):
    _, ds = demo
    scene = ds.scene("val", 0)
    assert scene.scene_id == "sunrgbd-000017" and scene.num_points == 50_000
    frame = scene.frames[0]
    uv, z = project(scene.points, frame.intrinsics, frame.pose)
    col, row = np.round(uv[:, 0]).astype(int), np.round(uv[:, 1]).astype(int)
    assert np.all(z > 0) and np.all((col >= 0) & (col < 730) & (row >= 0) & (row < 530))
    assert np.abs(frame.rgb[row, col].astype(int) - scene.colors.astype(int)).max() == 0  # MANIFEST: exact
    assert (frame.depth > 0).sum() > 40_000  # z-buffered: one point per pixel at most


def test_camera_recomposes_depth2img(demo):
    root, _ = demo
    m = np.asarray(load_pickle(root / INFOS["val"])["data_list"][0]["images"]["CAM0"]["depth2img"])
    k, pose = camera_from_depth2img(m)
    r = pose[:3, :3]
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(r) == pytest.approx(1.0) and k[0, 0] > 0 and k[1, 1] > 0
    k_matlab = k.copy()
    k_matlab[:2, 2] += 1.0
    np.testing.assert_allclose(k_matlab @ r.T, m / m[2, 2] * (k_matlab @ r.T)[2, 2], atol=1e-6)
    # The K of the v0.x calib files (MANIFEST: [[529.5, 0, 365], [0, 529.5, 265]], 1-based) comes back out.
    np.testing.assert_allclose(k, zero_based_intrinsics(np.array([[529.5, 0, 365], [0, 529.5, 265], [0, 0, 1]])),
                               atol=0.01)  # depth2img was stored from float32
    with pytest.raises(ValueError, match="3x3"):
        camera_from_depth2img(np.eye(4))


def test_boxes_are_the_harness_convention_and_contain_their_objects(demo):
    _, ds = demo
    scene = ds.scene("val", 0)
    assert [ds.info.det_classes[i] for i in scene.box_labels] == ["night_stand", "bed"]
    np.testing.assert_allclose(scene.boxes[1], [-0.013872, 2.993747, -0.561364, 2.292754, 1.5798, 1.277272,
                                                -1.1051998], atol=1e-6)
    inside = points_in_boxes(scene.points, scene.boxes).sum(axis=0)
    assert inside[0] > 500 and inside[1] > 10_000


def test_errors_name_the_file(demo, real_data, tmp_path):
    root, _ = demo
    with pytest.raises(DataError, match="missing info pkl"):
        SunRgbdMmdet3d(root, infos={"val": "nope.pkl"})
    v0 = real_data / "sunrgbd" / "mmdet3d_9e39d46" / "sunrgbd_infos_val.pkl"
    with pytest.raises(DataError, match="v0.x infos: use SunRgbdVotenet"):
        SunRgbdMmdet3d(v0.parent, infos={"val": v0.name})
    shutil.copy(root / INFOS["val"], tmp_path / "infos.pkl")
    (tmp_path / "000017.bin").write_bytes((root / "000017.bin").read_bytes()[:-4])
    ds = SunRgbdMmdet3d(tmp_path, infos={"val": "infos.pkl"}, points_dir="", images_dir="")
    with pytest.raises(DataError, match=r"000017\.bin: 299999 float32 values, expected N x 6"):
        ds.scene("val", 0)
    broken = load_pickle(root / INFOS["val"])
    del broken["data_list"][0]["images"]
    (tmp_path / "broken.pkl").write_bytes(pickle.dumps(broken))
    with pytest.raises(DataError, match=r"broken\.pkl: data_list\[0\]: malformed info"):
        SunRgbdMmdet3d(tmp_path, infos={"val": "broken.pkl"})


def test_verify_detects_the_mmdet3d_layout_and_reports_a_truncated_point_file(demo, tmp_path, capsys):
    from datasets.__main__ import main

    root, _ = demo
    (tmp_path / "points").mkdir()
    (tmp_path / "sunrgbd_trainval" / "image").mkdir(parents=True)
    shutil.copy(root / "000017.bin", tmp_path / "points")
    shutil.copy(root / "000017.jpg", tmp_path / "sunrgbd_trainval" / "image")
    for split in ("train", "val"):
        shutil.copy(root / INFOS["val"], tmp_path / f"sunrgbd_infos_{split}.pkl")
    assert main(["verify", "--kind", "sunrgbd", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mmdet3d layout" in out and "50000 points" in out and "1 frames" in out
    (tmp_path / "points" / "000017.bin").write_bytes(b"\0" * 20)
    assert main(["verify", "--kind", "sunrgbd", "--root", str(tmp_path)]) == 1
    assert "000017.bin: 5 float32 values, expected N x 6" in capsys.readouterr().out

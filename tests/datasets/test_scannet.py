"""ScanNet v2 readers on the real excerpts (MANIFEST.md) and on tiny hand-written raw / .sens scenes."""
from __future__ import annotations

import json
import os
import pathlib
import pickle

import gin
import numpy as np
import pytest
from PIL import Image
from scipy.spatial import cKDTree

from datasets.geometry import backproject, project
from datasets.safe_pickle import load_pickle
from datasets.scannet import (
    DET_CLASSES,
    SCANNET_INFO,
    SEG_CLASSES,
    PosedImageFrames,
    ScanNetBin,
    ScanNetExport,
    ScanNetRaw,
    SensFrames,
    frames_from_posed_images,
    nyu40_to_det,
    nyu40_to_seg,
    posed_frames_from_infos,
    read_bin_scene,
    read_export_scene,
    read_ply_vertices,
    read_raw_scene,
    read_sens_frames,
    sens_frames,
    zbuffer,
)
from datasets.types import IGNORE_INDEX
from infra.errors import DataError
from tests.conftest import REAL_DATA
from tests.geometry import points_in_boxes

EXPORT = pathlib.Path("scannet") / "mmdet3d_9e39d46"
POSED = pathlib.Path("scannet") / "mmdet3d_89defca"
SCENE = "scene0000_00"


@pytest.fixture(scope="module")
def scene00():
    root = REAL_DATA / EXPORT
    if not root.is_dir():
        pytest.skip("real ScanNet excerpt not found")
    return read_export_scene(root / "scannet_train_instance_data", SCENE)


# ---- label maps ---------------------------------------------------------------------------------

def test_label_maps():
    assert len(SEG_CLASSES) == 20 and len(DET_CLASSES) == 18
    assert nyu40_to_seg(np.array([0, 1, 2, 13, 39, 40, 41])).tolist() == [IGNORE_INDEX, 0, 1, IGNORE_INDEX, 19,
                                                                             IGNORE_INDEX, IGNORE_INDEX]
    assert nyu40_to_det(np.array([1, 3, 39, 22])).tolist() == [-1, 0, 17, -1]
    assert SCANNET_INFO.seg_to_det[:3] == (-1, -1, 0) and SCANNET_INFO.seg_to_det[-1] == 17
    assert SCANNET_INFO.det_classes[-1] == "garbagebin" and not SCANNET_INFO.has_yaw


# ---- real excerpts ------------------------------------------------------------------------------

def test_export_scene_real(real_data, scene00):
    s = scene00
    assert s.num_points == 81_369 and s.points.dtype == np.float32 and s.colors.dtype == np.uint8
    sem_nyu = np.load(real_data / EXPORT / "scannet_train_instance_data" / f"{SCENE}_sem_label_all.npy")
    assert 0.73 <= np.mean(s.semantic >= 0) <= 0.78
    assert 0.043 <= np.mean(sem_nyu == 0) <= 0.054
    assert len(s.boxes) == 27 and np.all(s.boxes[:, 6] == 0) and np.all(s.boxes[:, 3:6] > 0)
    inside = points_in_boxes(s.points, s.boxes, eps=1e-4)
    for b, inst in enumerate(s.box_instance):
        assert inst > 0 and inside[s.instance == inst, b].all()
    info = load_pickle(real_data / EXPORT / "scannet_infos_train.pkl")[0]
    np.testing.assert_array_equal(s.box_labels, info["annos"]["class"])
    np.testing.assert_allclose(s.boxes[:, :6], info["annos"]["gt_boxes_upright_depth"], atol=1e-5)


def test_export_boxes_from_instances_match_bbox_file(real_data, scene00):
    derived = read_export_scene(real_data / EXPORT / "scannet_train_instance_data", SCENE, use_bbox_file=False)
    order = np.argsort(scene00.box_instance)
    np.testing.assert_array_equal(derived.box_instance, scene00.box_instance[order])
    np.testing.assert_array_equal(derived.box_labels, scene00.box_labels[order])
    np.testing.assert_allclose(derived.boxes, scene00.boxes[order], atol=1e-5)


def test_posed_frames_real(real_data, scene00):
    infos = load_pickle(real_data / POSED / "scannet_infos.pkl")[0]
    align, k = infos["annos"]["axis_align_matrix"], infos["intrinsics"][:3, :3]
    world = (np.linalg.inv(align) @ np.c_[scene00.points, np.ones(scene00.num_points)].T).T[:, :3]
    for pose, expected in zip(infos["extrinsics"], (4_532, 6_105, 18_745)):  # MANIFEST section 3
        uv, z = project(world, k, pose)
        visible = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < 1296) & (uv[:, 1] >= 0) & (uv[:, 1] < 968)
        assert abs(int(visible.sum()) - expected) <= 0.01 * expected

    frames = posed_frames_from_infos(real_data / POSED / "scannet_infos.pkl", scene00)
    assert [f.frame_id for f in frames] == [f"{SCENE}-00000", f"{SCENE}-00011", f"{SCENE}-00102"]
    for f, expected in zip(frames, (4_532, 6_105, 18_745)):
        assert f.rgb.shape == (968, 1296, 3) and f.depth.shape == (968, 1296)
        filled = f.depth > 0
        assert 0.5 * expected < filled.sum() <= expected  # z-buffer keeps at most one point per pixel
        assert np.all(f.depth[filled] > 0) and np.all(f.depth[~filled] == 0)
        assert np.all(f.instance[~filled] == 0) and np.all(f.semantic[~filled] == IGNORE_INDEX)
        assert np.all(f.semantic[filled] >= IGNORE_INDEX) and (f.semantic[filled] >= 0).mean() > 0.5
        xyz, _ = backproject(f.depth, f.intrinsics, f.pose)  # pose is in the scene's aligned frame
        dist, _ = cKDTree(scene00.points).query(xyz)
        assert np.median(dist) < 0.02

    # The same frames from world points and the pkl's world poses.
    img = [f.rgb for f in frames[:1]]
    world_frames = frames_from_posed_images(world, scene00.semantic, scene00.instance, img, k, infos["extrinsics"][:1])
    same = np.isclose(world_frames[0].depth, frames[0].depth, atol=1e-4)
    assert same.mean() > 1 - 1e-5  # pixels of points exactly on a pixel border may round either way
    assert np.mean(world_frames[0].instance == frames[0].instance) > 1 - 1e-5


def test_bin_fixture(real_data):
    s = read_bin_scene(real_data / "scannet" / "mmdet3d_fe25f7a" / "tests", SCENE)
    assert s.num_points == 100 and len(s.boxes) == len(s.box_labels) > 0
    inside = points_in_boxes(s.points, s.boxes, eps=1e-4)
    for b, inst in enumerate(s.box_instance):
        assert inside[s.instance == inst, b].all()


def test_export_dataset_gin(real_data, tmp_path):
    meta = real_data / EXPORT / "meta_data"
    gin.parse_config([f"ScanNetExport.root = '{real_data / EXPORT / 'scannet_train_instance_data'}'",
                      f"ScanNetExport.meta_dir = '{meta}'"])
    ds = gin.get_configurable(ScanNetExport)()
    assert ds.info is SCANNET_INFO and ds.num_scenes("train") == 1 and ds.scene_id("val", 0) == "scene0000_02"
    assert [s.scene_id for s in ds.scenes("val")] == ["scene0000_02"]
    (tmp_path / "scannetv2_train.txt").write_text("scene0000_00\nscene0999_00\n")
    (tmp_path / "scannetv2_val.txt").write_text("")
    with pytest.raises(FileNotFoundError, match="1 of 2 scenes of split 'train' are missing.*scene0999_00"):
        ScanNetExport(real_data / EXPORT / "scannet_train_instance_data", tmp_path)
    ds = ScanNetExport(real_data / EXPORT / "scannet_train_instance_data", tmp_path, skip_missing=True)
    assert ds.num_scenes("train") == 1
    with pytest.raises(ValueError, match="unknown split"):
        ds.num_scenes("test")


def test_bin_dataset(real_data):
    ds = ScanNetBin(real_data / "scannet" / "mmdet3d_fe25f7a" / "tests", real_data / EXPORT / "meta_data",
                    splits=("train",))
    assert next(ds.scenes("train")).num_points == 100


# ---- error messages -----------------------------------------------------------------------------

def _write_export(folder: pathlib.Path, n: int = 4) -> None:
    rng = np.random.default_rng(0)
    np.save(folder / "s_vert.npy", np.c_[rng.random((n, 3)), rng.integers(0, 256, (n, 3))].astype(np.float32))
    np.save(folder / "s_sem_label.npy", np.array([5, 5, 1, 0][:n], dtype=np.uint32))
    np.save(folder / "s_ins_label.npy", np.array([1, 1, 2, 0][:n], dtype=np.uint32))


def test_export_without_all_suffix(tmp_path):
    _write_export(tmp_path)
    s = read_export_scene(tmp_path, "s")
    assert s.semantic.tolist() == [4, 4, 0, IGNORE_INDEX]
    assert s.box_labels.tolist() == [2] and s.box_instance.tolist() == [1]  # wall (instance 2) has no box


def test_export_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing file .*s_vert\.npy.*expected layout"):
        read_export_scene(tmp_path, "s")
    _write_export(tmp_path)
    data = (tmp_path / "s_vert.npy").read_bytes()
    (tmp_path / "s_vert.npy").write_bytes(data[: len(data) - 20])
    with pytest.raises(ValueError, match=r"unreadable \.npy .*s_vert\.npy") as e:
        read_export_scene(tmp_path, "s")
    assert "\n" not in str(e.value)
    np.save(tmp_path / "s_vert.npy", np.zeros((4, 5), dtype=np.float32))
    with pytest.raises(ValueError, match=r"s_vert\.npy: shape \(4, 5\), expected \(N, 6\)"):
        read_export_scene(tmp_path, "s")
    np.save(tmp_path / "s_vert.npy", np.zeros((4, 6), dtype=np.float32))
    np.save(tmp_path / "s_sem_label.npy", np.zeros(3, dtype=np.uint32))
    with pytest.raises(ValueError, match=r"s_sem_label\.npy: shape \(3,\), expected \(4,\)"):
        read_export_scene(tmp_path, "s")
    np.save(tmp_path / "s_sem_label.npy", np.array(["a"] * 4))
    with pytest.raises(ValueError, match="expected a numeric array"):
        read_export_scene(tmp_path, "s")
    np.save(tmp_path / "s_sem_label.npy", np.array([1.0, 2.5, 3.0, 0.0]))
    with pytest.raises(ValueError, match=r"s_sem_label\.npy: expected integer labels"):
        read_export_scene(tmp_path, "s")


def test_bin_errors(tmp_path):
    for d in ("points", "semantic_mask", "instance_mask"):
        (tmp_path / d).mkdir()
    np.zeros((3, 6), np.float32).tofile(tmp_path / "points" / "s.bin")
    np.zeros(3, np.int64).tofile(tmp_path / "semantic_mask" / "s.bin")
    with pytest.raises(FileNotFoundError, match=r"instance_mask/s\.bin"):
        read_bin_scene(tmp_path, "s")
    np.zeros(2, np.int64).tofile(tmp_path / "instance_mask" / "s.bin")
    with pytest.raises(ValueError, match="2 rows, expected 3"):
        read_bin_scene(tmp_path, "s")
    (tmp_path / "points" / "s.bin").write_bytes(b"\0" * 30)
    with pytest.raises(ValueError, match="not a whole number of 6 x float32 rows"):
        read_bin_scene(tmp_path, "s")


# ---- hand-written raw scan ----------------------------------------------------------------------

def _write_ply(path: pathlib.Path, xyz: np.ndarray, rgb: np.ndarray, ascii_format: bool = False) -> None:
    props = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"), ("alpha", "u1")]
    names = {"<f4": "float", "u1": "uchar"}
    header = ["ply", f"format {'ascii' if ascii_format else 'binary_little_endian'} 1.0", f"element vertex {len(xyz)}"]
    header += [f"property {names[t]} {n}" for n, t in props] + ["element face 1", "property list uchar int vertex_indices",
                                                                  "end_header"]
    rec = np.zeros(len(xyz), dtype=props)
    for i, n in enumerate("xyz"):
        rec[n] = xyz[:, i]
    for i, n in enumerate(("red", "green", "blue")):
        rec[n] = rgb[:, i]
    rec["alpha"] = 255
    head = ("\n".join(header) + "\n").encode()
    if ascii_format:
        body = "".join(" ".join(str(v) for v in r) + "\n" for r in rec.tolist()) + "3 0 1 2\n"
        path.write_bytes(head + body.encode())
    else:
        path.write_bytes(head + rec.tobytes() + np.array([3], "u1").tobytes() + np.array([0, 1, 2], "<i4").tobytes())


def _write_raw_scene(root: pathlib.Path, sid: str = "scene0001_00") -> tuple[pathlib.Path, np.ndarray]:
    folder = root / sid
    folder.mkdir(parents=True)
    xyz = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 0, 1], [0.5, 0.5, 0.5], [2, 2, 2]], dtype=np.float32)
    rgb = np.arange(18, dtype=np.uint8).reshape(6, 3) * 10
    _write_ply(folder / f"{sid}_vh_clean_2.ply", xyz, rgb)
    (folder / f"{sid}_vh_clean_2.0.010000.segs.json").write_text(json.dumps({"segIndices": [7, 7, 7, 9, 9, 11]}))
    groups = [{"objectId": 0, "label": "floor", "segments": [7]}, {"objectId": 1, "label": "kitchen chair", "segments": [9]}]
    (folder / f"{sid}.aggregation.json").write_text(json.dumps({"segGroups": groups}))
    (folder / f"{sid}.txt").write_text("axisAlignment = 1 0 0 10 0 1 0 20 0 0 1 30 0 0 0 1\nsceneType = Kitchen\n")
    tsv = root / "labels.tsv"
    tsv.write_text("id\traw_category\tcategory\tnyu40id\n1\tfloor\tfloor\t2\n2\tkitchen chair\tchair\t5\n")
    return tsv, xyz


def test_read_ply_binary_and_ascii(tmp_path):
    xyz = np.array([[0.5, -1, 2], [3, 4, 5.25]], dtype=np.float32)
    rgb = np.array([[1, 2, 3], [250, 251, 252]], dtype=np.uint8)
    for fmt in (False, True):
        _write_ply(tmp_path / "m.ply", xyz, rgb, ascii_format=fmt)
        v = read_ply_vertices(tmp_path / "m.ply")
        np.testing.assert_array_equal(np.stack([v["x"], v["y"], v["z"]], 1), xyz)
        assert v["red"].tolist() == [1, 250] and v["alpha"].tolist() == [255, 255]
    data = (tmp_path / "m.ply").read_bytes()
    _write_ply(tmp_path / "m.ply", xyz, rgb)
    (tmp_path / "m.ply").write_bytes((tmp_path / "m.ply").read_bytes()[:-40])
    with pytest.raises(ValueError, match="truncated PLY"):
        read_ply_vertices(tmp_path / "m.ply")
    (tmp_path / "m.ply").write_bytes(data[3:])
    with pytest.raises(ValueError, match="not a PLY file"):
        read_ply_vertices(tmp_path / "m.ply")


def test_raw_scene(tmp_path):
    tsv, xyz = _write_raw_scene(tmp_path)
    s = read_raw_scene(tmp_path, "scene0001_00", tsv)
    np.testing.assert_allclose(s.points, xyz + [10, 20, 30])
    assert s.semantic.tolist() == [1, 1, 1, 4, 4, IGNORE_INDEX]
    assert s.instance.tolist() == [1, 1, 1, 2, 2, 0] and s.colors[1].tolist() == [30, 40, 50]
    assert s.box_labels.tolist() == [2] and s.box_instance.tolist() == [2]
    np.testing.assert_allclose(s.boxes[0], [10.25, 20.25, 30.75, 0.5, 0.5, 0.5, 0])
    with pytest.raises(FileNotFoundError, match="missing label map"):
        read_raw_scene(tmp_path, "scene0001_00", tmp_path / "nope.tsv")
    (tmp_path / "scene0001_00" / "scene0001_00.aggregation.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"scene0001_00\.aggregation\.json"):
        read_raw_scene(tmp_path, "scene0001_00", tsv)


def test_raw_dataset(tmp_path):
    tsv, _ = _write_raw_scene(tmp_path / "scans")
    (tmp_path / "scannetv2_train.txt").write_text("scene0001_00\n")
    (tmp_path / "scannetv2_val.txt").write_text("scene0002_00\n")
    ds = ScanNetRaw(tmp_path / "scans", tsv, tmp_path, skip_missing=True)
    assert ds.num_scenes("train") == 1 and ds.num_scenes("val") == 0
    assert ds.scene("train", 0).num_points == 6


# ---- .sens export and z-buffer ------------------------------------------------------------------

def _write_sens(folder: pathlib.Path, n: int = 4) -> None:
    for d in ("color", "depth", "pose", "intrinsic"):
        (folder / d).mkdir(parents=True)
    kc = np.array([[20.0, 0, 9.5, 0], [0, 20.0, 7.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    kd = np.array([[10.0, 0, 4.5, 0], [0, 10.0, 3.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    np.savetxt(folder / "intrinsic" / "intrinsic_color.txt", kc)
    np.savetxt(folder / "intrinsic" / "intrinsic_depth.txt", kd)
    color = np.zeros((16, 20, 3), np.uint8)
    color[:, 10:] = 200  # right half bright
    for i in range(n):
        Image.fromarray(color).save(folder / "color" / f"{i}.jpg", quality=100)
        Image.fromarray(np.full((8, 10), 1500 + i, np.uint16)).save(folder / "depth" / f"{i}.png")
        pose = np.eye(4) if i != 2 else np.full((4, 4), -np.inf)
        np.savetxt(folder / "pose" / f"{i}.txt", pose)


def test_sens_frames(tmp_path):
    _write_sens(tmp_path / "scene0001_00")
    frames = read_sens_frames(tmp_path / "scene0001_00", every=1)
    assert len(frames) == 3 and frames.num_invalid_pose == 1
    f = frames[0]
    assert f.rgb.shape == (8, 10, 3) and f.depth.dtype == np.float32 and np.allclose(f.depth, 1.5)
    assert f.rgb[:, :5].max() < 30 and f.rgb[:, 5:].min() > 170  # nearest-neighbour keeps the edge in place
    np.testing.assert_allclose(f.intrinsics[0], [10.0, 0, 4.5])
    every2 = read_sens_frames(tmp_path / "scene0001_00", every=2)
    assert [f.frame_id for f in every2] == ["scene0001_00-0"] and every2.num_invalid_pose == 1
    (tmp_path / "scene0001_00" / "depth" / "3.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"depth/3\.png"):
        read_sens_frames(tmp_path / "scene0001_00", every=1)


def test_sens_frames_are_read_lazily_and_aligned(tmp_path):
    _write_sens(tmp_path / "scene0001_00")
    align = np.array([[0, -1, 0, 1.0], [1, 0, 0, 2.0], [0, 0, 1, 3.0], [0, 0, 0, 1]])
    frames = sens_frames(tmp_path / "scene0001_00", every=1, align=align)
    (tmp_path / "scene0001_00" / "depth" / "3.png").unlink()  # listing read only the poses
    assert len(frames) == 3 and frames.frame_ids[-1] == "scene0001_00-3" and frames.num_invalid_pose == 1
    np.testing.assert_allclose(frames[0].pose, align)
    assert [f.frame_id for f in frames[:2]] == ["scene0001_00-0", "scene0001_00-1"]
    with pytest.raises(FileNotFoundError, match=r"depth/3\.png"):
        frames[-1]


def test_sens_frame_source_on_a_raw_dataset(tmp_path):
    tsv, _ = _write_raw_scene(tmp_path / "scans")
    _write_sens(tmp_path / "frames" / "scene0001_00")
    (tmp_path / "scannetv2_train.txt").write_text("scene0001_00\n")
    source = SensFrames(tmp_path / "frames", every=2, alignment_root=tmp_path / "scans")
    ds = ScanNetRaw(tmp_path / "scans", tsv, tmp_path, splits=("train",), frames=source)
    scene = ds.scene("train", 0)
    assert [f.frame_id for f in scene.frames] == ["scene0001_00-0"]
    np.testing.assert_allclose(scene.frames[0].pose[:3, 3], [10, 20, 30])  # the scan's axisAlignment
    xyz, _ = backproject(scene.frames[0].depth, scene.frames[0].intrinsics, scene.frames[0].pose)
    np.testing.assert_allclose(xyz[:, 2], 30 + 1.5, atol=1e-6)  # depth 1.5 m along +z, shifted with the scene
    no_alignment = ScanNetRaw(tmp_path / "scans", tsv, tmp_path, splits=("train",),
                              frames=SensFrames(tmp_path / "frames"))
    with pytest.raises(DataError, match=r"scene0001_00\.txt.*axisAlignment.*SensFrames\.alignment_root"):
        no_alignment.scene("train", 0)


def test_posed_image_frame_source(real_data, tmp_path):
    source = PosedImageFrames(real_data / POSED / "scannet_infos.pkl")
    ds = ScanNetExport(real_data / EXPORT / "scannet_train_instance_data", real_data / EXPORT / "meta_data",
                       frames=source)
    train = ds.scene("train", 0)
    assert len(train.frames) == 3 and train.frames[1].frame_id == f"{SCENE}-00011"
    assert train.frames[1].depth.shape == (968, 1296) and (train.frames[1].depth > 0).sum() > 3000
    assert len(ds.scene("val", 0).frames) == 0  # scene0000_02 has no posed images in the pkl
    strict = ScanNetExport(real_data / EXPORT / "scannet_train_instance_data", real_data / EXPORT / "meta_data",
                           frames=PosedImageFrames(real_data / POSED / "scannet_infos.pkl", missing_ok=False))
    with pytest.raises(DataError, match="no info with point_cloud.lidar_idx == 'scene0000_02'"):
        strict.scene("val", 0)


def test_malformed_scene_file_is_one_data_error(tmp_path):
    _write_export(tmp_path)
    (tmp_path / "scannetv2_train.txt").write_text("s\n")
    np.save(tmp_path / "s_sem_label.npy", np.zeros(2, np.uint32))
    ds = ScanNetExport(tmp_path, tmp_path, splits=("train",))
    with pytest.raises(DataError, match=r"ScanNetExport scene 's': .*s_sem_label\.npy: shape \(2,\), expected \(4,\)"):
        ds.scene("train", 0)


def test_zbuffer_keeps_nearest():
    k = np.array([[10.0, 0, 4.0], [0, 10.0, 3.0], [0, 0, 1]])
    pts = np.array([[0, 0, 3.0], [0, 0, 1.0], [0, 0, 2.0], [0.1, 0, 1.0], [0, 0, -1.0]])  # last one is behind
    depth, index = zbuffer(pts, k, np.eye(4), (8, 10))
    assert index[3, 4] == 1 and depth[3, 4] == 1.0 and index[3, 5] == 3
    assert (index >= 0).sum() == 2 and np.all(depth[index < 0] == 0)
    depth, index = zbuffer(pts, k, np.eye(4), (8, 10), splat_px=1)
    assert index[3, 4] == 1 and (index >= 0).sum() == 12 and index[2, 6] == 3
    frames = frames_from_posed_images(pts, np.array([0, 1, 2, 3, 4]), np.array([5, 6, 7, 8, 9]),
                                      [np.zeros((8, 10, 3), np.uint8)], k, [np.eye(4)])
    assert frames[0].semantic[3, 4] == 1 and frames[0].instance[3, 4] == 6 and frames[0].semantic[0, 0] == IGNORE_INDEX


# ---- safe unpickler -----------------------------------------------------------------------------

class _Evil:
    def __reduce__(self):
        return (os.system, ("echo",))


def test_safe_pickle_real(real_data):
    paths = sorted(real_data.glob("scannet/**/*infos*.pkl"))
    assert len(paths) == 4
    for p in paths:
        assert load_pickle(p)


def test_safe_pickle_refuses_globals(tmp_path):
    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(ValueError, match=r"evil\.pkl: refusing to unpickle global (posix|nt|os)\.system"):
        load_pickle(p)
    ok = {"a": [np.arange(3, dtype=np.int32), (1.5, "x")], "b": np.float64(2.0), "c": b"bytes"}
    for proto in (2, pickle.HIGHEST_PROTOCOL):
        p.write_bytes(pickle.dumps(ok, protocol=proto))
        out = load_pickle(p)
        np.testing.assert_array_equal(out["a"][0], ok["a"][0])
        assert out["a"][1] == (1.5, "x") and out["b"] == 2.0 and out["c"] == b"bytes"
    p.write_bytes(pickle.dumps(ok)[:-10])
    with pytest.raises(ValueError, match=r"evil\.pkl: not a readable pickle"):
        load_pickle(p)
    with pytest.raises(FileNotFoundError):
        load_pickle(tmp_path / "none.pkl")

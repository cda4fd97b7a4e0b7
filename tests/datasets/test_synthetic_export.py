"""The simulated benchmark exported in ScanNet's raw layout and SUN RGB-D's VoteNet layout, read back
with the real readers and compared with the simulation it came from."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy.spatial import cKDTree

from datasets.__main__ import main
from datasets.geometry import aligned_box_of_oriented, backproject
from datasets.scannet import DET_CLASSES as SCANNET_DET
from datasets.scannet import SEG_CLASSES as SCANNET_SEG
from datasets.scannet import ScanNetRaw, nyu40_to_seg, read_axis_alignment, read_raw_scene, read_sens_frames
from datasets.sunrgbd import DET_CLASSES as SUNRGBD_DET
from datasets.sunrgbd import SunRgbdVotenet, load_calib, project_upright_depth
from datasets.synthetic import DET_CLASSES, SEG_CLASSES, SyntheticIndoor, export
from datasets.types import IGNORE_INDEX
from tests.geometry import points_in_boxes

# Seed 4 puts a lamp (no ScanNet-20 class) and cabinet / sink (no SUN RGB-D class) in these rooms. Every
# object with a point keeps its box (min_points_per_box=1), so the box sets can be compared one to one.
SETTINGS = dict(seed=4, num_train=2, num_val=1, frames_per_scene=2, image_hw=(48, 64), min_points_per_box=1)
SCENES = [("train", 0), ("train", 1), ("val", 0)]
NYU40 = np.array([export.SCANNET_CATEGORIES[name][1] for name in SEG_CLASSES])  # synthetic seg id -> NYU40


@pytest.fixture(scope="module")
def dataset() -> SyntheticIndoor:
    return SyntheticIndoor(**SETTINGS)


@pytest.fixture(scope="module")
def sources(dataset) -> dict:
    return {key: dataset.scene(*key) for key in SCENES}


@pytest.fixture(scope="module")
def scannet_root(dataset, tmp_path_factory):
    return export.export_scannet_raw(dataset, tmp_path_factory.mktemp("export") / "scannet")


@pytest.fixture(scope="module")
def scannet(scannet_root) -> ScanNetRaw:
    return ScanNetRaw(scannet_root / "scans", scannet_root / export.LABEL_MAP_NAME, scannet_root / "meta_data")


@pytest.fixture(scope="module")
def sunrgbd_root(dataset, tmp_path_factory):
    return export.export_sunrgbd_votenet(dataset, tmp_path_factory.mktemp("export") / "sunrgbd")


# ---- ScanNet raw ----

def test_scannet_points_colours_labels_and_instances(scannet, scannet_root, sources):
    lamp_points = 0
    for split, index in SCENES:
        src, got = sources[split, index], scannet.scene(split, index)
        assert got.scene_id == src.scene_id and got.num_points == src.num_points
        np.testing.assert_allclose(got.points, src.points, atol=1e-5)
        np.testing.assert_array_equal(got.colors, src.colors)
        np.testing.assert_array_equal(got.instance, src.instance)
        np.testing.assert_array_equal(got.semantic, nyu40_to_seg(NYU40[src.semantic]))
        # Every class but lamp keeps its name in ScanNet-20; lamp (NYU40 35) becomes unlabelled.
        lamp = src.semantic == SEG_CLASSES.index("lamp")
        assert (got.semantic[lamp] == IGNORE_INDEX).all() and (got.semantic[~lamp] >= 0).all()
        assert [SCANNET_SEG[i] for i in got.semantic[~lamp]] == [SEG_CLASSES[i] for i in src.semantic[~lamp]]
        lamp_points += int(lamp.sum())
        # The PLY holds the raw frame: only the scene's axisAlignment (not the identity) recovers the points.
        raw = read_raw_scene(scannet_root / "scans", src.scene_id, scannet_root / export.LABEL_MAP_NAME, align=False)
        a = read_axis_alignment(scannet_root / "scans" / src.scene_id / f"{src.scene_id}.txt")
        assert not np.allclose(a, np.eye(4)) and np.abs(raw.points - src.points).max() > 0.5
        np.testing.assert_allclose(raw.points @ a[:3, :3].T + a[:3, 3], src.points, atol=1e-5)
    assert lamp_points > 0  # the unmapped-class path was exercised


def test_scannet_boxes_are_the_synthetic_objects_of_scannet18_classes(scannet, sources):
    for split, index in SCENES:
        src, got = sources[split, index], scannet.scene(split, index)
        names = {int(i): DET_CLASSES[c] for i, c in zip(src.box_instance, src.box_labels)}
        expected = sorted(i for i, name in names.items() if name != "lamp")
        assert got.box_instance.tolist() == expected
        assert [SCANNET_DET[c] for c in got.box_labels] == [names[i] for i in expected]
        amodal = {int(i): b for i, b in zip(src.box_instance, aligned_box_of_oriented(src.boxes))}
        for inst, box in zip(got.box_instance, got.boxes):
            # ScanNet boxes are the min/max of the instance's points, inside the amodal synthetic box.
            p = src.points[src.instance == inst]
            np.testing.assert_allclose(box[:3], (p.min(0) + p.max(0)) / 2, atol=1e-5)
            np.testing.assert_allclose(box[3:6], p.max(0) - p.min(0), atol=1e-5)
            lo, hi = amodal[inst][:3] - amodal[inst][3:6] / 2, amodal[inst][:3] + amodal[inst][3:6] / 2
            assert (p.min(0) >= lo - 1e-4).all() and (p.max(0) <= hi + 1e-4).all()


def test_scannet_sens_frames_match_the_synthetic_frames(scannet_root, sources, dataset):
    for src in sources.values():
        frames = read_sens_frames(scannet_root / "sens" / src.scene_id, every=1)
        a = read_axis_alignment(scannet_root / "scans" / src.scene_id / f"{src.scene_id}.txt")
        assert len(frames) == dataset.frames_per_scene and frames.num_invalid_pose == 0
        tree = cKDTree(src.points)
        for got, want in zip(frames, src.frames):
            assert got.rgb.shape == want.rgb.shape  # the 2x colour image was resampled onto the depth grid
            np.testing.assert_array_equal(got.depth > 0, want.depth > 0)
            assert np.abs(got.depth - want.depth).max() <= 0.0005 + 1e-6  # millimetre PNG
            assert np.abs(got.rgb.astype(int) - want.rgb).mean() < 4.0  # JPEG quality 95 (smooths the noise)
            np.testing.assert_allclose(got.intrinsics, want.intrinsics, atol=1e-6)
            assert not np.allclose(got.pose, want.pose, atol=1e-2)  # written in the raw frame ...
            np.testing.assert_allclose(a @ got.pose, want.pose, atol=1e-6)  # ... and aligned back
            # The frame back-projects onto the scene: within a voxel of the fused points.
            xyz, _ = backproject(got.depth, got.intrinsics, a @ got.pose)
            assert tree.query(xyz)[0].max() < dataset.voxel_size * np.sqrt(3) + 1e-3


def test_verify_scannet_raw_export(scannet_root, capsys):
    assert main(["verify", "--kind", "scannet", "--root", str(scannet_root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["layout"] == "raw" and report["problems"] == []
    assert [(row["split"], row["scene_id"]) for row in report["scenes"]] == [
        (split, f"synthetic-s4-{split}-{index:04d}") for split, index in SCENES]


def test_verify_loads_every_sens_frame_and_reports_a_broken_one(scannet_root, tmp_path, capsys):
    args = ["verify", "--kind", "scannet", "--root", str(scannet_root), "--sens-root", str(scannet_root / "sens"),
            "--sens-every", "1", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and [row["frames"] for row in report["scenes"]] == [2, 2, 2]
    copy = tmp_path / "copy"
    shutil.copytree(scannet_root, copy)
    scene = report["scenes"][0]["scene_id"]
    (copy / "sens" / scene / "color" / "1.jpg").write_bytes(b"not a jpeg")
    assert main([*args[:4], str(copy), "--sens-root", str(copy / "sens"), "--sens-every", "1", "--json"]) == 1
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert len(problems) == 1 and problems[0]["scene_id"] == scene and "color/1.jpg" in problems[0]["message"]


# ---- SUN RGB-D VoteNet ----

def _samples(root) -> list[dict]:
    return json.loads((root / export.MANIFEST_NAME).read_text())["samples"]


def test_sunrgbd_points_land_on_their_pixels_with_their_colours(sunrgbd_root, sources):
    ds = SunRgbdVotenet(sunrgbd_root / "sunrgbd_trainval")
    samples = _samples(sunrgbd_root)
    assert len(samples) == len(SCENES) * SETTINGS["frames_per_scene"]
    for s in samples:
        want = sources[s["split"], s["index"]].frames[s["frame"]]
        got = ds.read_scene(f"sunrgbd-{s['number']:06d}")
        assert got.scene_id in ds.scene_ids[s["split"]]
        rtilt, k = load_calib(sunrgbd_root / "sunrgbd_trainval" / "calib" / f"{s['number']:06d}.txt")
        assert np.degrees(np.arccos((np.trace(rtilt) - 1) / 2)) > 5  # a real tilt, not the identity
        # votenet's projection (1-based K, minus 1) puts every point back on the pixel it came from.
        pix = project_upright_depth(got.points, rtilt, k)
        np.testing.assert_array_equal(pix, np.argwhere(want.depth > 0))
        image = got.frames[0].rgb
        np.testing.assert_array_equal(got.colors, image[pix[:, 0], pix[:, 1]])  # exact, as in the real export
        assert np.abs(image.astype(int) - want.rgb).mean() < 4.0  # JPEG quality 95 (smooths the noise)
        # The z-buffered depth is the synthetic depth to the millimetre.
        frame = got.frames[0]
        np.testing.assert_array_equal(frame.depth > 0, want.depth > 0)
        assert np.abs(frame.depth - want.depth).max() <= 0.0005 + 1e-5
        # Upright frame: the camera pose differs from the synthetic one by a rotation about z and a shift.
        r_yaw = want.pose[:3, :3] @ frame.pose[:3, :3].T
        np.testing.assert_allclose(r_yaw[2], [0, 0, 1], atol=1e-6)


def test_sunrgbd_boxes_equal_the_visible_synthetic_objects(sunrgbd_root, dataset, sources):
    ds = SunRgbdVotenet(sunrgbd_root / "sunrgbd_trainval")
    for s in _samples(sunrgbd_root):
        want = sources[s["split"], s["index"]].frames[s["frame"]]
        got = ds.read_scene(f"sunrgbd-{s['number']:06d}")
        r_yaw = want.pose[:3, :3] @ got.frames[0].pose[:3, :3].T
        psi = np.arctan2(r_yaw[1, 0], r_yaw[0, 0])
        visible = [o for o in dataset.layout(s["split"], s["index"]).objects if (want.instance == o.instance).any()]
        kept = [o for o in visible if DET_CLASSES[o.det_class] in SUNRGBD_DET]
        assert [SUNRGBD_DET[c] for c in got.box_labels] == [DET_CLASSES[o.det_class] for o in kept]
        for o, box in zip(kept, got.boxes):
            np.testing.assert_allclose(box[:3], (o.box[:3] - want.pose[:3, 3]) @ r_yaw, atol=1e-5)
            np.testing.assert_allclose(box[3:6], o.box[3:6], atol=1e-5)
            d = box[6] - (o.box[6] - psi)
            assert abs(np.arctan2(np.sin(d), np.cos(d))) < 1e-5
            # Convention-free check: the object's own points lie in its box.
            inside = points_in_boxes(got.points[(want.instance[want.depth > 0] == o.instance)], box, eps=1e-3)
            assert inside.all()
    dropped = set(ds.dropped_names)
    assert dropped and dropped <= {"cabinet", "lamp", "sink", "fridge"}


def test_verify_sunrgbd_export(sunrgbd_root, capsys):
    assert main(["verify", "--kind", "sunrgbd", "--root", str(sunrgbd_root / "sunrgbd_trainval")]) == 0
    out = capsys.readouterr().out
    assert "no problems found" in out and "train: 4 scenes" in out and "val: 2 scenes" in out


# ---- CLI and partial exports ----

def test_cli_export_and_frame_every(tmp_path, capsys):
    out = tmp_path / "scannet"
    args = ["export", "--layout", "scannet-raw", "--out", str(out), "--seed", "1", "--num-train", "1",
            "--num-val", "0", "--frames", "3", "--hw", "24", "32", "--frame-every", "2"]
    assert main(args) == 0
    assert capsys.readouterr().out.splitlines()[0] == str(out)
    ds = ScanNetRaw(out / "scans", out / export.LABEL_MAP_NAME, out / "meta_data")
    assert ds.num_scenes("train") == 1 and ds.num_scenes("val") == 0
    assert sorted(p.name for p in (out / "sens" / ds.scene_id("train", 0) / "depth").iterdir()) == ["0.png", "2.png"]
    assert json.loads((out / export.MANIFEST_NAME).read_text())["simulated"] is True
    assert main(args) == 2  # the folder is not empty: refused in one line
    err = capsys.readouterr().err
    assert err.startswith("error: export:") and "not empty" in err and len(err.strip().splitlines()) == 1
    sun = tmp_path / "sun"
    assert main(["export", "--layout", "sunrgbd-votenet", "--out", str(sun), "--num-train", "1", "--num-val", "1",
                 "--frames", "1", "--hw", "24", "32"]) == 0
    assert (sun / "sunrgbd_trainval" / "val_data_idx.txt").read_text() == "2\n"


@pytest.mark.parametrize("write", [export.export_scannet_raw, export.export_sunrgbd_votenet])
def test_the_unlabelled_pretrain_split_is_not_exported(tmp_path, write):
    small = SyntheticIndoor(seed=0, num_train=1, num_val=0, num_pretrain=1, frames_per_scene=1, image_hw=(16, 20))
    with pytest.raises(ValueError, match=r"'pretrain' is unlabelled \(frames only\)"):
        write(small, tmp_path / "out", splits=("train", "pretrain"))
    with pytest.raises(ValueError, match="unknown split 'test'"):
        write(small, tmp_path / "out", splits=("test",))
    assert not list(tmp_path.iterdir())  # rejected before anything was written


def test_interrupted_export_never_looks_complete(tmp_path, monkeypatch, dataset):
    small = SyntheticIndoor(seed=0, num_train=1, num_val=0, frames_per_scene=1, image_hw=(16, 20))
    out = tmp_path / "scannet"

    def fail() -> str:
        raise RuntimeError("interrupted")

    monkeypatch.setattr(export, "_label_map_tsv", fail)
    with pytest.raises(RuntimeError):
        export.export_scannet_raw(small, out)
    assert not out.exists() and (tmp_path / "scannet.partial" / "scans").is_dir()
    monkeypatch.undo()
    export.export_scannet_raw(small, out)  # starts over in the left-over .partial folder
    assert (out / export.MANIFEST_NAME).is_file() and not (tmp_path / "scannet.partial").exists()
    assert not list(out.rglob(".*"))  # no in-progress marker or temporary file left


def test_colour_intrinsics_put_each_depth_pixel_centre_at_its_2x2_block_centre():
    k = np.array([[50.0, 0, 31.5], [0, 50.0, 23.5], [0, 0, 1]])
    ray = np.array([(7 - 31.5) / 50.0, (3 - 23.5) / 50.0, 1.0])  # through depth pixel (row 3, col 7)
    np.testing.assert_allclose(export.color_intrinsics(k) @ ray, [14.5, 6.5, 1.0])  # between pixels 14, 15 / 6, 7

"""Finding the ScanNet files under the root a user has (VoteNet ``scannet/``, mmdetection3d ``data/scannet/``)."""
from __future__ import annotations

import pathlib
import shutil

import numpy as np
import pytest

from datasets.__main__ import main
from datasets.scannet import ScanNetBin, ScanNetExport, ScanNetRaw
from datasets.scannet.roots import LABEL_MAP_NAME, resolve_scannet_root
from datasets.verify import verify_scannet
from infra.errors import DataError
from tests.datasets.test_scannet import _write_raw_scene

SCENE = "scene0001_00"
XYZ = np.array([[0, 0, 0], [1, 0, 0], [1, 2, 0], [1, 2, 1]], dtype=np.float32)  # one chair
NYU40 = np.array([5, 5, 5, 5], dtype=np.uint32)
INSTANCE = np.array([1, 1, 1, 1], dtype=np.uint32)
EXCERPT = pathlib.Path("scannet") / "mmdet3d_9e39d46"


def write_meta(root: pathlib.Path) -> None:
    (root / "meta_data").mkdir(parents=True, exist_ok=True)
    (root / "meta_data" / "scannetv2_train.txt").write_text(f"{SCENE}\n")
    (root / "meta_data" / "scannetv2_val.txt").write_text("")


def write_export(folder: pathlib.Path, xyz: np.ndarray = XYZ) -> None:
    folder.mkdir(parents=True)
    np.save(folder / f"{SCENE}_vert.npy", np.c_[xyz, np.full((len(xyz), 3), 100.0)].astype(np.float32))
    np.save(folder / f"{SCENE}_sem_label.npy", NYU40)
    np.save(folder / f"{SCENE}_ins_label.npy", INSTANCE)


def write_bin(root: pathlib.Path) -> None:
    for kind, data in (("points", np.c_[XYZ, np.zeros((4, 3))].astype("<f4")), ("semantic_mask", NYU40.astype("<i8")),
                       ("instance_mask", INSTANCE.astype("<i8"))):
        (root / kind).mkdir(parents=True)
        data.tofile(root / kind / f"{SCENE}.bin")


def test_votenet_root_from_its_parent_and_the_export_folder_itself(tmp_path):
    root = tmp_path / "scannet"
    write_export(root / "scannet_train_detection_data")
    write_meta(root)
    for given in (root, root / "scannet_train_detection_data"):
        found = resolve_scannet_root(given)
        assert (found.layout, found.folder, found.meta_dir) == ("export", root / "scannet_train_detection_data",
                                                                root / "meta_data")
        assert found.description == "VoteNet export"
    ds = ScanNetExport(root)  # no meta_dir: the meta_data/ beside the export
    assert ds.root == root / "scannet_train_detection_data" and ds.scene("train", 0).num_points == 4


def test_mmdet3d_root_prefers_the_export_and_applies_its_axis_alignment(tmp_path):
    root = tmp_path / "data" / "scannet"
    align = np.array([[0, -1, 0, 5], [1, 0, 0, 6], [0, 0, 1, 7], [0, 0, 0, 1]], dtype=np.float64)
    export = root / "scannet_instance_data"
    write_export(export, (XYZ - align[:3, 3]) @ align[:3, :3])  # the scan's own frame: align^-1 of XYZ
    np.save(export / f"{SCENE}_axis_align_matrix.npy", align)
    np.save(export / f"{SCENE}_aligned_bbox.npy", np.array([[0.5, 1.0, 0.5, 1.0, 2.0, 1.0, 5]]))
    np.save(export / f"{SCENE}_unaligned_bbox.npy", np.array([[9.0, 9.0, 9.0, 1.0, 1.0, 1.0, 5]]))
    write_meta(root)
    write_bin(root)
    _write_raw_scene(root / "scans", SCENE)
    found = resolve_scannet_root(root)
    assert (found.layout, found.folder, found.description) == ("export", export, "mmdetection3d export")
    scene = ScanNetExport(root, splits=("train",)).scene("train", 0)
    np.testing.assert_allclose(scene.points, XYZ, atol=1e-5)
    np.testing.assert_allclose(scene.boxes, [[0.5, 1.0, 0.5, 1.0, 2.0, 1.0, 0.0]])  # _aligned_bbox.npy
    assert resolve_scannet_root(root, "bin").folder == root
    assert ScanNetBin(root, splits=("train",)).scene("train", 0).num_points == 4
    assert resolve_scannet_root(root, "raw").folder == root / "scans"


def test_mmdet3d_root_with_bin_files_only(tmp_path):
    write_bin(tmp_path)
    write_meta(tmp_path)
    found = resolve_scannet_root(tmp_path)
    assert (found.layout, found.folder, found.meta_dir) == ("bin", tmp_path, tmp_path / "meta_data")
    assert ScanNetBin(tmp_path).num_scenes("train") == 1


def test_raw_root_finds_its_label_map_in_meta_data(tmp_path):
    tsv, _ = _write_raw_scene(tmp_path / "scans", SCENE)
    write_meta(tmp_path)
    shutil.move(tsv, tmp_path / "meta_data" / LABEL_MAP_NAME)
    found = resolve_scannet_root(tmp_path)
    assert (found.layout, found.folder, found.label_map) == ("raw", tmp_path / "scans",
                                                            tmp_path / "meta_data" / LABEL_MAP_NAME)
    assert ScanNetRaw(tmp_path).scene("train", 0).num_points == 6
    assert ScanNetRaw(tmp_path / "scans").scans_root == tmp_path / "scans"


def test_nothing_found_is_one_line_naming_the_root_and_what_was_looked_for(tmp_path):
    (tmp_path / "notes.txt").write_text("not ScanNet")
    with pytest.raises(DataError) as e:
        resolve_scannet_root(tmp_path)
    message = str(e.value)
    assert message.startswith(f"{tmp_path}: no ScanNet data found") and "\n" not in message
    assert "scannet_instance_data/" in message and "scans/<scene>/" in message and "points/<scene>.bin" in message
    with pytest.raises(DataError, match="no ScanNet export layout found"):
        ScanNetExport(tmp_path)
    with pytest.raises(DataError, match="unknown ScanNet layout 'ply'"):
        resolve_scannet_root(tmp_path, "ply")
    write_export(tmp_path / "export")  # an export without split lists anywhere
    with pytest.raises(DataError, match="no split lists .* set meta_dir"):
        ScanNetExport(tmp_path / "export")


def test_verify_says_what_it_found(tmp_path, capsys):
    root = tmp_path / "scannet"
    write_export(root / "scannet_train_detection_data")
    write_meta(root)
    assert main(["verify", "--kind", "scannet", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"found: VoteNet export (export layout) in {root / 'scannet_train_detection_data'}" in out
    assert f"split lists: {root / 'meta_data'}" in out and "no problems found" in out


def test_verify_and_the_reader_on_the_real_excerpt_dataset_root(real_data):
    root = real_data / EXCERPT
    report = verify_scannet(root)
    assert report["ok"] and report["layout"] == "export"
    assert "mmdetection3d 2020 export" in report["found"] and "scannet_train_instance_data" in report["found"]
    assert [(r["split"], r["scene_id"], r["points"]) for r in report["scenes"]] == [
        ("train", "scene0000_00", 81_369), ("val", "scene0000_02", 86_001)]
    ds = ScanNetExport(root)
    assert ds.meta_dir == root / "meta_data" and ds.scene("train", 0).num_points == 81_369

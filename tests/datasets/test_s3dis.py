"""S3DIS readers: the real mmdet3d fixture (100 points of Area_1_office_2) and hand-made raw rooms."""
from __future__ import annotations

import pathlib
import pickle
import shutil
import types

import numpy as np
import pytest

from datasets.s3dis import S3DIS_INFO, S3DISBin, S3DISError, S3DISRaw, area_of, read_bin_room, read_raw_room
from tests.geometry import points_in_boxes

FIXTURE = pathlib.Path("s3dis") / "mmdet3d_fe25f7a" / "tests"
ROOM = "Area_1_office_2"


def write_room(folder: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    """A raw room ``folder/Annotations/<name>`` with the given file contents."""
    (folder / "Annotations").mkdir(parents=True)
    for name, text in files.items():
        (folder / "Annotations" / name).write_text(text)
    return folder


CHAIR = "1.0 2.0 0.0 10 20 30\n1.5 2.5 0.9 11 21 31\n1.2 2.1 0.4 12 22 32\n"
WALL = "0 0 0 200 200 200\n0 5 3 201 201 201\n"


def test_info_label_spaces():
    assert S3DIS_INFO.seg_classes == ("ceiling", "floor", "wall", "beam", "column", "window", "door", "table",
                                      "chair", "sofa", "bookcase", "board", "clutter")
    assert S3DIS_INFO.det_classes == ("table", "chair", "sofa", "bookcase", "board")
    assert S3DIS_INFO.seg_to_det == (-1,) * 7 + (0, 1, 2, 3, 4, -1)
    assert not S3DIS_INFO.has_yaw


def test_bin_fixture_room(real_data):
    scene = read_bin_room(real_data / FIXTURE, ROOM)
    assert scene.scene_id == ROOM and scene.num_points == 100
    assert (scene.points.dtype, scene.colors.dtype, scene.semantic.dtype, scene.instance.dtype) == (
        np.float32, np.uint8, np.int32, np.int32)
    assert np.unique(scene.semantic).tolist() == [*range(11), 12]  # MANIFEST: ids 0-10 and 12 present
    assert scene.instance.min() > 0 and len(np.unique(scene.instance)) == 19
    # Detection-class instances among the 100 points: two tables, a bookcase, a chair, a sofa.
    assert scene.box_instance.tolist() == [8, 9, 10, 19, 23]
    assert scene.box_labels.tolist() == [0, 3, 0, 1, 2]
    assert np.all(scene.boxes[:, 6] == 0)
    for box, inst in zip(scene.boxes, scene.box_instance):
        assert points_in_boxes(scene.points[scene.instance == inst], box[None], eps=1e-5).all()


def test_bin_fixture_boxes_agree_with_mmdet3d_infos(real_data):
    """Each instance's points lie in exactly one full-room box of the infos, of the same class."""
    scene = read_bin_room(real_data / FIXTURE, ROOM)
    with open(real_data / FIXTURE / "s3dis_infos.pkl", "rb") as f:
        instances = pickle.load(f)["data_list"][0]["instances"]
    info_boxes = np.array([[*i["bbox_3d"], 0.0] for i in instances])
    info_labels = np.array([i["bbox_label_3d"] for i in instances])
    for label, inst in zip(scene.box_labels, scene.box_instance):
        inside = points_in_boxes(scene.points[scene.instance == inst], info_boxes, eps=1e-3).all(axis=0)
        assert info_labels[inside].tolist() == [label]


def test_bin_dataset_splits(real_data):
    ds = S3DISBin(real_data / FIXTURE)
    assert ds.info is S3DIS_INFO
    assert ds.num_scenes("train") == 1 and ds.num_scenes("val") == 0
    assert ds.scene_id("train", 0) == ROOM
    scenes = ds.scenes("train")
    assert isinstance(scenes, types.GeneratorType)
    assert next(scenes).num_points == 100
    assert S3DISBin(real_data / FIXTURE, val_area=1).scene_ids == {"train": [], "val": [ROOM]}
    with pytest.raises(ValueError, match="unknown split"):
        ds.num_scenes("test")


def test_bin_missing_room_file_is_one_line_error(real_data, tmp_path):
    shutil.copytree(real_data / FIXTURE, tmp_path / "s3dis")
    (tmp_path / "s3dis" / "instance_mask" / f"{ROOM}.bin").unlink()
    with pytest.raises(S3DISError) as err:
        S3DISBin(tmp_path / "s3dis").scene("train", 0)
    assert "\n" not in str(err.value)
    assert f"instance_mask/{ROOM}.bin: missing file" in str(err.value)


def test_raw_room(tmp_path):
    room = write_room(tmp_path / "Area_3" / "office_7", {"chair_1.txt": CHAIR, "wall_2.txt": WALL})
    scene = read_raw_room(room)
    assert scene.scene_id == "Area_3_office_7" and scene.num_points == 5
    # Sorted file names: chair_1 is instance 1, wall_2 instance 2.
    assert scene.semantic.tolist() == [8, 8, 8, 2, 2]
    assert scene.instance.tolist() == [1, 1, 1, 2, 2]
    assert scene.points.dtype == np.float32 and scene.colors.dtype == np.uint8
    assert scene.colors[0].tolist() == [10, 20, 30]
    # Only the chair is a detection class; its box is the extent of its points.
    assert scene.box_labels.tolist() == [1] and scene.box_instance.tolist() == [1]
    np.testing.assert_allclose(scene.boxes[0], [1.25, 2.25, 0.45, 0.5, 0.5, 0.9, 0.0], atol=1e-6)
    assert points_in_boxes(scene.points[:3], scene.boxes, eps=1e-6).all()


def test_raw_stairs_are_clutter_and_unknown_classes_fail(tmp_path):
    scene = read_raw_room(write_room(tmp_path / "Area_1" / "hall_1", {"stairs_1.txt": WALL}))
    assert set(scene.semantic.tolist()) == {S3DIS_INFO.seg_classes.index("clutter")}
    bad = write_room(tmp_path / "Area_1" / "hall_2", {"lamp_1.txt": WALL})
    with pytest.raises(S3DISError, match="unknown class 'lamp'"):
        read_raw_room(bad)


@pytest.mark.parametrize("line, why", [("1.0 2.0 0.5 1 2", "5 numbers"), ("1.0 2.0 x 1 2 3", "not a number"),
                                       ("1 2 3 4 5 6 7", "7 numbers")])
def test_raw_malformed_line_is_one_line_error(tmp_path, line, why):
    room = write_room(tmp_path / "Area_2" / "wc_1", {"chair_1.txt": CHAIR + line + "\n", "wall_1.txt": WALL})
    with pytest.raises(S3DISError) as err:
        read_raw_room(room)
    message = str(err.value)
    assert "\n" not in message, why
    assert "chair_1.txt: line 4:" in message, why


def test_raw_bad_colour_and_empty_file(tmp_path):
    room = write_room(tmp_path / "Area_2" / "wc_1", {"chair_1.txt": "0 0 0 1 2 300\n"})
    with pytest.raises(S3DISError, match="chair_1.txt: line 1: colour outside 0..255"):
        read_raw_room(room)
    room = write_room(tmp_path / "Area_2" / "wc_2", {"chair_1.txt": ""})
    with pytest.raises(S3DISError, match="empty annotation file"):
        read_raw_room(room)
    with pytest.raises(S3DISError, match="missing annotation folder"):
        read_raw_room(tmp_path / "Area_2" / "nothing")


def test_raw_dataset_splits(tmp_path):
    for area, name in [(1, "office_1"), (1, "office_2"), (5, "office_1"), (6, "lobby_1")]:
        write_room(tmp_path / f"Area_{area}" / name, {"chair_1.txt": CHAIR})
    ds = S3DISRaw(tmp_path)
    assert ds.scene_ids == {"train": ["Area_1_office_1", "Area_1_office_2", "Area_6_lobby_1"], "val": ["Area_5_office_1"]}
    scene = ds.scene("val", 0)
    assert scene.scene_id == "Area_5_office_1" and scene.num_points == 3
    assert [s.scene_id for s in ds.scenes("train")] == ds.scene_ids["train"]
    assert S3DISRaw(tmp_path, val_area=6).scene_ids["val"] == ["Area_6_lobby_1"]


def test_area_of():
    assert area_of("Area_5_office_1") == 5 and area_of("Area_12") == 12
    with pytest.raises(S3DISError, match="does not start with Area_N"):
        area_of("office_1")

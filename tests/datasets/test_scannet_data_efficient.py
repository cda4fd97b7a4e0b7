"""The ScanNet Data-Efficient benchmark's scene lists and point annotation files, written here in their formats."""
from __future__ import annotations

import io
import pathlib

import numpy as np
import pytest
import torch

from datasets.scannet import ScanNetExport
from datasets.scannet.data_efficient import (
    annotated_points,
    check_scene_list,
    read_point_annotations,
    read_scene_list,
)
from infra.errors import DataError

SCENES = {"scene0000_00": 5, "scene0001_00": 3, "scene0002_00": 4}  # training scenes and their point counts


@pytest.fixture
def dataset(tmp_path) -> ScanNetExport:
    """A three-scene VoteNet-style export (``scannet_train_detection_data/`` + ``meta_data/``)."""
    root = tmp_path / "scannet"
    export = root / "scannet_train_detection_data"
    export.mkdir(parents=True)
    for scene, n in SCENES.items():
        xyzrgb = np.c_[np.arange(3 * n).reshape(n, 3), np.zeros((n, 3))]
        np.save(export / f"{scene}_vert.npy", xyzrgb.astype(np.float32))
        np.save(export / f"{scene}_sem_label.npy", np.ones(n, np.uint32))
        np.save(export / f"{scene}_ins_label.npy", np.zeros(n, np.uint32))
    (root / "meta_data").mkdir()
    (root / "meta_data" / "scannetv2_train.txt").write_text("".join(f"{s}\n" for s in SCENES))
    (root / "meta_data" / "scannetv2_val.txt").write_text("")
    return ScanNetExport(root, splits=("train",), non_finite="error")


def write_list(folder: pathlib.Path, name: str, ids) -> pathlib.Path:
    (folder / "tasks" / "scenes").mkdir(parents=True, exist_ok=True)
    path = folder / "tasks" / "scenes" / name
    path.write_text("".join(f"{s}\n" for s in ids))
    return path


def write_points(folder: pathlib.Path, data, name: str = "points20", legacy_numpy: bool = False) -> pathlib.Path:
    """``torch.save`` as the benchmark did; ``legacy_numpy`` writes PyTorch 1.5's non-zip format with numpy
    1.x's module names (``numpy.core.multiarray``), as in the files the benchmark distributes."""
    (folder / "tasks" / "points").mkdir(parents=True, exist_ok=True)
    path = folder / "tasks" / "points" / name
    buffer = io.BytesIO()
    torch.save(data, buffer, _use_new_zipfile_serialization=not legacy_numpy)
    raw = buffer.getvalue()
    path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray") if legacy_numpy else raw)
    return path


class _RunsCode:
    """An object whose unpickling would create a file: the reader must refuse it instead."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


# ---- limited reconstructions --------------------------------------------------------------------

def _train_ids(dataset) -> list[str]:
    return [dataset.scene_id("train", i) for i in range(dataset.num_scenes("train"))]


def test_scene_lists_read_and_check(tmp_path, dataset):
    one = write_list(tmp_path, "1.txt", ["scene0001_00"])
    five = write_list(tmp_path, "5.txt", ["scene0002_00", "scene0001_00", ""])  # a blank line is skipped
    lists = {one: read_scene_list(one), five: read_scene_list(five)}
    assert lists[five] == ["scene0002_00", "scene0001_00"]
    for path, ids in lists.items():
        check_scene_list(ids, _train_ids(dataset), "split 'train' of ScanNetExport", path)


def test_a_duplicated_or_malformed_line_or_missing_list(tmp_path):
    path = write_list(tmp_path, "10.txt", ["scene0000_00", "scene0001_00", "scene0000_00"])
    with pytest.raises(DataError, match=rf"{path}: line 3: scene 'scene0000_00' is listed again \(first on line 1\)"):
        read_scene_list(path)
    path.write_text("scene0000_00 scene0001_00\n")
    with pytest.raises(DataError, match="line 1: 'scene0000_00 scene0001_00' is not one scene id"):
        read_scene_list(path)
    path.write_text("\n\n")
    with pytest.raises(DataError, match="empty scene list"):
        read_scene_list(path)
    with pytest.raises(DataError, match=r"20\.txt: missing scene list \(expected one ScanNet scene id a line"):
        read_scene_list(tmp_path / "20.txt")


def test_a_scene_the_reader_does_not_have(tmp_path, dataset):
    path = write_list(tmp_path, "1.txt", ["scene0001_00", "scene0999_00"])
    with pytest.raises(DataError) as e:
        check_scene_list(read_scene_list(path), _train_ids(dataset), "split 'train' of ScanNetExport", path)
    assert str(e.value) == (f"{path}: 1 of 2 scenes are not in split 'train' of ScanNetExport (3 scenes; first: "
                            "'scene0999_00'); expected ids of the scenes it reads")
    with pytest.raises(DataError, match="'scene0001_00' is listed twice"):
        check_scene_list(["scene0001_00", "scene0001_00"], _train_ids(dataset), "split 'train'", path)


# ---- limited annotations ------------------------------------------------------------------------

@pytest.mark.parametrize("legacy_numpy", [False, True])
def test_point_annotations_of_numpy_arrays_and_tensors(tmp_path, legacy_numpy):
    data = {"scene0000_00": np.array([4, 0]), "scene0001_00": torch.tensor([2], dtype=torch.int32),
            "scene0002_00": np.array([3, 1, 0], dtype=np.uint16)}
    path = write_points(tmp_path, data, legacy_numpy=legacy_numpy)
    annotations = read_point_annotations(path)
    assert list(annotations) == list(SCENES)
    assert all(a.dtype == np.int64 and a.ndim == 1 for a in annotations.values())
    assert annotations["scene0000_00"].tolist() == [4, 0] and annotations["scene0001_00"].tolist() == [2]
    assert annotated_points(annotations, "scene0000_00", 5, path).tolist() == [0, 4]


def test_an_index_outside_the_scene(tmp_path):
    path = write_points(tmp_path, {"scene0000_00": np.array([0]), "scene0001_00": np.array([1, 3, -1]),
                                   "scene0002_00": np.array([0])})
    with pytest.raises(DataError) as e:
        annotated_points(read_point_annotations(path), "scene0001_00", 3, path)
    assert str(e.value) == (f"{path}: scene 'scene0001_00': 2 of 3 indices are outside 0..2 (first: 3); expected "
                            "indices into its 3 points")


def test_an_unannotated_scene(tmp_path):
    path = write_points(tmp_path, {"scene0000_00": np.array([0])}, name="points50")
    with pytest.raises(DataError, match=r"points50: no labelled points for scene 'scene0001_00' \(1 scenes annot"):
        annotated_points(read_point_annotations(path), "scene0001_00", 3, path)


@pytest.mark.parametrize("data, expected", [
    ([np.array([0])], "holds a list, expected a torch.save'd dict of scene id -> 1-D integer tensor/array"),
    ({}, "empty dict"),
    ({7: np.array([0])}, "key 7 is a int, expected scene id strings"),
    ({"scene0000_00": np.array([0.5])}, "scene 'scene0000_00': float64 array of shape (1,), expected a 1-D integer"),
    ({"scene0000_00": torch.zeros((2, 2), dtype=torch.int64)}, "int64 array of shape (2, 2), expected a 1-D integer"),
    ({"scene0000_00": [0, 1]}, "scene 'scene0000_00': list, expected a 1-D integer tensor/array"),
])
def test_a_file_that_is_not_a_dict_of_index_arrays(tmp_path, data, expected):
    path = write_points(tmp_path, data)
    with pytest.raises(DataError) as e:
        read_point_annotations(path)
    assert str(e.value).startswith(f"{path}: ") and expected in str(e.value) and "\n" not in str(e.value)


def test_arbitrary_objects_are_refused_not_unpickled(tmp_path):
    marker = tmp_path / "code-ran"
    path = write_points(tmp_path, {"scene0000_00": _RunsCode(marker)})
    with pytest.raises(DataError) as e:
        read_point_annotations(path)
    assert "refused to load (it names " in str(e.value) and "which is not allowed" in str(e.value)
    assert "\n" not in str(e.value) and not marker.exists()


def test_a_file_that_is_not_a_torch_save_or_is_missing(tmp_path):
    path = tmp_path / "points100"
    path.write_text("scene0000_00 1 2 3\n")
    with pytest.raises(DataError, match=r"points100: (refused to load|not a torch.save file)"):
        read_point_annotations(path)
    with pytest.raises(DataError, match=r"points200: missing point annotation file"):
        read_point_annotations(tmp_path / "points200")

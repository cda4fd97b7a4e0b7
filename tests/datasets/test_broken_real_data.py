"""Copies of the real excerpts broken on purpose: every field a reader returns is checked, ``verify`` and a
run report the same problem in one line naming the file, and clean real data never crashes a row."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from datasets.scannet import ScanNetExport
from infra.errors import DataError
from tests.conftest import REPO_ROOT

EXPORT = ("scannet", "mmdet3d_9e39d46", "scannet_train_instance_data")
SCENE = "scene0000_00"


@pytest.fixture
def scannet(real_data, tmp_path):
    """One real ScanNet scene (export layout) in a folder of its own, train and val."""
    root = tmp_path / "export"
    root.mkdir()
    for path in real_data.joinpath(*EXPORT).glob(f"{SCENE}_*"):
        shutil.copy(path, root / path.name)
    meta = tmp_path / "meta_data"
    meta.mkdir()
    for split in ("train", "val"):
        (meta / f"scannetv2_{split}.txt").write_text(f"{SCENE}\n")
    return root


def _edit(path, change) -> None:
    array = np.load(path)
    change(array)
    np.save(path, array)


def _negative_instances(path) -> None:
    array = np.load(path).astype(np.int64)
    array[:3] = -2
    np.save(path, array)


def _empty(root) -> None:
    for key, shape in (("vert_all", (0, 6)), ("sem_label_all", (0,)), ("ins_label_all", (0,)), ("bbox", (0, 7)),
                       ("bbox_idx", (0,))):
        dtype = np.load(root / f"{SCENE}_{key}.npy").dtype
        np.save(root / f"{SCENE}_{key}.npy", np.zeros(shape, dtype))


BREAKAGES = {
    "a box of negative size": (lambda root: _edit(root / f"{SCENE}_bbox.npy", lambda a: a.__setitem__((0, 3), -1.0)),
                               f"{SCENE}_bbox.npy: 1 of 27 boxes have a negative extent"),
    "a box with NaN": (lambda root: _edit(root / f"{SCENE}_bbox.npy", lambda a: a.__setitem__((2, 0), np.nan)),
                       f"{SCENE}_bbox.npy: non-finite box parameters in 1 of 27 boxes"),
    "semantic ids of 999": (lambda root: _edit(root / f"{SCENE}_sem_label_all.npy", lambda a: a.__setitem__(
        slice(0, 10), 999)), f"{SCENE}_sem_label_all.npy: 10 values 999 outside 0..40; expected NYU40 class ids"),
    "negative instance ids": (lambda root: _negative_instances(root / f"{SCENE}_ins_label_all.npy"),
                              f"{SCENE}_ins_label_all.npy: 3 values -2 outside >= 0; expected instance ids"),
    "an empty scene": (_empty, "empty: 0 points"),
}


@pytest.mark.parametrize("kind", sorted(BREAKAGES))
def test_verify_and_the_reader_name_the_file_and_the_problem(scannet, kind):
    breakage, expected = BREAKAGES[kind]
    breakage(scannet)
    dataset = ScanNetExport(str(scannet), meta_dir=str(scannet.parent / "meta_data"))
    with pytest.raises(DataError) as info:
        dataset.scene("train", 0)
    message = str(info.value)
    assert expected in message and "\n" not in message and message.startswith(f"ScanNetExport scene '{SCENE}'")
    result = subprocess.run([sys.executable, "-m", "datasets", "verify", "--kind", "scannet", "--root", str(scannet)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and expected in result.stdout and "Traceback" not in result.stderr


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "run_bench.py"), *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"})


def test_a_run_on_a_broken_scene_stops_in_one_line_naming_the_file(scannet, tmp_path):
    BREAKAGES["a box of negative size"][0](scannet)
    result = _run("--gin=gin/smoke.gin", "--gin_binding=Experiment.dataset = @ScanNetExport()",
                  f"--gin_binding=ScanNetExport.root = '{scannet}'",
                  f"--gin_binding=ScanNetExport.meta_dir = '{scannet.parent / 'meta_data'}'",
                  "--results_dir", str(tmp_path / "results"))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert lines[-1].startswith("error: ") and f"{SCENE}_bbox.npy: 1 of 27 boxes have a negative extent" in lines[-1]


def test_clean_sunrgbd_frames_run_the_non_learned_row(real_data, tmp_path):
    """SUN RGB-D has no per-point labels: a row that fits a segmenter finds nothing to count, and goes on."""
    root = real_data / "sunrgbd" / "mmdet3d_9e39d46" / "sunrgbd_trainval"
    result = _run("--gin=gin/smoke.gin", "--gin=data/sunrgbd.gin", f"--gin_binding=SunRgbdVotenet.root = '{root}'",
                  "--results_dir", str(tmp_path / "results"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sunrgbd/det/AP25" in result.stdout or "det/AP25" in result.stdout

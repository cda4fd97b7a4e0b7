"""`python -m datasets verify` for ScanNet and SUN RGB-D on the real excerpts and on broken copies."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np

from tests.conftest import REPO_ROOT

EXPORT = ("scannet", "mmdet3d_9e39d46", "scannet_train_instance_data")


def _copy(real_data, tmp_path, scenes=("scene0000_00", "scene0000_01")):
    root = tmp_path / "export"
    root.mkdir()
    for path in real_data.joinpath(*EXPORT).iterdir():
        if path.name.startswith(scenes):
            shutil.copy(path, root / path.name)
    meta = tmp_path / "meta_data"
    meta.mkdir()
    (meta / "scannetv2_train.txt").write_text("\n".join(scenes) + "\n")
    (meta / "scannetv2_val.txt").write_text("scene0000_02\n")  # listed but absent: a problem
    return root


def _verify(root, kind="scannet"):
    result = subprocess.run([sys.executable, "-m", "datasets", "verify", "--kind", kind, "--root", str(root),
                             "--json"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def test_verify_reports_scenes_and_a_scene_missing_from_disk(real_data, tmp_path):
    code, report = _verify(_copy(real_data, tmp_path))
    rows = {row["scene_id"]: row for row in report["scenes"]}
    assert rows["scene0000_00"]["points"] == 81_369 and rows["scene0000_00"]["boxes"] == 27
    assert rows["scene0000_00"]["problems"] == []
    assert code != 0 and any("scene0000_02" == p["scene_id"] and "missing" in p["message"]
                             for p in report["problems"])


def test_verify_reports_truncated_and_wrong_dtype_files(real_data, tmp_path):
    root = _copy(real_data, tmp_path)
    vert = root / "scene0000_00_vert_all.npy"
    vert.write_bytes(vert.read_bytes()[:5000])
    labels = root / "scene0000_01_sem_label_all.npy"
    np.save(labels, np.load(labels).astype(np.float32) + 0.5)
    code, report = _verify(root)
    messages = {p["scene_id"]: p["message"] for p in report["problems"]}
    assert code != 0
    assert "truncated" in messages["scene0000_00"]
    assert "scene0000_01" in messages


def test_verify_sunrgbd_reports_frames_and_a_missing_calib(real_data, tmp_path):
    root = tmp_path / "sunrgbd_trainval"
    shutil.copytree(real_data / "sunrgbd" / "mmdet3d_9e39d46" / "sunrgbd_trainval", root)
    code, report = _verify(root, "sunrgbd")
    assert code == 0 and len(report["scenes"]) == 4
    assert all(row["points"] > 200_000 and row["boxes"] >= 1 for row in report["scenes"])
    (root / "calib" / "000003.txt").unlink()
    code, report = _verify(root, "sunrgbd")
    assert code != 0 and any("000003" in p["message"] and "calib" in p["message"] for p in report["problems"])


"""`python -m datasets verify --kind scannet` on the real export excerpt and on a broken copy."""
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


def _verify(root, *extra):
    result = subprocess.run([sys.executable, "-m", "datasets", "verify", "--kind", "scannet", "--root", str(root),
                             "--json", *extra], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
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

"""``datasets.verify`` and ``python -m datasets verify``: reports on good and broken dataset roots."""
from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from datasets import verify
from datasets.__main__ import main
from datasets.s3dis import S3DIS_INFO
from tests.conftest import REPO_ROOT

FIXTURE = pathlib.Path("s3dis") / "mmdet3d_fe25f7a" / "tests"
ROOM = "Area_1_office_2"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "datasets", "verify", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def broken_root(real_data, tmp_path) -> pathlib.Path:
    """Three copies of the fixture room: truncated points, a missing mask, a mask of the wrong length."""
    root = tmp_path / "s3dis"
    for kind in ("points", "semantic_mask", "instance_mask"):
        (root / kind).mkdir(parents=True)
        for room in ("Area_1_office_2", "Area_2_office_1", "Area_5_office_3"):
            shutil.copy(real_data / FIXTURE / kind / f"{ROOM}.bin", root / kind / f"{room}.bin")
    points = root / "points" / "Area_1_office_2.bin"
    points.write_bytes(points.read_bytes()[:2399])
    (root / "semantic_mask" / "Area_2_office_1.bin").unlink()
    inst = root / "instance_mask" / "Area_5_office_3.bin"
    inst.write_bytes(inst.read_bytes()[:99 * 8])
    return root


def test_real_fixture_report(real_data):
    report = verify.verify_s3dis(real_data / FIXTURE)
    assert report["ok"] and report["layout"] == "bin" and report["problems"] == []
    (entry,) = report["scenes"]
    assert entry["scene_id"] == ROOM and entry["split"] == "train"
    assert entry["points"] == 100 and entry["boxes"] == 5
    assert "board" not in entry["classes"] and len(entry["classes"]) == 12
    assert entry["box_classes"] == {"table": 2, "chair": 1, "sofa": 1, "bookcase": 1}
    assert report["splits"] == {"train": {"scenes": 1, "points": 100, "boxes": 5, "problems": 0}}


def test_real_fixture_cli_exits_zero(real_data):
    done = run_cli("--kind", "s3dis", "--root", str(real_data / FIXTURE))
    assert done.returncode == 0, done.stderr
    assert "100 points" in done.stdout and "no problems found" in done.stdout


def test_broken_root_report(broken_root):
    report = verify.verify_s3dis(broken_root)
    assert not report["ok"]
    by_room = {e["scene_id"]: e for e in report["scenes"]}
    assert [e["split"] for e in report["scenes"]] == ["train", "train", "val"]
    (truncated,) = by_room["Area_1_office_2"]["problems"]
    assert "points/Area_1_office_2.bin: truncated: 2399 bytes is not a multiple of the 24-byte record" in truncated
    (missing,) = by_room["Area_2_office_1"]["problems"]
    assert missing.endswith("semantic_mask/Area_2_office_1.bin: missing file")
    (short,) = by_room["Area_5_office_3"]["problems"]
    assert "instance_mask/Area_5_office_3.bin: 99 labels for 100 points" in short
    assert by_room["Area_5_office_3"]["points"] == 100  # what could be read is still reported
    assert len(report["problems"]) == 3
    assert {p["scene_id"] for p in report["problems"]} == set(by_room)


def test_broken_root_cli_text_and_json(broken_root):
    done = run_cli("--kind", "s3dis", "--root", str(broken_root))
    assert done.returncode == 1
    assert "3 problems:" in done.stdout and "Traceback" not in done.stdout + done.stderr
    for needle in ("truncated", "missing file", "99 labels for 100 points"):
        assert needle in done.stdout
    done = run_cli("--kind", "s3dis", "--root", str(broken_root), "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert not report["ok"] and len(report["problems"]) == 3
    assert all(set(p) == {"split", "scene_id", "message"} for p in report["problems"])


def test_semantic_ids_out_of_range(real_data, tmp_path):
    shutil.copytree(real_data / FIXTURE, tmp_path / "s3dis")
    sem = tmp_path / "s3dis" / "semantic_mask" / f"{ROOM}.bin"
    labels = np.fromfile(sem, np.int64)
    labels[3] = 13
    labels.tofile(sem)
    (problem,) = verify.verify_s3dis(tmp_path / "s3dis")["problems"]
    assert "ids 0..13 outside 0..12" in problem["message"]


def test_raw_layout_reports_malformed_line_and_goes_on(tmp_path):
    for room, text in [("office_1", "1 2 3 4 5 6\n1 2 3 4 5\n"), ("office_2", "1 2 3 4 5 6\n2 3 4 5 6 7\n")]:
        (tmp_path / "Area_5" / room / "Annotations").mkdir(parents=True)
        (tmp_path / "Area_5" / room / "Annotations" / "table_1.txt").write_text(text)
    report = verify.verify_s3dis(tmp_path)
    assert report["layout"] == "raw"
    assert [(e["scene_id"], e["points"], e["boxes"]) for e in report["scenes"]] == [
        ("Area_5_office_1", None, None), ("Area_5_office_2", 2, 1)]
    (problem,) = report["problems"]
    assert problem["scene_id"] == "Area_5_office_1" and "table_1.txt: line 2:" in problem["message"]


def test_root_problems_are_reported_not_raised(tmp_path):
    assert verify.verify_s3dis(tmp_path / "absent")["problems"][0]["message"].endswith("root folder not found (give --root)")
    (problem,) = verify.verify_s3dis(tmp_path)["problems"]
    assert "neither the mmdet3d layout" in problem["message"]
    assert "unknown s3dis layout" in verify.verify_s3dis(tmp_path, layout="ply")["problems"][0]["message"]


def test_npy_problems(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.zeros((10, 6), np.float32))
    assert verify.npy_problems(path, np.float32, 2) == []
    assert verify.npy_problems(path, np.int64, 1) == [f"{path}: dtype float32, expected int64",
                                                      f"{path}: shape (10, 6), expected 1 dims"]
    path.write_bytes(path.read_bytes()[:-5])
    assert "truncated" in verify.npy_problems(path)[0]
    path.write_bytes(b"not numpy")
    assert "unreadable .npy header" in verify.npy_problems(path)[0]
    assert verify.npy_problems(tmp_path / "b.npy") == [f"{tmp_path / 'b.npy'}: missing file"]


def test_check_scene_records_any_exception():
    def boom():
        raise KeyError("points")

    entry = verify.check_scene("train", "s0", boom, S3DIS_INFO)
    assert entry["points"] is None and entry["problems"] == ["KeyError: 'points'"]


def test_synthetic_verifier():
    report = verify.verify_synthetic(limit=1)
    assert report["ok"], report["problems"]
    assert [e["split"] for e in report["scenes"]] == ["train", "val", "pretrain"]
    assert [e["points"] > 0 for e in report["scenes"]] == [True, True, False]  # pretrain: frames only
    assert all(e["frames"] == 4 for e in report["scenes"])


def test_frames_only_scene_needs_frames_and_skips_point_checks():
    from datasets.synthetic import SyntheticIndoor
    from datasets.synthetic.dataset import frames_only_scene

    ds = SyntheticIndoor(num_pretrain=1, frames_per_scene=1, image_hw=(16, 20))
    scene = ds.scene("pretrain", 0)
    assert verify.check_scene("pretrain", scene.scene_id, lambda: scene, ds.info, frames_only=True)["problems"] == []
    assert "empty: 0 points" in verify.check_scene("train", scene.scene_id, lambda: scene, ds.info)["problems"]
    bare = frames_only_scene("bare", [])
    assert verify.check_scene("pretrain", "bare", lambda: bare, ds.info, frames_only=True)["problems"] == [
        "no frames in a frames-only scene"]


def test_new_verifier_is_one_dict_entry(monkeypatch, capsys):
    def verify_fake(root, *, layout="auto", limit=None):
        report = verify.new_report("fake", root, layout)
        verify.add_problem(report, "nothing here")
        return verify.finish_report(report)

    monkeypatch.setitem(verify.VERIFIERS, "fake", verify_fake)
    assert main(["verify", "--kind", "fake", "--root", "x", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["problems"] == [{"split": None, "scene_id": None, "message": "nothing here"}]


@pytest.mark.parametrize("kind", ["scannet", "s3dis", "sunrgbd"])
def test_an_empty_or_unrelated_root_is_a_problem(kind, tmp_path, capsys):
    (tmp_path / "holiday.jpg").write_bytes(b"not a dataset")
    assert main(["verify", "--kind", kind, "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "no problems found" not in out and "1 problems:" in out and str(tmp_path) in out


def test_a_layout_found_with_no_scene_in_it_is_a_problem(tmp_path, capsys):
    (tmp_path / "s3dis" / "Area_1").mkdir(parents=True)  # the raw layout's area folder, no rooms
    sunrgbd = tmp_path / "sunrgbd_trainval"
    sunrgbd.mkdir()
    (sunrgbd / "train_data_idx.txt").write_text("")
    (sunrgbd / "val_data_idx.txt").write_text("")
    for kind, root in (("s3dis", tmp_path / "s3dis"), ("sunrgbd", sunrgbd)):
        report = verify.VERIFIERS[kind](root)
        assert not report["ok"] and report["scenes"] == []
        assert report["problems"] == [{"split": None, "scene_id": None, "message": f"{root}: no scenes found"}]
    scannet = tmp_path / "scannet"  # an export whose split lists are empty
    (scannet / "meta_data").mkdir(parents=True)
    for split in ("train", "val"):
        (scannet / "meta_data" / f"scannetv2_{split}.txt").write_text("")
    np.save(scannet / "scene0000_00_vert.npy", np.zeros((1, 6), np.float32))
    (problem,) = verify.verify_scannet(scannet)["problems"]
    assert problem["message"].endswith(": no scenes found") and str(scannet) in problem["message"]
    assert main(["verify", "--kind", "s3dis", "--root", str(tmp_path / "s3dis")]) == 1
    assert "no scenes found" in capsys.readouterr().out


def test_limit_zero_is_refused(capsys):
    assert main(["verify", "--kind", "synthetic", "--limit", "0"]) == 2
    assert "--limit must be >= 1" in capsys.readouterr().err

"""Pictures and the ``python -m datasets`` command line."""
from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import pytest

from datasets.__main__ import main
from datasets.synthetic import SyntheticIndoor
from datasets.types import Frame, Scene
from datasets.visualize import save_frame_figure, save_scene_topview
from tests.conftest import REPO_ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def small():
    ds = SyntheticIndoor(seed=1, num_train=1, num_val=0, frames_per_scene=2, image_hw=(32, 40))
    return ds, ds.scene("train", 0)


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data.startswith(PNG_MAGIC)


def test_frame_and_topview_pngs(tmp_path, small):
    ds, scene = small
    save_frame_figure(scene.frames[0], tmp_path / "frame.png")
    save_scene_topview(scene, ds.info, tmp_path / "top.png")
    assert _is_png(tmp_path / "frame.png") and _is_png(tmp_path / "top.png")


def test_pictures_of_unlabelled_and_empty_data(tmp_path, small):
    ds, _ = small
    frame = Frame("blank", np.zeros((8, 10, 3), np.uint8), np.zeros((8, 10), np.float32), np.eye(3), np.eye(4))
    save_frame_figure(frame, tmp_path / "blank.png")
    empty = Scene("empty", np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8), np.zeros(0, np.int32),
                  np.zeros(0, np.int32), np.zeros((0, 7), np.float32), np.zeros(0, np.int32), np.zeros(0, np.int32))
    save_scene_topview(empty, ds.info, tmp_path / "empty.png")
    assert _is_png(tmp_path / "blank.png") and _is_png(tmp_path / "empty.png")


def test_cli_show_writes_pictures(tmp_path, capsys):
    out = tmp_path / "new" / "dir"
    assert main(["show", "--out", str(out), "--seed", "2", "--split", "val", "--index", "1",
                 "--hw", "24", "32", "--frames", "2"]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 3 and printed[-1].endswith("topview.png")
    for p in printed:
        assert pathlib.Path(p).parent == out and _is_png(pathlib.Path(p))


def test_cli_show_pretrain_scene_writes_frames_only(tmp_path, capsys):
    assert main(["show", "--out", str(tmp_path), "--split", "pretrain", "--index", "2", "--hw", "24", "32",
                 "--frames", "2"]) == 0
    printed = capsys.readouterr().out.split()
    assert [pathlib.Path(p).name for p in printed] == [f"synthetic-s0-pretrain-0002-f0{i}.png" for i in (0, 1)]
    assert all(_is_png(pathlib.Path(p)) for p in printed)


@pytest.mark.parametrize("extra", [[], ["--split", "test"]])
def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys, extra):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = str(blocker / "sub") if not extra else str(tmp_path / "ok")
    assert main(["show", "--out", out, "--hw", "8", "8", "--frames", "1", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1


def test_cli_as_module_unwritable_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = subprocess.run([sys.executable, "-m", "datasets", "show", "--out", str(blocker / "sub")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error:")
    assert proc.stdout == ""

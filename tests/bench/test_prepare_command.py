"""``run_bench.py --prepare [--shard I/N]``: every process takes a share of the scenes (shards, torchrun ranks,
a rerun after kill -9) and the files are the bytes of one process preparing alone."""
from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from bench.cli import main
from tests.bench.test_distributed import _require_gloo, _torchrun

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SCENES = 12
ARGS = ["--gin=gin/tables/table3_smoke.gin", f"--gin_binding=SyntheticIndoor.num_pretrain = {SCENES}",
        "--gin_binding=SyntheticIndoor.frames_per_scene = 3", "--gin_binding=SyntheticIndoor.image_hw = (96, 128)"]


def _prepare(results: pathlib.Path, *extra: str, wait: bool = True):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    command = [sys.executable, str(REPO_ROOT / "run_bench.py"), *ARGS, "--prepare", f"--results_dir={results}", *extra]
    if not wait:
        return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _prepared(results: pathlib.Path) -> dict[str, object]:
    """Every file of the preparation: data files by their bytes, records without the seconds they took."""
    out = {}
    for path in sorted((results / "cache" / "prepare").rglob("*")):
        # A kill -9 inside a write's few milliseconds leaves its hidden temporary file, never read.
        if path.is_file() and not (path.name.startswith(".") and path.name.endswith(".tmp")):
            name = str(path.relative_to(results))
            if path.name.endswith(".meta.json"):
                out[name] = {k: v for k, v in json.loads(path.read_text()).items() if k not in ("seconds", "phases")}
            else:
                out[name] = path.read_bytes()
    return out


def _scene_files(results: pathlib.Path) -> list[pathlib.Path]:
    return sorted((results / "cache" / "prepare").glob("*/scenes/*.npz"))


@pytest.fixture(scope="module")
def alone(tmp_path_factory) -> dict[str, object]:
    """What one process preparing alone writes."""
    results = tmp_path_factory.mktemp("alone")
    printed = _prepare(results).stdout
    assert f"{SCENES} of {SCENES} scenes" in printed and "prepared 1 pretraining data set" in printed
    assert not (results / "mlflow.db").exists() and not (results / "table3").exists()  # nothing trained or logged
    files = _prepared(results)
    assert len(_scene_files(results)) == SCENES and any("/groups-k4-" in name for name in files)
    assert not any("/locks/" in name and name.endswith(".lock") and "groups" not in name for name in files)
    return files


def test_two_shards_then_a_prepare_give_the_files_of_one_process(alone, tmp_path):
    first = _prepare(tmp_path, "--shard=0/2").stdout
    assert "shard 0 of 0..1" in first and "a --prepare without --shard after every shard makes the groups" in first
    assert len(_scene_files(tmp_path)) == SCENES // 2
    _prepare(tmp_path, "--shard=1/2")
    assert len(_scene_files(tmp_path)) == SCENES and not any("groups-" in n for n in _prepared(tmp_path))
    last = _prepare(tmp_path).stdout
    assert f"{SCENES} of" not in last  # the scenes were all there: only the groups were made
    assert _prepared(tmp_path) == alone


def test_two_torchrun_ranks_each_prepare_a_share(alone, tmp_path):
    _require_gloo()
    result = _torchrun(str(REPO_ROOT / "run_bench.py"), *ARGS, "--prepare", f"--results_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    shares = re.findall(r"(\d+) of 12 scenes \(\d+ frames\) prepared in [^,]+, (\d+) by another process",
                        result.stdout)
    assert shares and all(int(mine) > 0 and int(theirs) > 0 for mine, theirs in shares), result.stdout
    assert _prepared(tmp_path) == alone


def test_a_kill_9_loses_at_most_the_scene_in_hand(alone, tmp_path):
    process = _prepare(tmp_path, wait=False)
    deadline = time.monotonic() + 120
    while len(_scene_files(tmp_path)) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    finished = len(_scene_files(tmp_path))
    assert finished >= 2
    rerun = _prepare(tmp_path).stdout
    redone = re.search(r"(\d+) of \d+ scenes \(\d+ frames\) prepared", rerun)
    if finished < SCENES:  # else the first run had finished before the kill
        assert redone and int(redone.group(1)) <= SCENES - finished, rerun
    assert _prepared(tmp_path) == alone


@pytest.mark.parametrize("argv, says", [(["--shard=0/2"], "--shard goes with --prepare"),
                                        (["--prepare", "--shard=2/2"], "expected I/N with 0 <= I < N"),
                                        (["--prepare", "--shard=half"], "expected I/N with 0 <= I < N")])
def test_a_bad_shard_is_one_line(argv, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--gin=gin/smoke.gin", *argv])
    assert exit_.value.code == 2 and says in capsys.readouterr().err

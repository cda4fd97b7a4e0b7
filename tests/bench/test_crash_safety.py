"""Crash safety (issue 12, item 2): runs of a killed invocation, two invocations at once, a full disk."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

import infra.io
from bench import owners
from bench.config import parse_config
from bench.mlflow_store import MlflowStore
from bench.results_layout import ResultsLayout
from bench.runner import Experiment
from bench.tracking import Tracker
from infra.errors import HarnessError
from tests.conftest import REPO_ROOT

SMALL = ["SyntheticIndoor.num_train = 2", "SyntheticIndoor.num_val = 1", "SyntheticIndoor.frames_per_scene = 1"]


@pytest.fixture(autouse=True)
def _no_env_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _open_runs(results, owner_tags: dict[str, str], experiment: str = "x") -> tuple[str, str]:
    """A parent and a child run left RUNNING by the owner tagged ``owner_tags``, the parent with a staging folder."""
    tracker = Tracker(ResultsLayout(results).tracking_uri, experiment, run_tags=owner_tags)
    tracker.connect()
    parent = tracker._create("parent", {}, None)
    staging = results / experiment / f".20260101-000000-{parent.run_id[:8]}.partial"
    staging.mkdir(parents=True)
    (staging / "config.gin").write_text("")
    parent.log_batch(tags={owners.STAGING_TAG: str(staging)})
    child = tracker._create("child", {}, parent)
    return parent.run_id, child.run_id


def owner_of_an_ended_process(results) -> dict[str, str]:
    """The run tags of an invocation whose process ended holding its owner file (as ``kill -9`` leaves it)."""
    code = ("import json, os, sys; from bench import owners; from bench.results_layout import ResultsLayout; "
            "owner = owners.Owner(ResultsLayout.at(sys.argv[1])).acquire(); print(json.dumps(owner.tags), "
            "flush=True); os._exit(0)")
    done = subprocess.run([sys.executable, "-c", code, str(results)], cwd=REPO_ROOT, capture_output=True, text=True,
                          check=True, timeout=60)
    return json.loads(done.stdout)


def test_the_runs_of_a_killed_invocation_are_marked_killed_and_a_running_one_s_are_left(tmp_path):
    results = tmp_path.resolve()
    killed = owner_of_an_ended_process(results)
    killed_runs = _open_runs(results, killed)
    alive = owners.Owner(ResultsLayout(results)).acquire()  # another invocation, still running
    alive_runs = _open_runs(results, alive.tags, "y")
    vanished = owner_of_an_ended_process(results)  # killed, and its owner file removed since: its pid is gone
    os.unlink(vanished[owners.LOCK_TAG])
    vanished_runs = _open_runs(results, vanished, "z")

    me = owners.Owner(ResultsLayout(results)).acquire()
    store = MlflowStore(ResultsLayout(results).tracking_uri)
    lines = owners.sweep(store, me)
    client = MlflowClient(ResultsLayout(results).tracking_uri)
    for run_id in (*killed_runs, *vanished_runs):
        run = client.get_run(run_id)
        assert run.info.status == "KILLED" and "process that opened it had ended" in run.data.tags[owners.STALE_TAG]
    for run_id in alive_runs:
        assert client.get_run(run_id).info.status == "RUNNING"
    assert not list((results / "x").glob(".*.partial")) and list((results / "y").glob(".*.partial"))
    assert not os.path.exists(killed[owners.LOCK_TAG]) and alive.lock.exists()
    assert len(lines) == 2 and all("marked KILLED" in line and "has ended" in line for line in lines)
    assert owners.sweep(store, me) == []  # nothing left to sweep
    alive.release()
    me.release()
    assert not alive.lock.exists() and not me.lock.exists()


def test_two_invocations_starting_at_once_on_a_fresh_folder_both_finish(tmp_path):
    """Both proceed: the second waits for the first to create the MLflow store, then they share it."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    args = [sys.executable, str(REPO_ROOT / "run_bench.py"), "--gin=gin/smoke.gin", f"--results_dir={tmp_path}",
            *(f"--gin_binding={b}" for b in SMALL)]
    processes = [subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], errors
    client = MlflowClient(ResultsLayout(tmp_path).tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("synthetic_smoke").experiment_id])
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert len(list((tmp_path / "synthetic_smoke").iterdir())) == 2


def test_a_full_disk_is_one_line_naming_the_folder_with_runs_failed_and_nothing_half_written(tmp_path, monkeypatch):
    written = []

    def full_after_a_few(f, data):
        written.append(f.name)
        if len(written) > 6:
            raise OSError(errno.ENOSPC, "No space left on device")
        f.write(data)

    monkeypatch.setattr(infra.io, "_write", full_after_a_few)
    parse_config(["tables/table4_smoke.gin"], ["Experiment.rows = {'stage1': @s1/FinetuneRow}"])
    with pytest.raises(HarnessError) as info:
        Experiment().run(tmp_path)
    message = str(info.value)
    assert "\n" not in message and message.startswith("no space left on the device of ")
    assert str(tmp_path) in message
    client = MlflowClient(ResultsLayout(tmp_path).tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("table4").experiment_id])
    assert runs and {r.info.status for r in runs} == {"FAILED"}
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp") or p.name.endswith(".partial")]
    assert not leftovers
    for path in (tmp_path / "cache").rglob("*"):  # every cache file there is whole: it passes its checksum
        if path.is_file() and not path.name.endswith((".meta.json", ".lock")):
            infra.io.read_cache_file(path)

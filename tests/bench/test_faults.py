"""Faults while a table runs, as a user meets them: Ctrl-C or SIGTERM reaches the process group (workers and the
MLflow helper included), the MLflow helper is killed. Each ends in one line, no traceback from any process, no
run left RUNNING once the next invocation has run, and the rerun gives the clean run's cells. A tracking server
that dies mid-table: tests/bench/test_tracking_server.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from bench.mlflow_store import StoreProxy
from bench.results_layout import ResultsLayout
from tests.conftest import REPO_ROOT

TABLE = "--gin=gin/tables/table3_smoke.gin"


def _start(command: list[str], env: dict) -> subprocess.Popen:
    """``run_bench.py`` with ``command`` in a process group of its own, SIGINT at its default (a shell's
    background job would ignore it)."""
    return subprocess.Popen([sys.executable, str(REPO_ROOT / "run_bench.py"), *command], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(process: subprocess.Popen, text: str) -> list[str]:
    lines = []
    for line in process.stdout:
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"never printed {text!r}: {''.join(lines)[-2000:]}")


def _finish(process: subprocess.Popen) -> tuple[int, list[str]]:
    _, err = process.communicate(timeout=300)
    return process.returncode, [line for line in err.splitlines() if line.strip()]


def _cells(results) -> dict:
    folder = max((p for p in (results / "table3").iterdir() if not p.name.startswith(".")), key=lambda p: p.name)
    return {(r["row"], r["seed"]): r["metrics"] for r in json.loads((folder / "metrics.json").read_text())["runs"]}


def _statuses(uri: str) -> list[str]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("table3")
    return [r.info.status for r in client.search_runs([experiment.experiment_id])]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The smoke table's cells from an uninterrupted run."""
    results = tmp_path_factory.mktemp("clean")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    code, err = _finish(_start([TABLE, "--results_dir", str(results)], env))
    assert code == 0, err
    return _cells(results)


@pytest.mark.parametrize("signum, times", [(signal.SIGINT, 1), (signal.SIGINT, 2), (signal.SIGTERM, 1)],
                         ids=["ctrl-c", "ctrl-c twice", "sigterm"])
def test_an_interrupt_of_the_whole_process_group_ends_in_one_line_with_no_run_running(tmp_path, clean, signum, times):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    results = tmp_path / "results"
    run = _start([TABLE, "--results_dir", str(results), "--gin_binding=Experiment.workers = 2"], env)
    _wait_for(run, "1/6 rows x seeds done")
    for _ in range(times):
        os.killpg(run.pid, signum)
        time.sleep(0.2)
    code, err = _finish(run)
    assert code == 130 and len(err) == 1 and err[0].startswith("interrupted: "), err
    assert "RUNNING" not in _statuses(ResultsLayout(results).tracking_uri)
    code, err = _finish(_start([TABLE, "--results_dir", str(results)], env))
    assert code == 0, err
    assert _cells(results) == clean


def test_a_killed_mlflow_helper_is_one_line_and_the_next_run_ends_its_runs(tmp_path, clean):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    results = tmp_path / "results"
    run = _start([TABLE, "--results_dir", str(results)], env)
    _wait_for(run, "1/6 rows x seeds done")
    helper = int(open(f"/proc/{run.pid}/task/{run.pid}/children").read().split()[0])
    os.kill(helper, signal.SIGKILL)
    code, err = _finish(run)
    assert code == 2 and len(err) == 1 and "the MLflow helper process ended unexpectedly" in err[0], err
    code, err = _finish(_start([TABLE, "--results_dir", str(results)], env))
    assert code == 0, err
    assert "RUNNING" not in _statuses(ResultsLayout(results).tracking_uri)
    assert _cells(results) == clean


def test_a_call_cut_short_by_ctrl_c_leaves_its_reply_to_be_skipped_not_read_by_the_next(tmp_path, capfd):
    """Ctrl-C while a call waits for the helper: the next call gets its own reply, and the helper, whose
    reply then goes to a closed pipe, ends without a traceback."""
    proxy = StoreProxy()  # spawned here: its first reply waits for MLflow's import

    def interrupt(*_):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    try:
        with pytest.raises(KeyboardInterrupt):
            proxy.open(ResultsLayout(tmp_path).tracking_uri)
    finally:
        signal.signal(signal.SIGALRM, previous)
    proxy.uri = ResultsLayout(tmp_path).tracking_uri
    assert proxy.experiment_id("x", None) == proxy.experiment_id("x", None)  # its own replies
    proxy.close()
    proxy._process.join(timeout=30)
    assert proxy._process.exitcode == 0
    assert "Traceback" not in capfd.readouterr().err

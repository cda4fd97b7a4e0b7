"""The MLflow store in a helper process: the same answers as in this process, writes in order, errors raised."""
from __future__ import annotations

import pathlib
import subprocess
import sys
import time

import pytest

from bench import mlflow_store
from bench.mlflow_store import MlflowStore, StoreProxy
from bench.results_layout import ResultsLayout
from bench.tracking import RunHandle
from infra.errors import HarnessError


def _exercise(store) -> tuple:
    experiment = store.experiment_id("exp", None)
    assert store.experiment_id("exp", None) == experiment  # found, not created twice
    parent = store.create_run(experiment, "parent", {}, None)
    child = store.create_run(experiment, "child", {mlflow_store.PARENT_RUN_TAG: parent, "row": "r"}, 1000)
    store.log_batch(child, params=[("a", "1")], tags=[("t", "x")], metrics=[("m", 0.5, 2000, 0), ("m", 0.25, 3000, 1)])
    store.set_terminated(child, "FINISHED", 4000)
    children = store.child_runs(parent)
    history = store.metric_history(child, "m")
    return children, history, store.run_data(child)


def test_the_helper_process_gives_the_answers_of_an_in_process_store(tmp_path):
    local = _exercise(MlflowStore(ResultsLayout(tmp_path / "a").tracking_uri))
    proxy = StoreProxy().open(ResultsLayout(tmp_path / "b").tracking_uri)
    try:
        remote = _exercise(proxy)
    finally:
        proxy.close()
    for children in (local[0], remote[0]):
        assert [(c["status"], c["tags"]["row"], c["metrics"]["m"]) for c in children] == [("FINISHED", "r", 0.25)]
    assert local[1] == remote[1] == [(0, 2000, 0.5), (1, 3000, 0.25)]
    assert local[2]["tags"]["t"] == remote[2]["tags"]["t"] == "x"


def test_an_error_of_a_write_sent_without_waiting_is_raised_by_the_next_call(tmp_path):
    proxy = StoreProxy().open(ResultsLayout(tmp_path).tracking_uri)
    try:
        proxy.log_batch("no-such-run", params=[("a", "1")])  # returns at once
        with pytest.raises(RuntimeError, match="an earlier MLflow write failed"):
            proxy.experiment_id("exp", None)
        assert proxy.experiment_id("exp", None)  # the error is reported once
    finally:
        proxy.close()


def test_store_for_uses_the_prewarmed_helper_for_one_uri_only(tmp_path, monkeypatch):
    helper = StoreProxy()
    monkeypatch.setattr(mlflow_store, "_helper", helper)
    first = ResultsLayout(tmp_path / "a").tracking_uri
    try:
        assert mlflow_store.store_for(first) is helper and helper.uri == first
        assert mlflow_store.store_for(first) is helper
        assert isinstance(mlflow_store.store_for(ResultsLayout(tmp_path / "b").tracking_uri), MlflowStore)
    finally:
        mlflow_store.shutdown()
    assert mlflow_store._helper is None
    with pytest.raises(HarnessError, match="ended unexpectedly"):
        helper.experiment_id("exp", None)


def test_prewarm_does_nothing_where_mlflow_is_already_imported(monkeypatch):
    monkeypatch.setattr(mlflow_store, "_helper", None)
    mlflow_store.prewarm()  # pytest has imported mlflow already
    assert mlflow_store._helper is None


_FRESH_PROCESS = """
import os, sys
sys.path.insert(0, {root!r})
from bench import mlflow_store
mlflow_store.prewarm()
print(mlflow_store._start_method(), mlflow_store._helper._process.pid, flush=True)
mlflow_store.store_for({uri!r}).experiment_id("exp", None)
mlflow_store.shutdown()
os._exit(0)  # as run_bench.py ends: no interpreter teardown, no join of child processes
"""


def _alive(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return not any(line.split()[1] in ("Z", "X") for line in state.splitlines() if line.startswith("State:"))


@pytest.mark.skipif(sys.platform != "linux", reason="the helper is forked on Linux only")
def test_a_forked_helper_ends_when_the_process_that_started_it_is_done(tmp_path):
    root = str(pathlib.Path(__file__).resolve().parents[2])
    script = _FRESH_PROCESS.format(root=root, uri=ResultsLayout(tmp_path).tracking_uri)
    log = tmp_path / "out.txt"  # not a pipe: a helper that lived on would keep a pipe open, and the run waiting
    with log.open("w") as out:
        subprocess.run([sys.executable, "-c", script], stdout=out, timeout=120, check=True)
    method, pid = log.read_text().split()
    assert method == "fork"  # a fresh process without torch forks its helper
    deadline = time.time() + 20
    while _alive(int(pid)) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(int(pid)), "the helper outlived the process that started it"


class _CountingStore:
    """Records every log_batch request a RunHandle makes."""

    def __init__(self):
        self.requests = []

    def log_batch(self, run_id, params=(), tags=(), metrics=()):
        self.requests.append((list(params), list(tags), list(metrics)))


def test_a_run_handle_writes_params_tags_and_metrics_in_as_few_requests_as_mlflow_takes():
    store = _CountingStore()
    handle = RunHandle(store, "run", "name")
    params = {f"p{i}": i for i in range(250)}
    tags = {f"t{i}": i for i in range(50)}
    series = [(step, 1000 + step, {f"m{i}": float(i) for i in range(100)}) for step in range(25)]  # 2,500 values
    handle.log_batch(params, tags, series)
    # 250 params need 3 requests; 2,500 metrics fill what the 1,000-entity limit leaves: 850 + 900 + 750.
    sizes = [(len(p), len(t), len(m)) for p, t, m in store.requests]
    assert sizes == [(100, 50, 850), (100, 0, 900), (50, 0, 750)]
    assert all(len(p) <= 100 and len(t) <= 100 and len(p) + len(t) + len(m) <= 1000 for p, t, m in store.requests)
    assert [k for p, _, _ in store.requests for k, _ in p] == list(params)
    assert [(k, v, stamp, step) for _, _, m in store.requests for k, v, stamp, step in m] == [
        (k, v, stamp, step) for step, stamp, values in series for k, v in values.items()]
    store.requests.clear()
    handle.log_batch()  # nothing to write: no request
    assert store.requests == []

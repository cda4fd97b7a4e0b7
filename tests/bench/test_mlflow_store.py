"""The MLflow store in a helper process: the same answers as in this process, writes in order, errors raised."""
from __future__ import annotations

import pytest

from bench import mlflow_store
from bench.errors import HarnessError
from bench.mlflow_store import MlflowStore, StoreProxy
from bench.tracking import default_tracking_uri


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
    local = _exercise(MlflowStore(default_tracking_uri(tmp_path / "a")))
    proxy = StoreProxy().open(default_tracking_uri(tmp_path / "b"))
    try:
        remote = _exercise(proxy)
    finally:
        proxy.close()
    for children in (local[0], remote[0]):
        assert [(c["status"], c["tags"]["row"], c["metrics"]["m"]) for c in children] == [("FINISHED", "r", 0.25)]
    assert local[1] == remote[1] == [(0, 2000, 0.5), (1, 3000, 0.25)]
    assert local[2]["tags"]["t"] == remote[2]["tags"]["t"] == "x"


def test_an_error_of_a_write_sent_without_waiting_is_raised_by_the_next_call(tmp_path):
    proxy = StoreProxy().open(default_tracking_uri(tmp_path))
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
    first = default_tracking_uri(tmp_path / "a")
    try:
        assert mlflow_store.store_for(first) is helper and helper.uri == first
        assert mlflow_store.store_for(first) is helper
        assert isinstance(mlflow_store.store_for(default_tracking_uri(tmp_path / "b")), MlflowStore)
    finally:
        mlflow_store.shutdown()
    assert mlflow_store._helper is None
    with pytest.raises(HarnessError, match="ended unexpectedly"):
        helper.experiment_id("exp", None)


def test_prewarm_does_nothing_where_mlflow_is_already_imported(monkeypatch):
    monkeypatch.setattr(mlflow_store, "_helper", None)
    mlflow_store.prewarm()  # pytest has imported mlflow already
    assert mlflow_store._helper is None

"""What a person sees of the harness's runs in MLflow: the experiment's kind, the parent runs' names, the UI link."""
from __future__ import annotations

import calendar
import types

from bench.mlflow_store import EXPERIMENT_KIND_TAG, TRAINING_KIND, MlflowStore
from bench.tracking import parent_run_name, ui_page


def test_a_parent_run_is_named_by_table_profile_and_utc_start_and_says_when_nothing_trained():
    started = calendar.timegm((2026, 12, 7, 16, 28, 38))
    assert parent_run_name("table3", "smoke", False, started) == "table3 smoke 2026-12-07 16:28:38 UTC"
    assert parent_run_name("table3", "demo", True, started) == "table3 demo cached 2026-12-07 16:28:38 UTC"


def test_the_ui_link_asks_for_the_model_training_view():
    view = "?workflowType=machine_learning"
    assert ui_page("http://mlflow.lab:5000/", "3") == f"http://mlflow.lab:5000/#/experiments/3{view}"
    assert ui_page("sqlite:////r/mlflow.db", "1") == ("mlflow ui --backend-store-uri sqlite:////r/mlflow.db, then "
                                                      f"http://127.0.0.1:5000/#/experiments/1{view}")
    assert ui_page("databricks", "1") is None


class FakeClient:
    """``MlflowClient``'s experiment calls on a dict of name -> (id, tags)."""

    def __init__(self, experiments: dict[str, dict[str, str]]):
        self.experiments = {name: (str(i), dict(tags)) for i, (name, tags) in enumerate(experiments.items())}

    def get_experiment_by_name(self, name):
        if name in self.experiments:
            return types.SimpleNamespace(experiment_id=self.experiments[name][0], tags=self.experiments[name][1])
        return None

    def create_experiment(self, name, artifact_location=None, tags=None):
        self.experiments[name] = (str(len(self.experiments)), dict(tags or {}))
        return self.experiments[name][0]

    def set_experiment_tag(self, experiment_id, key, value):
        next(tags for i, tags in self.experiments.values() if i == experiment_id)[key] = value


def test_experiments_are_marked_as_model_training_unless_they_have_a_kind():
    store = MlflowStore.__new__(MlflowStore)  # the real server's part: tests/bench/test_tracking_server.py
    store._client = FakeClient({"older": {}, "genai": {EXPERIMENT_KIND_TAG: "genai_development"}})
    for name in ("made", "older", "genai"):
        store.experiment_id(name, None)
    kinds = {name: tags.get(EXPERIMENT_KIND_TAG) for name, (_, tags) in store._client.experiments.items()}
    assert kinds == {"made": TRAINING_KIND, "older": TRAINING_KIND, "genai": "genai_development"}

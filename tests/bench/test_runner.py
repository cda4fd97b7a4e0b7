"""End-to-end runs of the smoke config in-process: results folder, MLflow structure, run statuses."""
from __future__ import annotations

import json

import gin
import pytest
from mlflow.tracking import MlflowClient

from bench.config import parse_config
from bench.results_layout import ResultsLayout
from bench.runner import Experiment


class _Exploding:
    """A row whose run raises, to check a failed run ends FAILED and leaves no results folder."""

    def __init__(self, error: type = RuntimeError):
        self.error = error

    def run(self, context):
        raise self.error("boom")


gin.external_configurable(_Exploding, name="ExplodingMethod", module="tests")

SMALL = ["SyntheticIndoor.num_train = 2", "SyntheticIndoor.num_val = 1", "SyntheticIndoor.frames_per_scene = 1"]


def _runs(results_dir, experiment):
    client = MlflowClient(ResultsLayout(results_dir).tracking_uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id])


@pytest.fixture(autouse=True)
def _no_env_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_smoke_run_writes_results_and_mlflow_structure(tmp_path):
    parse_config(["smoke.gin"], SMALL + ["Experiment.seeds = 2"])
    folder = Experiment().run(tmp_path)

    assert sorted(p.name for p in folder.iterdir()) == ["config.gin", "metrics.json", "operative_config.gin",
                                                         "summary.md"]
    assert "SyntheticIndoor.num_train = 2" in (folder / "operative_config.gin").read_text()
    records = json.loads((folder / "metrics.json").read_text())["runs"]
    assert [(r["row"], r["seed"]) for r in records] == [("non-learned", 0), ("non-learned", 1)]
    assert not list(folder.parent.glob(".*.partial"))

    runs = _runs(tmp_path, "synthetic_smoke")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED" and all(c.info.status == "FINISHED" for c in children)
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.data.tags["seed"] for c in children} == {"0", "1"}
    for suffix in ("det/AP25", "det/AP50", "seg/mIoU", "seg/mAcc"):
        assert all(f"synthetic/{suffix}" in c.data.metrics for c in children), suffix
    assert parent.data.params["SyntheticIndoor.num_train"] == "2"
    assert parent.data.params["Experiment.name"] == "'synthetic_smoke'"
    for tag in ("git_commit", "version.torch", "version.mlflow", "seeds"):
        assert tag in parent.data.tags
    artifacts = {a.path for a in MlflowClient(ResultsLayout(tmp_path).tracking_uri).list_artifacts(parent.info.run_id)}
    assert {"operative_config.gin", "summary.md", "metrics.json"} <= artifacts


@pytest.mark.parametrize("error, status", [(RuntimeError, "FAILED"), (KeyboardInterrupt, "KILLED")])
def test_a_failing_row_ends_its_runs_failed_or_killed_and_keeps_no_results(tmp_path, error, status):
    gin.external_configurable(lambda: _Exploding(error), name=f"Exploding_{status}", module="tests")
    parse_config(["smoke.gin"], SMALL + [f"Experiment.rows = {{'boom': @Exploding_{status}}}"])
    with pytest.raises(error):
        Experiment().run(tmp_path)
    runs = _runs(tmp_path, "synthetic_smoke")
    assert len(runs) == 2 and {r.info.status for r in runs} == {status}
    assert not any((tmp_path / "synthetic_smoke").iterdir())

"""Learning curves (methods/learning_curve.py): points at the due epochs, stored in the run's history and
the figure, and no effect on the trained model or the table's cells."""
from __future__ import annotations

import json

import gin
import pytest
from mlflow.tracking import MlflowClient

from bench.config import parse_config
from bench.report import seed_mean_curves
from bench.results_layout import ResultsLayout
from bench.runner import Experiment
from methods.learning_curve import LearningCurve

ROWS = "Experiment.rows = {'none': @none/FinetuneRow, 'DD': @dd/FinetuneRow}"
TABLE_ROWS = "TableSpec.rows = {'none': 'none', 'DD': 'DD'}"


@pytest.fixture(autouse=True)
def _no_env_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_a_curve_has_points_every_few_epochs_and_after_the_last():
    curve = LearningCurve(every=2)
    assert [e for e in range(5) if curve.due(e, 5)] == [1, 3, 4]
    assert [e for e in range(4) if curve.due(e, 4)] == [1, 3]
    with pytest.raises(ValueError, match="LearningCurve.every: expected an integer >= 1, got 0"):
        LearningCurve(every=0)


def test_seed_means_average_each_rows_curve_over_its_seeds():
    curves = {"none seed=0 det": [(0, 1.0), (2, 3.0)], "none seed=1 det": [(0, 3.0), (2, 5.0)],
              "DD seed=0 det": [(0, 7.0)]}
    assert seed_mean_curves(curves) == {"none det (mean of 2 seeds)": [(0, 2.0), (2, 4.0)],
                                        "DD det (mean of 1 seed)": [(0, 7.0)]}


def _run(results, bindings=()):
    gin.clear_config()
    parse_config(["tables/table3_smoke.gin"], [ROWS, TABLE_ROWS, "finetune_det/TrainSchedule.epochs = 3",
                                               "FinetuneRow.protocols = []", *bindings])
    folder = Experiment().run(results)
    runs = json.loads((folder / "metrics.json").read_text())["runs"]
    return folder, {(r["row"], r["seed"]): r["metrics"] for r in runs}


def test_a_curve_changes_no_cell_and_is_drawn(tmp_path):
    _, plain = _run(tmp_path / "plain")
    folder, curved = _run(tmp_path / "curved", ["DetrDetection.curve = @LearningCurve()",
                                                "LearningCurve.every = 2", "LearningCurve.scenes = 1"])
    for job, metrics in plain.items():
        for key, value in metrics.items():
            if key.startswith("synthetic/") or key.startswith("pretrain/"):
                assert curved[job][key] == value, (job, key)
    # Points after epochs 2 and 3 (steps 1 and 2) in every child run's history, none in the plain runs.
    client = MlflowClient(ResultsLayout(tmp_path / "curved").tracking_uri)
    children = [r for r in client.search_runs([client.get_experiment_by_name("table3").experiment_id])
                if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2
    for child in children:
        history = client.get_metric_history(child.info.run_id, "finetune/det/val_AP25")
        assert sorted(m.step for m in history) == [1, 2] and all(0 <= m.value <= 100 for m in history)
    assert (folder / "table3_det_ap25_curve.png").is_file()
    assert not (next((tmp_path / "plain" / "table3").iterdir()) / "table3_det_ap25_curve.png").exists()

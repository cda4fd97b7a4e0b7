"""Pretraining end to end on the synthetic benchmark (smoke profile): every stage and baseline trains
with a decreasing loss, logs its curve to MLflow, and stages are cached by content."""
from __future__ import annotations

import json

import gin
import pytest
import torch
from mlflow.tracking import MlflowClient

from bench.config import parse_config
from bench.results_layout import ResultsLayout
from bench.runner import Experiment


def _run(results_dir, *bindings):
    gin.clear_config()
    parse_config(["pretrain_smoke.gin"], list(bindings))
    folder = Experiment().run(results_dir)
    return {r["row"]: r["metrics"] for r in json.loads((folder / "metrics.json").read_text())["runs"]}


def _checkpoints(results_dir):
    return {p.parent.name: p.stat().st_mtime_ns for p in (results_dir / "cache" / "stages").glob("*/checkpoint.pt")}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("pretrain")
    metrics = _run(results, "TrainSchedule.epochs = 3")
    return results, metrics, _checkpoints(results)


def test_every_stage_and_baseline_lowers_its_loss(first_run):
    _, metrics, _ = first_run
    assert len(metrics) == 6
    for row, values in metrics.items():
        stages = {key.split("/")[1] for key in values}
        for stage in stages:
            first, last = values[f"pretrain/{stage}/loss_first"], values[f"pretrain/{stage}/loss_last"]
            assert last < first, (row, stage, first, last)


def test_rows_share_stage1_and_checkpoints_load_weights_only(first_run):
    results, _, checkpoints = first_run
    stage1 = next(name for name in checkpoints if name.startswith("stage1-"))
    model = torch.load(results / "cache" / "stages" / stage1 / "checkpoint.pt", weights_only=True)["model"]
    # The smoke profile's EncoderSpec.width = 32 reaches the encoder (gin wires the nested spec).
    assert model["encoder.pos_embed.mlp.2.weight"].shape[0] == 32
    assert sorted(name.split("-")[0] for name in checkpoints) == [
        "bridge3d", "point_mae", "same_stage", "stage1", "stage1_knn", "stage2"]
    for name in checkpoints:
        state = torch.load(results / "cache" / "stages" / name / "checkpoint.pt", weights_only=True)
        assert len(state["history"]) == 3


def test_loss_curves_are_in_mlflow(first_run):
    results, _, _ = first_run
    client = MlflowClient(ResultsLayout(results).tracking_uri)
    experiment = client.get_experiment_by_name("synthetic_pretrain_smoke")
    runs = client.search_runs([experiment.experiment_id], "tags.row = 'stage1 + stage2'")
    history = client.get_metric_history(runs[0].info.run_id, "pretrain/stage2/loss")
    assert [m.step for m in history] == [0, 1, 2]
    assert client.get_metric_history(runs[0].info.run_id, "pretrain/stage1/distill")


def test_a_rerun_trains_nothing_and_a_changed_stage2_retrains_only_stage2(first_run):
    results, metrics, checkpoints = first_run
    assert _run(results, "TrainSchedule.epochs = 3") == metrics
    assert _checkpoints(results) == checkpoints
    _run(results, "TrainSchedule.epochs = 3", "MaskedTokenPrediction.mask_ratio = 0.5",
         "Experiment.rows = {'stage1 + stage2': @stage2/PretrainRow}")
    after = _checkpoints(results)
    new = set(after) - set(checkpoints)
    assert len(new) == 1 and next(iter(new)).startswith("stage2-")
    assert all(after[name] == mtime for name, mtime in checkpoints.items())


def test_each_stage_logs_its_token_report(first_run):
    results, _, _ = first_run
    client = MlflowClient(ResultsLayout(results).tracking_uri)
    experiment = client.get_experiment_by_name("synthetic_pretrain_smoke")

    def metrics(row):  # of the row's latest run (the tests above re-run the experiment)
        return client.search_runs([experiment.experiment_id], f"tags.row = '{row}'")[0].data.metrics

    two = metrics("stage1 + stage2")  # both stages of the chain report
    for stage in ("stage1", "stage2"):
        assert two[f"tokens/{stage}/frames"] == 4  # the smoke split has 2 scenes x 2 frames
        assert 0 < two[f"tokens/{stage}/coverage_mean"] <= 1 and two[f"tokens/{stage}/tokens_max"] <= 16
        assert two[f"tokens/{stage}/mixed_mean"] == 0.0  # SAM-guided tokens never mix regions
    knn = metrics("stage1 (KNN tokens)")
    assert knn["tokens/stage1_knn/tokens_mean"] == 16 and knn["tokens/stage1_knn/points_per_token_mean"] == 16

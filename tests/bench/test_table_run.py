"""A smoke-profile table end to end: MLflow structure, table artifacts, caching, interruption."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import gin
import pytest
import torch
from mlflow.tracking import MlflowClient

from bench.config import parse_config
from bench.results_layout import ResultsLayout
from bench.runner import Experiment
from tests.conftest import REPO_ROOT

METRICS = ("synthetic/det/AP25", "synthetic/det/AP50", "synthetic/seg/mIoU", "synthetic/seg/mAcc")


def _checkpoints(results):
    return {p.relative_to(results): p.stat().st_mtime_ns for p in (results / "cache").rglob("checkpoint.pt")}


@pytest.fixture(scope="module")
def table4(tmp_path_factory):
    results = tmp_path_factory.mktemp("table4")
    gin.clear_config()
    parse_config(["tables/table4_smoke.gin"], ["Experiment.seeds = 2"])
    started = time.time()
    folder = Experiment().run(results)
    return results, folder, time.time() - started


@pytest.fixture(autouse=True)
def _no_env_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_mlflow_has_a_parent_and_one_finished_child_per_row_and_seed(table4):
    results, _, _ = table4
    client = MlflowClient(ResultsLayout(results).tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("table4").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted((c.data.tags["row"], c.data.tags["seed"]) for c in children) == sorted(
        (row, seed) for row in ("stage1", "stage1, twice the epochs", "stage1+MTP same stage", "stage1+stage2")
        for seed in ("0", "1"))
    for child in children:
        assert child.info.status == "FINISHED"
        assert all(key in child.data.metrics for key in METRICS)
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"table4.md", "table4.csv", "table4.tex", "table4_ablation.png"} <= artifacts


def test_the_table_is_written_with_paper_numbers_and_conventions(table4):
    _, folder, _ = table4
    markdown = (folder / "table4.md").read_text()
    assert "| stage1+stage2 |" in markdown and "68.2" in markdown  # the paper's value beside ours
    assert "(2)" in markdown  # mean ± std over the 2 seeds
    assert "(±" in markdown and "minimal detectable difference" in markdown  # each Δ's MDD over the 2 pairs
    assert "checkpoint: last epoch" in markdown and "synthetic (simulation)" in markdown
    assert (folder / "table4_pretrain_loss.png").stat().st_size > 0


def _convention(folder, name: str) -> str:
    return next(line for line in (folder / "table4.md").read_text().splitlines() if line.startswith(f"- {name}: "))


def test_a_second_invocation_reuses_every_cached_stage_and_reports_what_they_cost(table4):
    results, first, first_time = table4
    before = _checkpoints(results)
    gin.clear_config()
    parse_config(["tables/table4_smoke.gin"], ["Experiment.seeds = 2"])
    second = Experiment().run(results)
    assert _checkpoints(results) == before  # no stage, pretraining or fine-tuning, was trained again
    # The table reports this invocation's wall time and the compute of every step it used, whichever
    # invocation made them: the same as the first's, though this one computed nothing.
    assert "(this invocation)" in _convention(second, "wall_time")
    assert _convention(second, "compute") == _convention(first, "compute")
    assert "every step the table used" in _convention(first, "compute")


def test_an_interrupted_table_continues_where_it_stopped(tmp_path):
    args = [sys.executable, str(REPO_ROOT / "run_bench.py"), "--gin=gin/tables/table4_smoke.gin",
            f"--results_dir={tmp_path}", "--gin_binding=TrainSchedule.epochs = 30"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    process = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 120
    while not list((tmp_path / "cache").rglob("checkpoint.pt")) and time.time() < deadline:
        time.sleep(0.02)
    # Kill as soon as the first epoch checkpoint exists: mid-stage, with at least one epoch to resume from.
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    client = MlflowClient(ResultsLayout(tmp_path).tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("table4").experiment_id])
    assert runs and {r.info.status for r in runs} == {"KILLED"}
    assert not (tmp_path / "table4").exists() or not any((tmp_path / "table4").iterdir())
    first_stage = next((tmp_path / "cache" / "stages").glob("stage1-*/checkpoint.pt"))
    epochs_done = len(torch.load(first_stage, weights_only=True)["history"])
    assert 0 < epochs_done < 30
    again = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(torch.load(first_stage, weights_only=True)["history"]) == 30
    # It resumed: the stage's progress line starts at the first unfinished epoch, not at epoch 1.
    assert "pretrain/stage1: trained epochs 1-30" not in again.stdout
    assert (f"pretrain/stage1: trained epochs {epochs_done + 1}-30 of 30 (resumed from the checkpoint of "
            f"epoch {epochs_done})") in again.stdout
    # A log that is not a terminal gets progress lines, not per-epoch bars full of carriage returns.
    assert "\r" not in again.stdout + again.stderr


def test_a_size_above_what_the_data_has_is_said_once_and_under_the_table(tmp_path, capsys):
    gin.clear_config()
    parse_config(["tables/table4_smoke.gin"], ["FramePreparation.points_per_frame = 1_000_000",
                                               "SegmentationFinetune.num_points = 6_000"])
    folder = Experiment().run(tmp_path)
    out = capsys.readouterr().out
    frames = [line for line in out.splitlines() if line.startswith("note: FramePreparation.points_per_frame")]
    assert len(frames) == 1 and "is more than any frame has (at most 3072): every frame keeps all its points" in frames[0]
    assert sum(line.startswith("note: SegmentationFinetune.num_points = 6000 is more than 1 of the 2 training")
               for line in out.splitlines()) == 1
    sizes = next(line for line in (folder / "table4.md").read_text().splitlines() if line.startswith("- sizes:"))
    assert "points_per_frame = 1000000" in sizes and "SegmentationFinetune.num_points = 6000" in sizes

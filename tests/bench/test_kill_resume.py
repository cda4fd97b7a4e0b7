"""A table killed at several points and resumed each time gives the cells of a straight run (issue 12,
item 1): mid-stage, between a pretraining checkpoint and its fine-tuning, between two fine-tunings, and
after a finished row; by SIGKILL (nothing can clean up: the next invocation ends the stale runs) and
by SIGTERM (the runs end KILLED at once)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import gin
import pytest
import torch
from mlflow.tracking import MlflowClient

from bench import owners
from bench.config import parse_config
from bench.results_layout import ResultsLayout
from bench.runner import Experiment
from tests.conftest import REPO_ROOT

TABLE = "tables/table4_smoke.gin"
# Table 4's two-stage row alone (stage 1 -> stage 2 -> segmentation, detection), with two pretraining
# epochs per stage, so that a kill can land mid-stage.
BINDINGS = ["Experiment.rows = {'stage1+stage2': @ours/FinetuneRow}", "TableSpec.rows = {'stage1+stage2': 'stage1+stage2'}",
            "TableSpec.baseline_row = 'stage1+stage2'", "TrainSchedule.epochs = 2"]


@pytest.fixture(autouse=True)
def _no_env_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _cells(folder) -> dict:
    return {(r["row"], r["seed"]): r["metrics"] for r in json.loads((folder / "metrics.json").read_text())["runs"]}


def _files(folder, pattern: str) -> list:
    return [p for p in folder.glob(pattern) if not p.name.endswith(".meta.json")] if folder.is_dir() else []


def _run_until(results, reached, sig) -> subprocess.CompletedProcess:
    """Run the table into ``results`` and send ``sig`` as soon as ``reached()`` is true."""
    args = [sys.executable, str(REPO_ROOT / "run_bench.py"), f"--gin=gin/{TABLE}", f"--results_dir={results}",
            *(f"--gin_binding={b}" for b in BINDINGS)]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    process = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 240
    while process.poll() is None and not reached() and time.time() < deadline:
        time.sleep(0.005)
    assert process.poll() is None, f"the run ended before the kill point: {process.communicate()[1][-2000:]}"
    process.send_signal(sig)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(args, process.returncode, out, err)


def test_a_table_killed_and_resumed_at_several_points_gives_the_straight_run_s_cells(tmp_path):
    gin.clear_config()
    parse_config([TABLE], BINDINGS)
    straight = _cells(Experiment().run(tmp_path / "straight"))

    results = tmp_path / "killed"
    cache = results / "cache"
    # 1. mid-stage: the first epoch of the first pretraining stage is checkpointed, the second is not
    _run_until(results, lambda: _files(cache / "stages", "*/checkpoint.pt"), signal.SIGKILL)
    (checkpoint,) = _files(cache / "stages", "*/checkpoint.pt")
    assert len(torch.load(checkpoint, weights_only=True)["history"]) == 1
    # 2. between a row's pretraining checkpoints and its fine-tuning: the fine-tuning has started
    _run_until(results, lambda: _files(cache / "finetune", "*.lock"), signal.SIGKILL)
    assert _files(cache / "stages", "*/checkpoint.pt") and not _files(cache / "finetune", "*/checkpoint.pt")
    # 3. between a row's two fine-tunings
    _run_until(results, lambda: _files(cache / "finetune", "*/checkpoint.pt"), signal.SIGKILL)
    assert not _files(cache / "results", "*.json")
    # 4. after a finished row, by SIGTERM: the runs end KILLED now and no results folder is kept
    stopped = _run_until(results, lambda: _files(cache / "results", "*.json"), signal.SIGTERM)
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    # 5. to the end
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    final = subprocess.run([sys.executable, str(REPO_ROOT / "run_bench.py"), f"--gin=gin/{TABLE}",
                            f"--results_dir={results}", *(f"--gin_binding={b}" for b in BINDINGS)],
                           cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]

    (folder,) = [p for p in (results / "table4").iterdir()]
    assert _cells(folder) == straight
    client = MlflowClient(ResultsLayout(results).tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("table4").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.info.status for r in parents) == ["FINISHED", "KILLED", "KILLED", "KILLED", "KILLED"]
    # the SIGKILLed invocations' runs were found RUNNING by the next invocation and marked KILLED
    stale = [r for r in runs if owners.STALE_TAG in r.data.tags]
    assert len({r.data.tags[owners.OWNER_TAG] for r in stale}) == 3
    assert "RUNNING" not in {r.info.status for r in runs}

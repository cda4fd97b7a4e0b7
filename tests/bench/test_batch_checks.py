"""Every training step of a table checked against the world size when the run starts, and each step's world size,
batch per process and learning rate in its run's params."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

import bench.runner  # noqa: F401  registers the Experiment and every component
from bench.config import parse_config
from bench.training_steps import check_batches, training_params, training_steps
from bench.validation import validate_rows
from infra.errors import HarnessError
from tests.bench.test_distributed import REPO_ROOT


def _built(bindings=()):
    from bench.runner import Experiment

    parse_config(["gin/tables/table3_smoke.gin"], list(bindings))
    experiment = Experiment()
    return validate_rows(experiment.rows, experiment.dataset, experiment.train_split, experiment.eval_split)


def test_every_step_of_every_row_is_found_and_checked():
    built = _built(["finetune_det/TrainSchedule.batch_size = 6", "finetune_seg/TrainSchedule.batch_size = 4",
                    "TrainSchedule.batch_size = 4"])
    steps = {name for row in built.values() for name in training_steps(row)}
    assert {"pretrain/stage1", "pretrain/stage2", "finetune/seg", "finetune/det"} <= steps
    check_batches(built, 2)
    with pytest.raises(HarnessError) as error:
        check_batches(built, 4)  # 4 divides the pretraining batch; detection's 6 does not
    message = str(error.value)
    assert "\n" not in message and "finetune/det: TrainSchedule.batch_size = 6" in message and "4 torchrun" in message
    params = training_params(next(row for row in built.values() if "finetune/det" in training_steps(row)), 2)
    assert params["finetune/det/world_size"] == "2" and params["finetune/det/batch_per_rank"] == "3"
    assert float(params["finetune/det/effective_lr"]) > 0


def test_a_gpu_index_under_torchrun_is_refused_before_any_work():
    with pytest.raises(HarnessError, match="'cuda:0' under torchrun"):
        check_batches(_built(["finetune_seg/TrainSchedule.device = 'cuda:0'"]), 2)


def test_a_table_whose_last_step_does_not_split_fails_in_its_first_seconds_under_torchrun(tmp_path):
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("this torch build has no torch.distributed gloo backend")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    clock = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(REPO_ROOT / "run_bench.py"), "--gin=gin/tables/table3_smoke.gin",
                           "--gin_binding=finetune_det/TrainSchedule.batch_size = 3",
                           f"--results_dir={tmp_path / 'out'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - clock
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if "finetune/det: TrainSchedule.batch_size = 3" in line]
    assert lines and "2 torchrun processes" in lines[0]
    assert "pretrain" not in done.stdout and not (tmp_path / "out" / "cache").exists()  # nothing ran
    assert seconds < 60, seconds


def test_several_machines_on_an_embedded_store_on_a_network_filesystem_are_warned(tmp_path, monkeypatch):
    from bench import results_layout

    layout = results_layout.ResultsLayout.at(tmp_path)
    monkeypatch.setattr(results_layout, "is_network_filesystem", lambda path: True)
    warning = layout.store_warning(several_machines=True)
    assert warning.startswith("warning: ") and "\n" not in warning and "MLFLOW_TRACKING_URI" in warning
    assert layout.store_warning(several_machines=False) is None
    monkeypatch.setattr(results_layout, "is_network_filesystem", lambda path: False)
    assert layout.store_warning(several_machines=True) is None

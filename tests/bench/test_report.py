"""bench.report: what a report reads from the tracking store, and the table it renders from that alone."""
from __future__ import annotations

import os
import platform
import shutil
import types

import torch

from bench import mlflow_store, report
from bench.mlflow_store import MlflowStore
from bench.results_layout import ResultsLayout
from bench.tables import TableSpec

SPEC = TableSpec(name="t", rows={"base": "", "mid": "", "full": ""}, baseline_row="base", columns=["d/seg/mIoU"])


def _logged_table(tmp_path) -> tuple[MlflowStore, str]:
    """A parent run with one finished child per row (two seeds of 'base'), curves, and one failed child."""
    store = MlflowStore(ResultsLayout(tmp_path).tracking_uri)
    experiment = store.experiment_id("t", None)
    parent = store.create_run(experiment, "t", {}, None)
    children = [("base", 0, 10.0), ("base", 1, 12.0), ("mid", 0, 11.0), ("full", 0, 14.0)]
    for start, (row, seed, miou) in enumerate(children):
        child = store.create_run(experiment, f"{row} seed={seed}", {mlflow_store.PARENT_RUN_TAG: parent, "row": row,
                                                                     "seed": str(seed)}, 1000 + start)
        series = [("pretrain/s1/loss", 2.0, 100, 0), ("pretrain/s1/loss", 1.0, 200, 1),
                  ("pretrain/s1/loss", 0.5, 300, 1),  # step 1 logged again: the latest value counts
                  ("finetune/det/val_AP25", 5.0 + seed, 100, 0), ("d/seg/mIoU", miou, 400, 0)]
        store.log_batch(child, metrics=series)
        store.set_terminated(child, "FINISHED", 2000 + start)
    failed = store.create_run(experiment, "full seed=1", {mlflow_store.PARENT_RUN_TAG: parent, "row": "full",
                                                           "seed": "1"}, 5000)
    store.log_batch(failed, metrics=[("d/seg/mIoU", 99.0, 400, 0)])
    store.set_terminated(failed, "FAILED", 6000)
    return store, parent


def test_the_inputs_are_the_finished_children_with_their_curves(tmp_path):
    store, parent = _logged_table(tmp_path)

    inputs = report.read_report_inputs(store, SPEC, parent)

    assert [(r["row"], r["seed"], r["metrics"]["d/seg/mIoU"]) for r in inputs.records] == [
        ("base", 0, 10.0), ("base", 1, 12.0), ("mid", 0, 11.0), ("full", 0, 14.0)]  # the failed run is left out
    assert inputs.loss_curves["pretrain"]["base seed=0 s1"] == [(0, 2.0), (1, 0.5)]
    assert set(inputs.loss_curves["pretrain"]) == {"base seed=0 s1", "base seed=1 s1", "mid seed=0 s1", "full seed=0 s1"}
    # Learning curves: the baseline and the last row only.
    assert inputs.ap25_curves == {"base seed=0 det": [(0, 5.0)], "base seed=1 det": [(0, 6.0)],
                                  "full seed=0 det": [(0, 5.0)]}


def test_the_report_renders_from_its_inputs_alone(tmp_path):
    store, parent = _logged_table(tmp_path / "mlflow")
    inputs = report.read_report_inputs(store, SPEC, parent)
    shutil.rmtree(tmp_path / "mlflow")  # nothing is read from the store after the inputs

    rendered = report.render_report(tmp_path / "a", SPEC, inputs, {}, {"profile": "test"})

    assert [p.name for p in rendered] == [
        "t.csv", "t.md", "t.tex", "t_ablation.png", "t_pretrain_loss.png", "t_det_ap25_curve.png"]
    assert all(p.is_file() for p in rendered)
    assert "11.0" in (tmp_path / "a" / "t.md").read_text()  # base: the mean of 10 and 12


def test_the_conventions_name_the_machine_its_float_kernels_and_torch():
    """Cells depend on the CPU's vector extension and the versions: a table says which it was made with."""
    info = types.SimpleNamespace(name="synthetic")
    machine = report.conventions("demo", [0], info, {}, 1.0)["machine"]
    assert torch.backends.cpu.get_cpu_capability() in machine and f"torch {torch.__version__}" in machine
    assert f"{os.cpu_count()} CPU cores" in machine and platform.machine() in machine

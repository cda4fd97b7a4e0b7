"""Ablation plots are written as non-empty PNGs from small inputs, including loss curves read from MLflow."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bench.plots.ablation import plot_ablation, plot_class_iou_vs_frequency, plot_loss_curves
from bench.report import loss_curves_from_mlflow
from bench.tables import TableSpec, build_table

PNG = b"\x89PNG\r\n\x1a\n"
SPEC = TableSpec(name="table4", rows={"stage1": "stage1", "same": "stage1+MTP same stage", "two": "stage1+stage2"},
                 baseline_row="stage1", columns=["synthetic/det/AP25", "synthetic/seg/mIoU"], paper_table="table4",
                 paper_columns={"synthetic/det/AP25": "scannet/det/AP25", "synthetic/seg/mIoU": "s3dis/seg/mIoU"})


def _is_png(path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG


def test_plot_ablation_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    records = [{"row": row, "seed": s, "metrics": {c: 40 + 2 * i + rng.normal() for c in SPEC.columns}}
               for i, row in enumerate(SPEC.rows) for s in range(3)]
    records[-1]["metrics"]["synthetic/seg/mIoU"] = math.nan  # a missing value must not break the figure
    path = plot_ablation(build_table(records, SPEC), SPEC, tmp_path / "fig" / "ablation.png",
                         conventions={"dataset": "synthetic"})
    assert path == tmp_path / "fig" / "ablation.png" and _is_png(path)


def test_plot_class_iou_vs_frequency_writes_a_png(tmp_path):
    frequency = {"wall": 5000, "floor": 4000, "chair": 600, "table": 300, "lamp": 20, "plant": 5}
    per_class = {"without BR": {"wall": 80.0, "floor": 85.0, "chair": 50.0, "table": 40.0, "lamp": 5.0, "plant": math.nan},
                 "with BR": {"wall": 79.0, "floor": 84.0, "chair": 55.0, "table": 46.0, "lamp": 15.0, "plant": 8.0}}
    path = plot_class_iou_vs_frequency(per_class, frequency, tmp_path / "iou.png", "per-class IoU")
    assert _is_png(path)


def test_plot_loss_curves_writes_a_png(tmp_path):
    curves = {"stage1": [(e, 2.0 * 0.7 ** e) for e in range(10)], "stage2": [(e, 0.5 * 0.9 ** e) for e in range(10)],
              "empty": []}
    assert _is_png(plot_loss_curves(curves, tmp_path / "loss.png", "pretraining loss"))


def test_loss_curves_from_mlflow(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("curves", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment, tags={"row": "DD", "seed": "0"}).info.run_id
    for epoch, loss in enumerate([3.0, 2.0, 1.0]):
        client.log_metric(run, "pretrain/stage1/loss", loss, step=epoch)
        client.log_metric(run, "pretrain/stage1/loss_token", loss / 2, step=epoch)
    client.log_metric(run, "pretrain/stage1/loss_last", 1.0)
    client.log_metric(run, "synthetic/det/AP25", 30.0)
    client.set_terminated(run, "FINISHED")
    curves = loss_curves_from_mlflow(uri, [run])
    assert curves == {"DD seed=0 stage1": [(0, 3.0), (1, 2.0), (2, 1.0)]}
    assert _is_png(plot_loss_curves(curves, tmp_path / "loss.png", "from MLflow"))


def test_delta_error_bars_are_the_minimal_detectable_difference():
    from matplotlib.figure import Figure

    from bench.plots.ablation import _delta_panel

    records = [{"row": row, "seed": s, "metrics": {c: 40.0 + (row == "two") * d for c in SPEC.columns}}
               for row in SPEC.rows for s, d in enumerate([1.0, 2.0, 3.0])]
    table = build_table(records, SPEC)
    lines = table[table["column"] == SPEC.columns[0]].set_index("row").loc[["same", "two"]]
    ax = Figure().subplots()
    _delta_panel(ax, lines, "", SPEC.alpha, "ours")
    (segments,) = [c.errorbar.lines[2][0].get_segments() for c in ax.containers if getattr(c, "errorbar", None)]
    # 'two' moved by 1, 2, 3: Δ = 2, MDD = 4.303 / sqrt(3) = 2.484, so its bar spans 2 ± 2.484.
    (_, low), (_, high) = segments[1]
    assert (low, high) == (pytest.approx(2 - 2.48414, abs=1e-4), pytest.approx(2 + 2.48414, abs=1e-4))
    assert segments[0][0][1] == segments[0][1][1] == 0.0  # 'same' equals the baseline on every seed: MDD 0

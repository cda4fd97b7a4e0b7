"""The report of a table invocation: the table built from the MLflow runs, and its plots.

Everything is read back from the tracking store (not from memory), written into the invocation's results
folder, and logged as artifacts by the runner.
"""
from __future__ import annotations

import os
import pathlib
import platform
from collections import defaultdict

import numpy as np
import torch

from bench.plots.ablation import loss_curves_from_mlflow, plot_ablation, plot_class_iou_vs_frequency, plot_loss_curves
from bench.summary import finite_mean
from bench.tables import TableSpec, build_table, load_paper_table, records_from_mlflow, write_table


def conventions(profile: str, seeds: list[int], info, notes: dict[str, str], wall_time_s: float) -> dict:
    """What every table prints under itself: checkpoint rule, seeds, profile, data, teacher, masks, machine."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    pretraining = notes.get("pretraining data", "")
    simulated = info.name == "synthetic" or pretraining.startswith("synthetic/")
    dataset = f"{info.name} (simulation)" if info.name == "synthetic" else info.name
    if pretraining and pretraining.split("/")[0] != info.name:  # e.g. the paper's ScanNet frames for S3DIS
        dataset += f"; pretraining frames: {pretraining}"
    return {
        "checkpoint": "last epoch (no selection on the evaluation split)",
        "seeds": ", ".join(str(s) for s in seeds),
        "profile": profile,
        "dataset": dataset,
        "teacher": notes.get("teacher", "none (no row pretrains)"),
        "masks": notes.get("masks", "none (no row pretrains)"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {device}",
        "wall_time": f"{wall_time_s / 60:.1f} min",
        "simulation": simulated,
    }


def write_report(folder: pathlib.Path, spec: TableSpec, tracking_uri: str, parent_run_id: str,
                 class_counts: dict[str, int], convention: dict) -> list[pathlib.Path]:
    """Table (CSV, Markdown, LaTeX) and plots for one invocation; returns the written paths."""
    records = records_from_mlflow(tracking_uri, parent_run_id)
    paper = load_paper_table(spec.paper_table) if spec.paper_table else None
    table = build_table(records, spec, paper)
    paths = list(write_table(folder, table, spec, convention))
    paths.append(plot_ablation(table, spec, folder / f"{spec.name}_ablation.png", convention))
    per_class = _per_class_iou(records)
    if per_class and class_counts:
        paths.append(plot_class_iou_vs_frequency(per_class, class_counts, folder / f"{spec.name}_class_iou.png",
                                                 f"{spec.name}: per-class IoU vs training frequency", convention))
    run_ids = [r["run_id"] for r in records]
    for stage in ("pretrain", "finetune"):
        curves = loss_curves_from_mlflow(tracking_uri, run_ids, prefix=f"{stage}/")
        if curves:
            paths.append(plot_loss_curves(curves, folder / f"{spec.name}_{stage}_loss.png",
                                          f"{spec.name}: {stage} loss", conventions=convention))
    return paths


def _per_class_iou(records: list[dict]) -> dict[str, dict[str, float]]:
    """Row -> class -> mean IoU over seeds, from ``<dataset>/seg/class/<name>/IoU`` metrics."""
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        for key, value in record["metrics"].items():
            parts = key.split("/")
            if len(parts) == 5 and parts[1:3] == ["seg", "class"] and parts[4] == "IoU":
                values[record["row"]][parts[3]].append(value)
    return {row: {c: finite_mean(v) for c, v in classes.items()} for row, classes in values.items()}


def class_point_counts(scenes, seg_classes: tuple[str, ...]) -> dict[str, int]:
    """Number of labelled training points per segmentation class (the long-tail axis)."""
    counts = np.zeros(len(seg_classes), np.int64)
    for scene in scenes:
        labels = scene.semantic[scene.semantic >= 0]
        counts += np.bincount(labels, minlength=len(seg_classes))
    return {name: int(n) for name, n in zip(seg_classes, counts)}

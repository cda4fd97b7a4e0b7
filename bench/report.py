"""The report of a table invocation: the table built from the MLflow runs, and its plots.

Everything is read back from the tracking store (not from memory), written into the invocation's results
folder, and logged as artifacts by the runner.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import platform
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch

from bench.mlflow_store import as_store
from bench.summary import finite_mean
from bench.table_formats import simulation_label, write_table
from bench.tables import TableSpec, build_table, load_paper_table, records_from_runs
from infra.cached_step import CachedStep
from infra.fingerprint import fingerprint
from infra.io import atomic_write_bytes


def conventions(profile: str, seeds: list[int], info, notes: dict[str, str], wall_time_s: float,
                compute_s: float | None = None) -> dict:
    """What every table prints under itself: checkpoint rule, seeds, profile, data, teacher, masks, machine,
    this invocation's wall time and (``compute_s``) the compute of every step the table used, summed
    over the steps whichever invocation made them (a resumed or cached table still says what it cost)."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    pretraining = notes.get("pretraining data", "")
    simulated = info.name == "synthetic" or pretraining.startswith("synthetic/")
    dataset = f"{info.name} (simulation)" if info.name == "synthetic" else info.name
    if pretraining:  # e.g. the unlabelled synthetic/pretrain rooms, or the paper's ScanNet frames for S3DIS
        dataset += f"; pretraining frames: {pretraining}"
    return {
        "checkpoint": "last epoch (no selection on the evaluation split)",
        "seeds": ", ".join(str(s) for s in seeds) + " (a seed draws the pretraining and fine-tuning randomness: "
                 "initialisation, data order, augmentation, tokens, masks; rows share their draws; protocol "
                 "subsets and the data are fixed)",
        "profile": profile,
        "dataset": dataset,
        "teacher": notes.get("teacher", "none (no row pretrains)"),
        "masks": notes.get("masks", "none (no row pretrains)"),
        **({"fine-tuning": notes["fine-tuning"]} if "fine-tuning" in notes else {}),
        **({"sizes": "; ".join(v for k, v in sorted(notes.items()) if k.startswith("size: "))}
           if any(k.startswith("size: ") for k in notes) else {}),
        "machine": machine_description(device),
        "wall_time": f"{_minutes(wall_time_s)} (this invocation)",
        **({"compute": f"{_minutes(compute_s)} (every step the table used, summed over the steps, "
                       f"whichever invocation made them)"} if compute_s is not None else {}),
        "simulation": simulated,
    }


def machine_description(device: str) -> str:
    """The machine a table was made on, as its conventions state it: architecture, CPU model and cores, the
    vector extension torch's CPU kernels use (float sums, hence cells, depend on it), the GPU, torch's version.
    A table reproduces cell for cell on the same CPU type with the locked versions (README)."""
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (f"{platform.machine()} {model}, {os.cpu_count()} CPU cores, torch CPU kernels "
            f"{torch.backends.cpu.get_cpu_capability()}, {device}, torch {torch.__version__}")


def _minutes(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


@dataclasses.dataclass
class ReportInputs:
    """What a report reads from the tracking store: the records of the finished child runs and the curves it plots."""

    records: list[dict]
    loss_curves: dict[str, dict[str, list[tuple[int, float]]]]  # "pretrain" / "finetune" -> curves
    ap25_curves: dict[str, list[tuple[int, float]]]  # the learning curves, per seed


def read_report_inputs(tracking, spec: TableSpec, parent_run_id: str) -> ReportInputs:
    """Everything ``render_report`` needs from the tracking store, read now (a tracking URI or a store)."""
    store = as_store(tracking)
    runs = store.child_runs(parent_run_id)
    records = records_from_runs(runs)
    run_of = {run["run_id"]: run for run in runs}
    finished = [run_of[r["run_id"]] for r in records]
    loss_curves = {stage: metric_curves(store, finished, prefix=f"{stage}/") for stage in ("pretrain", "finetune")}
    # Learning curves (methods.learning_curve) of the baseline and the last (full-method) row.
    shown = [run_of[r["run_id"]] for r in records if r["row"] in (spec.baseline_row, list(spec.rows)[-1])]
    ap25_curves = metric_curves(store, shown, prefix="finetune/", suffix="/val_AP25")
    return ReportInputs(records, loss_curves, ap25_curves)


def render_report(folder: pathlib.Path, spec: TableSpec, inputs: ReportInputs, class_counts: dict[str, int],
                  convention: dict, figure_cache: pathlib.Path | None = None) -> list[pathlib.Path]:
    """Table (CSV, Markdown, LaTeX) and plots from what ``read_report_inputs`` read; returns the written paths.

    With ``figure_cache``, a figure drawn before from the same inputs is copied instead of drawn again
    (a re-run of a finished table has the same numbers, and drawing cost most of its time).
    """
    records = inputs.records
    paper = load_paper_table(spec.paper_table) if spec.paper_table else None
    table = build_table(records, spec, paper)
    paths = list(write_table(folder, table, spec, convention))
    # The simulation label is all the figures read of the conventions.
    label = {"simulation": bool(simulation_label(convention))}
    paths.append(_figure(figure_cache, folder / f"{spec.name}_ablation.png", "plot_ablation",
                         table=table, spec=spec, conventions=label))
    per_class = _per_class_iou(records)
    if per_class and class_counts:
        paths.append(_figure(figure_cache, folder / f"{spec.name}_class_iou.png", "plot_class_iou_vs_frequency",
                             per_class=per_class, class_frequency=class_counts,
                             title=f"{spec.name}: per-class IoU vs training frequency", conventions=label))
    for stage, curves in inputs.loss_curves.items():
        if curves:
            paths.append(_figure(figure_cache, folder / f"{spec.name}_{stage}_loss.png", "plot_loss_curves",
                                 curves=curves, title=f"{spec.name}: {stage} loss", conventions=label))
    curves = seed_mean_curves(inputs.ap25_curves)
    if curves:
        # A point logged at step e (0-based) was scored after e + 1 epochs.
        curves = {label: [(step + 1, value) for step, value in points] for label, points in curves.items()}
        paths.append(_figure(figure_cache, folder / f"{spec.name}_det_ap25_curve.png", "plot_loss_curves",
                             curves=curves, title=f"{spec.name}: detection AP25 on a fixed val subset",
                             log_y=False, xlabel="epochs trained", conventions=label, ylabel="AP25 (%)"))
    return paths


def seed_mean_curves(curves: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, float]]]:
    """``loss_curves_from_mlflow``'s curves averaged over seeds: ``row seed=s key`` -> ``row key (mean of
    n seeds)``, each step the mean of the seeds that have it."""
    grouped: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    seeds: dict[str, int] = defaultdict(int)
    for label, points in curves.items():
        who, _, key = label.partition(" seed=")
        name = f"{who} {key.partition(' ')[2]}".strip()
        seeds[name] += 1
        for step, value in points:
            grouped[name][step].append(value)
    return {f"{name} (mean of {seeds[name]} seed{'s' if seeds[name] > 1 else ''})":
            [(step, float(np.mean(values))) for step, values in sorted(steps.items())]
            for name, steps in grouped.items()}


def _plots():
    """The plotting module, imported (with matplotlib) only when a figure is really drawn."""
    from bench.plots import ablation

    return ablation


def figure_key(name: str, plot: str, arguments: dict) -> str:
    """The content key of a figure: its file name, the plotting code and every argument of the call."""
    return fingerprint(name, _plot_code_fingerprint(), plot, arguments)


def _figure(cache: pathlib.Path | None, path: pathlib.Path, plot: str, **arguments) -> pathlib.Path:
    """``bench.plots.ablation.<plot>(path=path, **arguments)``, or a copy of the figure drawn before by
    the same call (``figure_key``); a cached figure that fails its checksum is drawn again."""
    if cache is None:
        return getattr(_plots(), plot)(path=path, **arguments)
    step = CachedStep(cache / f"{path.stem}-{figure_key(path.name, plot, arguments)}.png", what="cached figure",
                      redo="drawing it again")
    drawn = step.load()
    if drawn is not None:
        return atomic_write_bytes(path, drawn)
    getattr(_plots(), plot)(path=path, **arguments)
    step.save(path.read_bytes())
    return path


def _plot_code_fingerprint() -> str:
    here = pathlib.Path(__file__).resolve().parent
    return fingerprint([(here / "plots" / "ablation.py").read_bytes()])


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


def loss_curves_from_mlflow(tracking, run_ids: Sequence[str], prefix: str = "pretrain/",
                            suffix: str = "/loss") -> dict[str, list[tuple[int, float]]]:
    """Metric histories of the keys ``prefix...suffix`` of each run, labelled ``row seed=s key``.

    ``tracking`` is a tracking URI or a store (``bench.mlflow_store``). The default keys are each
    stage's total loss per epoch (``pretrain/<stage>/loss``, step = epoch). A step logged twice (a rerun
    into the same run) keeps its latest value.
    """
    store = as_store(tracking)
    runs = [{"run_id": run_id, **data} for run_id, data in zip(run_ids, store.runs_data(run_ids))]
    return metric_curves(store, runs, prefix, suffix)


def metric_curves(store, runs: Sequence[dict], prefix: str = "pretrain/",
                  suffix: str = "/loss") -> dict[str, list[tuple[int, float]]]:
    """``loss_curves_from_mlflow`` of runs already read (dicts with ``run_id``, ``tags`` and ``metrics``, as
    ``MlflowStore.child_runs`` gives them): every history in one call to the store."""
    wanted, labels = [], []
    for run in runs:
        tags = run["tags"]
        who = f"{tags['row']} seed={tags.get('seed', '?')}" if "row" in tags else run["run_id"][:8]
        for key in sorted(run["metrics"]):
            if key.startswith(prefix) and key.endswith(suffix):
                wanted.append((run["run_id"], key))
                labels.append(f"{who} {key.removeprefix(prefix).removesuffix(suffix) or key}")
    curves: dict[str, list[tuple[int, float]]] = {}
    for label, history in zip(labels, store.metric_histories(wanted) if wanted else []):
        latest: dict[int, tuple[int, float]] = {}
        for step, stamp, value in history:
            if step not in latest or stamp >= latest[step][0]:
                latest[step] = (stamp, value)
        curves[label] = [(step, value) for step, (_, value) in sorted(latest.items())]
    return curves

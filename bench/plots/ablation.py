"""Ablation figures: our deltas beside the paper's, per-class IoU against class frequency, loss curves.

Every function draws on a ``matplotlib.figure.Figure`` (no pyplot, no display needed), writes a PNG
atomically and returns its path. ``plot_ablation`` reads the long table of ``bench.tables.build_table``.
"""
from __future__ import annotations

import io
import math
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from bench.table_formats import simulation_label
from bench.tables import TableSpec
from infra.io import atomic_write_bytes

OURS, PAPER = "#2f6db3", "#c9792b"  # ours blue, paper orange, in every figure


def _save(fig: Figure, path: str | os.PathLike, dpi: int = 130) -> pathlib.Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)  # the figures use constrained layout; "tight" drew them twice
    return atomic_write_bytes(path, buffer.getvalue())


def _with_label(title: str, conventions: Mapping[str, object] | None) -> str:
    label = simulation_label(conventions)
    return f"{title}\n{label}" if label and label not in title else title


def plot_ablation(table: pd.DataFrame, spec: TableSpec, path: str | os.PathLike,
                  conventions: Mapping[str, object] | None = None) -> pathlib.Path:
    """One column of panels per metric: top, our mean ± std per row; bottom, Δ vs the baseline row.

    In the bottom panels our Δ (error bar: ± the minimal detectable difference ``mdd`` of the table, by
    default the half-width of the 95 % confidence interval of the mean paired difference; '*' where the
    paired t-test gives p < ``spec.alpha``) stands beside the paper's Δ for the row's counterpart, so the
    direction and ordering of effects can be compared even though absolute values are not comparable.
    """
    alpha = spec.alpha
    rows = list(spec.rows)
    others = [r for r in rows if r != spec.baseline_row]
    fig = Figure(figsize=(max(6.0, 3.4 * len(spec.columns)), 7.0), layout="constrained")
    axes = fig.subplots(2, len(spec.columns), squeeze=False)
    for j, column in enumerate(spec.columns):
        lines = table[table["column"] == column].set_index("row")
        _absolute_panel(axes[0, j], lines.loc[rows], column)
        _delta_panel(axes[1, j], lines.loc[others], spec.paper_columns.get(column, ""), alpha, _mdd_label(spec))
    axes[0, 0].set_ylabel("ours: mean ± std over seeds")
    axes[1, 0].set_ylabel(f"Δ vs '{spec.baseline_row}'")
    handles, labels = axes[1, 0].get_legend_handles_labels()
    handles.append(Line2D([], [], linestyle="none", marker="$*$", markersize=9, color="black"))
    labels.append(f"p < {alpha:g}, paired t-test across seeds")
    # One line fits from three metric panels on; narrower figures cut a one-line legend at both edges.
    fig.legend(handles, labels, loc="outside lower center", ncols=3 if len(spec.columns) > 2 else 1, frameon=False)
    fig.suptitle(_with_label(f"{spec.name}: each row vs the baseline '{spec.baseline_row}'", conventions))
    return _save(fig, path)


def _absolute_panel(ax, lines: pd.DataFrame, column: str) -> None:
    # Bars start at 0 on purpose: the differences are read in the Δ panels below, not from a cut axis.
    x = np.arange(len(lines))
    ax.bar(x, lines["mean"], yerr=np.nan_to_num(lines["std"].to_numpy(dtype=float)), capsize=3, color=OURS)
    ax.set_title(column, fontsize=10)
    ax.set_xticks(x, [f"{row} (n={int(n)})" for row, n in zip(lines.index, lines["n"])],
                  rotation=30, ha="right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def _mdd_label(spec: TableSpec) -> str:
    """Legend entry of our Δ bars: what their error bar, the minimal detectable difference, is."""
    if spec.mdd_power == 0.5:
        return f"ours, bar ± MDD ({100 * (1 - spec.alpha):g} % CI half-width)"
    return f"ours, bar ± MDD (at {100 * spec.mdd_power:g} % power)"


def _delta_panel(ax, lines: pd.DataFrame, paper_column: str, alpha: float, label: str) -> None:
    x = np.arange(len(lines))
    width = 0.38
    # Error bar = MDD; at the default (CI half-width) it crosses 0 where the test cannot call Δ significant.
    mdd = np.nan_to_num(lines["mdd"].to_numpy(dtype=float))
    ours = ax.bar(x - width / 2, lines["delta"], width, yerr=mdd, capsize=3, color=OURS, label=label)
    if lines["paper_delta"].notna().any():
        ax.bar(x + width / 2, lines["paper_delta"], width, color=PAPER, hatch="//", edgecolor="white", label="paper")
    for bar, p, err in zip(ours, lines["p_value"], mdd):
        if math.isfinite(p) and p < alpha:  # above the error bar, so the marker never hides it
            top = bar.get_height()
            ax.annotate("*", (bar.get_x() + bar.get_width() / 2, top + math.copysign(err, top)), ha="center",
                        va="bottom" if top >= 0 else "top", fontsize=12, fontweight="bold")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_title(f"Δ (paper: {paper_column})" if paper_column else "Δ (no paper value)", fontsize=9)
    ax.set_xticks(x, lines.index, rotation=30, ha="right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def plot_class_iou_vs_frequency(per_class: Mapping[str, Mapping[str, float]], class_frequency: Mapping[str, float],
                                path: str | os.PathLike, title: str,
                                conventions: Mapping[str, object] | None = None) -> pathlib.Path:
    """The long-tail view: per-class IoU (y) against class frequency (x, log), one series per row.

    Classes with a NaN IoU (absent from the split) or no frequency are left out of that series. The
    title gains "synthetic benchmark (simulation)" when ``conventions`` say so.
    """
    classes = sorted(class_frequency, key=lambda c: class_frequency[c])
    fig = Figure(figsize=(8.0, 5.0), layout="constrained")
    ax = fig.subplots()
    markers = "osD^vP*X"
    best: dict[str, float] = {}
    for k, (row, ious) in enumerate(per_class.items()):
        pts = [(class_frequency[c], ious[c], c) for c in classes
               if c in ious and ious[c] is not None and math.isfinite(ious[c]) and class_frequency[c] > 0]
        if not pts:
            continue
        x, y, names = zip(*pts)
        ax.plot(x, y, marker=markers[k % len(markers)], linewidth=1.0, alpha=0.85, label=row)
        for c, v in zip(names, y):
            best[c] = max(v, best.get(c, -math.inf))
    for c, v in best.items():  # each class named once, above its best series
        ax.annotate(c, (class_frequency[c], v), xytext=(0, 6), textcoords="offset points", ha="center",
                    fontsize=7, rotation=35, color="0.3")
    ax.set_xscale("log")
    if best:  # room above the highest point for its class name
        ax.set_ylim(0.0, max(best.values()) * 1.08 + 4.0)
    ax.set_xlabel("class frequency in the training split (log scale)")
    ax.set_ylabel("IoU (%)")
    ax.set_title(_with_label(title, conventions))
    ax.grid(alpha=0.3, which="both")
    ax.legend(title="row")
    return _save(fig, path)


def plot_loss_curves(curves: Mapping[str, Sequence[tuple[float, float]]], path: str | os.PathLike, title: str,
                     log_y: bool | None = None, xlabel: str = "epoch",
                     conventions: Mapping[str, object] | None = None, ylabel: str = "loss") -> pathlib.Path:
    """One line per curve (label -> [(step, value)]); log y by default when the values span > 10x.

    The title gains "synthetic benchmark (simulation)" when ``conventions`` say so.
    """
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    values = []
    for label, points in curves.items():
        if not points:
            continue
        steps, ys = zip(*sorted(points))
        ax.plot(steps, ys, marker="." if len(steps) < 40 else None, linewidth=1.4, label=label)
        values += [v for v in ys if math.isfinite(v)]
    positive = [v for v in values if v > 0]
    if log_y is None:
        log_y = len(positive) == len(values) and bool(values) and max(values) > 10 * min(values)
    if log_y:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel + (" (log scale)" if log_y else ""))
    ax.set_title(_with_label(title, conventions))
    ax.grid(alpha=0.3, which="both")
    if curves:
        ax.legend(fontsize=8)
    return _save(fig, path)

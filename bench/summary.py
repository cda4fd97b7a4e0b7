"""The invocation's summary: headline metrics per row as mean +- std over seeds, as a Markdown table.

Headline metrics are the downstream ones (AP25, AP50, mIoU, mAcc) and, for pretraining rows, each
stage's first and last epoch loss.
"""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

MAIN_METRICS = ("AP25", "AP50", "mIoU", "mAcc", "loss_first", "loss_last")


def main_metrics(records: list[dict]) -> dict[tuple[str, str], list[float]]:
    """(row, metric key) -> values over seeds, for the headline metrics (not per class)."""
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for record in records:
        for key, value in record["metrics"].items():
            if "/class/" not in key and key.rsplit("/", 1)[-1] in MAIN_METRICS:
                values[(record["row"], key)].append(value)
    return dict(values)


def finite_mean(values: list[float]) -> float:
    """Mean of the finite values; NaN (without numpy's all-NaN warning) when there are none."""
    finite = [v for v in values if math.isfinite(v)]
    return float(sum(finite) / len(finite)) if finite else float("nan")


def format_cell(values: list[float], digits: int = 1) -> str:
    """``mean +- std (n)``; a single seed shows just the value; NaN shows as n/a, no value as a dash."""
    if not values:
        return "–"
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "n/a"
    if len(values) == 1:
        return f"{finite[0]:.{digits}f}"
    spread = np.std(finite, ddof=1) if len(finite) > 1 else 0.0
    return f"{np.mean(finite):.{digits}f} ± {spread:.{digits}f} ({len(finite)})"


def markdown_table(records: list[dict], dataset: str) -> str:
    """One line per row, one column per headline metric, in a stable order (det before seg)."""
    values = main_metrics(records)
    rows = list(dict.fromkeys(record["row"] for record in records))
    keys = sorted({key for _, key in values}, key=lambda k: (k.split("/")[1:-1], MAIN_METRICS.index(k.rsplit("/", 1)[-1])))
    header = "| row | " + " | ".join(k.removeprefix(f"{dataset}/") for k in keys) + " |"
    lines = [header, "|" + "---|" * (len(keys) + 1)]
    for row in rows:
        cells = (format_cell(values.get((row, k), []), 4 if "loss" in k else 1) for k in keys)
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

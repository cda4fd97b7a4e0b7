"""The invocation's summary: main metrics per row as mean +- std over seeds, as a Markdown table."""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

MAIN_METRICS = ("AP25", "AP50", "mIoU", "mAcc")


def main_metrics(records: list[dict]) -> dict[tuple[str, str], list[float]]:
    """(row, metric key) -> values over seeds, for the headline metrics (not per class)."""
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for record in records:
        for key, value in record["metrics"].items():
            if "/class/" not in key and key.rsplit("/", 1)[-1] in MAIN_METRICS:
                values[(record["row"], key)].append(value)
    return dict(values)


def format_cell(values: list[float]) -> str:
    """``mean +- std (n)``; a single seed shows just the value; NaN shows as n/a."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "n/a"
    if len(values) == 1:
        return f"{finite[0]:.1f}"
    return f"{np.mean(finite):.1f} ± {np.std(finite, ddof=1) if len(finite) > 1 else 0.0:.1f} ({len(finite)})"


def markdown_table(records: list[dict], dataset: str) -> str:
    """One line per row, one column per headline metric, in a stable order (det before seg)."""
    values = main_metrics(records)
    rows = list(dict.fromkeys(record["row"] for record in records))
    keys = sorted({key for _, key in values}, key=lambda k: (k.split("/")[1:-1], MAIN_METRICS.index(k.rsplit("/", 1)[-1])))
    header = "| row | " + " | ".join(k.removeprefix(f"{dataset}/") for k in keys) + " |"
    lines = [header, "|" + "---|" * (len(keys) + 1)]
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(format_cell(values.get((row, k), [])) for k in keys) + " |")
    return "\n".join(lines) + "\n"

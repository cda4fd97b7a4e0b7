"""The summary table formats seeds as mean +- std (n) and keeps the headline metrics."""
from __future__ import annotations

import math

from bench.summary import format_cell, main_metrics, markdown_table


def test_format_cell():
    assert format_cell([41.25]) == "41.2"
    assert format_cell([40.0, 42.0]) == "41.0 ± 1.4 (2)"
    assert format_cell([math.nan]) == "n/a"


def test_markdown_table_keeps_headline_metrics_only():
    records = [{"row": "a", "seed": s, "metrics": {"d/det/AP25": 10.0 + s, "d/seg/mIoU": 5.0,
                                                  "d/det/class/chair/AP25": 1.0, "d/seg/oAcc": 9.0}}
               for s in (0, 1)]
    assert set(main_metrics(records)) == {("a", "d/det/AP25"), ("a", "d/seg/mIoU")}
    table = markdown_table(records, "d")
    assert table.splitlines()[0] == "| row | det/AP25 | seg/mIoU |"
    assert "| a | 10.5 ± 0.7 (2) | 5.0 ± 0.0 (2) |" in table


def test_finite_mean_skips_nan_and_is_quiet_when_all_are_nan(recwarn):
    from bench.summary import finite_mean

    assert finite_mean([1.0, float("nan"), 3.0]) == 2.0
    assert math.isnan(finite_mean([float("nan"), float("nan")])) and math.isnan(finite_mean([]))
    assert not recwarn.list  # numpy's nanmean warns "Mean of empty slice" here

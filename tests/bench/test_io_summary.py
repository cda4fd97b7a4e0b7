"""Atomic writes keep the old file on failure; the summary table formats seeds as mean +- std (n)."""
from __future__ import annotations

import math

import pytest

from bench.errors import HarnessError
from bench.io import atomic_write_json, atomic_write_text, check_writable_dir
from bench.summary import format_cell, main_metrics, markdown_table


def test_atomic_write_replaces_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "a" / "out.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    import os

    path = atomic_write_text(tmp_path / "shared.md", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_failed_write_keeps_the_old_content(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"x": 1.0})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"x": object()})  # not serialisable: fails before anything is written
    assert target.read_text().strip().startswith("{") and '"x": 1.0' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_nan_is_written_as_null(tmp_path):
    atomic_write_json(tmp_path / "m.json", {"ap": [1.0, math.nan]})
    assert "null" in (tmp_path / "m.json").read_text()


def test_check_writable_dir_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(HarnessError, match="not writable"):
        check_writable_dir(blocker / "sub")


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

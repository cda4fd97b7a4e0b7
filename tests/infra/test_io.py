"""Atomic writes keep the old file on failure and leave no temporary files."""
from __future__ import annotations

import math

import pytest

from infra.errors import HarnessError
from infra.io import atomic_write_json, atomic_write_text, check_writable_dir


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

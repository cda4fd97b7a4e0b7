"""Wall-time accounting (exclusive spans, merging, the profile table) and the progress lines."""
from __future__ import annotations

import time

import pytest

from infra import progress, timing


@pytest.fixture(autouse=True)
def _fresh_totals():
    timing.reset()
    yield
    timing.reset()


def test_spans_charge_exclusive_time_to_the_innermost_kind(monkeypatch):
    clock = iter([0.0, 1.0, 3.0, 4.5, 10.0])  # outer opens, inner opens, inner closes, outer closes
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    with timing.span("outer"):
        with timing.span("inner"):
            pass
    totals = timing.totals()
    # outer: [0, 1) and [3, 4.5) = 2.5 s; inner: [1, 3) = 2 s; together the 4.5 s the block took
    assert totals == {"outer": (2.5, 1), "inner": (2.0, 1)}


def test_merge_adds_another_process_and_reset_forgets():
    with timing.span("a"):
        time.sleep(0.01)
    timing.merge({"a": (1.0, 2), "b": (0.5, 1)})
    totals = timing.totals()
    assert totals["a"][1] == 3 and totals["a"][0] > 1.0 and totals["b"] == (0.5, 1)
    timing.reset()
    assert timing.totals() == {}


def test_split_kind():
    assert timing.split_kind("finetune/seg|forward") == ("finetune/seg", "forward")
    assert timing.split_kind("evaluation") == ("evaluation", "")


def test_profile_report_shares_and_phases():
    recorded = {"imports and config": (2.0, 1), "finetune/seg": (1.0, 2), "finetune/seg|data": (1.0, 10),
                "finetune/seg|forward": (3.0, 10), "finetune/seg|backward": (2.0, 10),
                "finetune/seg|optimizer": (1.0, 10)}
    text = timing.profile_report(recorded, wall_seconds=12.0, title="t")
    lines = text.splitlines()
    assert lines[0] == "t"
    assert "wall time 12.0 s; time accounted over all processes 12.0 s" in lines[1]
    seg = next(line for line in lines if line.startswith("finetune/seg (10 steps)"))
    assert seg.split()[-2:] == ["66.7", "%"]  # 1 + 1 + 3 + 2 + 1 = 8 of 12 s
    other = next(line for line in lines if line.startswith("other (not instrumented)"))
    assert other.split()[-3] == "2.0"  # 12 s wall - 10 s in spans
    phases = next(line for line in lines if line.startswith("finetune/seg ") and "(" in line and "steps" not in line)
    assert "3.0 (37.5 %)" in phases and "1.0 (12.5 %)" in phases  # forward, and other = building


def test_profile_report_of_a_parallel_run_excludes_the_parent_waiting():
    recorded = {"waiting for worker processes": (9.0, 3), "worker start-up": (2.0, 2), "evaluation": (6.0, 2)}
    text = timing.profile_report(recorded, wall_seconds=10.0)
    assert "time accounted over all processes 8.0 s (the parent waited 9.0 s" in text
    assert "other (not instrumented)" not in text


@pytest.mark.parametrize("seconds, text", [(3.21, "3.2 s"), (59.94, "59.9 s"), (61, "1:01"), (3725, "1:02:05")])
def test_duration(seconds, text):
    assert progress.duration(seconds) == text


def test_step_lines_name_the_job_and_bars_stay_off_outside_a_terminal(capsys):
    items = [1, 2, 3]
    assert progress.bar(items, desc="x") is items  # pytest's stderr is not a terminal
    with progress.job("DD seed=0"):
        progress.step("pretrain/stage1", "trained epochs 1-8 of 8 in 1.0 s")
    progress.step("scenes synthetic/train", "2 generated in 0.1 s")
    assert capsys.readouterr().out.splitlines() == [
        "[DD seed=0] pretrain/stage1: trained epochs 1-8 of 8 in 1.0 s", "scenes synthetic/train: 2 generated in 0.1 s"]


def test_step_lines_are_printed_by_rank_zero_only(capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    progress.step("evaluation", "done")
    assert capsys.readouterr().out == ""


def test_table_progress_estimates_the_time_left(capsys, monkeypatch):
    now = iter([100.0, 110.0, 130.0, 150.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(now))
    table = progress.TableProgress("table3", total=5, workers=2)
    first = table.finished("none seed=0", 10.0)
    # 4 jobs left, 10 s each on average, 2 at a time
    assert first == "table3: 1/5 rows x seeds done (none seed=0 took 10.0 s), 10.0 s elapsed, about 20.0 s left"
    table.finished("DD seed=0", 30.0)
    table.done = 4
    last = table.finished("x seed=0", 20.0)
    assert last.startswith("table3: 5/5 rows x seeds done") and "left" not in last

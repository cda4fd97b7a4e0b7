"""Worker scheduling and sizing: longest jobs first, shared steps computed once, 'auto' per core."""
from __future__ import annotations

from bench.workers import longest_first, resolve_workers


def test_longest_first_starts_long_jobs_first_and_counts_a_shared_step_once():
    steps = {("none", 0): ["ft-a", "ft-b"],
             ("DD", 0): ["s1", "ft-c", "ft-d"],
             ("DD+MTP", 0): ["s1", "s2", "ft-e", "ft-f"],
             ("other", 0): ["t1", "t2", "ft-g", "ft-h"]}
    order = longest_first([("none", 0), ("DD", 0), ("DD+MTP", 0), ("other", 0), ("plain", 0)], steps)
    # DD+MTP (4 new steps) first, then other (4); DD then has 2 new steps (s1 is DD+MTP's), like none;
    # ties keep the table order; a job that names no steps goes last.
    assert order == [("DD+MTP", 0), ("other", 0), ("none", 0), ("DD", 0), ("plain", 0)]


def test_resolve_workers(monkeypatch):
    monkeypatch.setattr("bench.workers.available_cores", lambda: 8)
    assert resolve_workers("auto", jobs=18, threads=1, accelerator=False, distributed=False) == 8
    assert resolve_workers("auto", jobs=18, threads=2, accelerator=False, distributed=False) == 4
    assert resolve_workers("auto", jobs=3, threads=1, accelerator=False, distributed=False) == 3
    assert resolve_workers("auto", jobs=18, threads=1, accelerator=True, distributed=False) == 1
    assert resolve_workers(4, jobs=18, threads=1, accelerator=True, distributed=False) == 4
    assert resolve_workers(4, jobs=2, threads=1, accelerator=False, distributed=False) == 2
    assert resolve_workers(4, jobs=18, threads=1, accelerator=False, distributed=True) == 1
    assert resolve_workers("auto", jobs=1, threads=1, accelerator=False, distributed=False) == 1

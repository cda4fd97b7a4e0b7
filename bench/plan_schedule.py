"""The wall time of a table's jobs on its worker processes, simulated from each step's estimate.

The runner hands the (row, seed) jobs, longest first, one at a time to whichever worker process is free
(``bench.workers``). A job runs its steps in order; a step another job has made is read from the cache; a
step another process is making is waited for (its file lock); a step made of many files (a split's scenes,
its prepared frames) is shared instead: a process that arrives takes the files not yet claimed, so the two
finish it together. The simulation follows exactly that, step by step, always advancing the process whose
clock is earliest.

An evaluation's cost depends on the process: a segmentation model searches every scene's token neighbours,
unless the process's memo holds them (``methods.downstream.segmentation.EVAL_NEIGHBOURS``, keyed by the
sample, so shared by every model of one seed: the later models of a job, and later jobs of that seed in the
same process). The memo keeps entries until its bytes are used, then keeps no more; each process remembers
which share of each seed's entries it holds.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence


@dataclasses.dataclass
class SimStep:
    """What the simulation needs of a step: its seconds of work left and whether processes share it. An
    evaluation (``memo`` set) costs ``seconds`` with every neighbour search served by the memo, plus
    ``memo_search`` for each of its ``memo_uses`` segmentation models whose searches are not; its entries
    take ``memo_bytes``."""

    seconds: float
    shared: bool = False
    memo: str = ""
    memo_search: float = 0.0
    memo_uses: int = 0
    memo_bytes: float = 0.0


@dataclasses.dataclass
class _Running:
    finish: float
    workers: list[int]
    left: float = 0.0  # shared steps: work left at ``since``
    since: float = 0.0


def simulate(jobs: Sequence[tuple], job_steps: Mapping[tuple, Sequence[str]], steps: Mapping[str, SimStep],
             workers: int, start: float = 0.0, memo_capacity: float = 0.0) -> tuple[float, dict, dict[str, float]]:
    """(when the last job ends, job -> (start, end), evaluation step -> the seconds it took) for ``jobs``
    handed out in order to ``workers`` processes that are ready at ``start`` seconds, each with a neighbour
    memo of ``memo_capacity`` bytes."""
    clocks = [start] * workers
    current: list[list[str] | None] = [None] * workers
    job_of: list[tuple | None] = [None] * workers
    pending = list(jobs)
    memos: list[dict[str, float]] = [{} for _ in range(workers)]  # memo key -> share of its entries kept
    used = [0.0] * workers
    running: dict[str, _Running] = {}
    spans: dict[tuple, tuple[float, float]] = {}
    charged: dict[str, float] = {}
    while True:
        active = [w for w in range(workers) if current[w] is not None or pending]
        if not active:
            break
        w = min(active, key=lambda i: (clocks[i], i))
        if current[w] is None:
            job_of[w] = pending.pop(0)
            current[w] = list(job_steps[job_of[w]])
            spans[job_of[w]] = (clocks[w], clocks[w])
        if not current[w]:
            spans[job_of[w]] = (spans[job_of[w]][0], clocks[w])
            current[w] = None
            continue
        key = current[w].pop(0)
        step, now = steps[key], clocks[w]
        if step.memo:  # a job's own step: never shared with another process
            before = memos[w].get(step.memo, 0.0)
            if step.memo not in memos[w]:  # the first model's searches fill the memo while it has room
                room = max(0.0, memo_capacity - used[w])
                memos[w][step.memo] = min(1.0, room / step.memo_bytes) if step.memo_bytes > 0 else 1.0
                used[w] += memos[w][step.memo] * step.memo_bytes
            after = memos[w][step.memo]
            misses = (1.0 - before) + (step.memo_uses - 1) * (1.0 - after) if step.memo_uses else 0.0
            charged[key] = step.seconds + misses * step.memo_search
            clocks[w] = now + charged[key]
            continue
        found = running.get(key)
        if found is None:
            running[key] = _Running(now + step.seconds, [w], step.seconds, now)
            clocks[w] = now + step.seconds
        elif found.finish <= now:
            continue  # made by another process: read from the cache
        elif step.shared:  # take the files not yet claimed: the work left is split between the processes
            found.left -= (now - found.since) * len(found.workers)
            found.since = now
            found.workers.append(w)
            found.finish = now + max(0.0, found.left) / len(found.workers)
            for other in found.workers:
                clocks[other] = found.finish
        else:
            clocks[w] = found.finish  # wait on its lock, then read it
    return max(clocks + [start]), spans, charged

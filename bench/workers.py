"""Rows and seeds run in parallel worker processes, one per free core (``Experiment.workers``).

Small models on a few CPU cores run fastest with one torch thread per process and one process per
core: a second thread speeds a demo-sized step up by a fifth, a second process doubles the throughput.
Each worker is a fresh (spawned) interpreter that calls the start function its pool was given once (the
runner's parses the parent's whole gin config and builds the same ``Experiment``) and then runs the jobs
it is handed with the job function that start returned; the steps of a job meet the other workers' only through
the on-disk caches, where per-step file locks (``infra.locks``) make one process compute a shared step
while the others wait for it. A step's randomness depends only on its row's seed (``infra.seeding``)
and every process uses the same number of torch threads, so a parallel run gives the same cells as a
sequential one. Workers talk to no tracking store: each job comes back as a ``JobOutcome`` (metrics,
recorded curves, notes, timings) that the parent writes to MLflow.
"""
from __future__ import annotations

import dataclasses
import gc
import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence

from bench.tracking import RecordingRun
from infra import timing
from infra.errors import HarnessError

_run_job = None  # the worker process's job function, made once by _start


@dataclasses.dataclass
class JobOutcome:
    """What one row and seed produced, wherever it ran."""

    row: str
    seed: int
    recording: RecordingRun
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    notes: dict[str, str] = dataclasses.field(default_factory=dict)
    start_time_ms: int = 0
    end_time_ms: int = 0
    seconds: float = 0.0
    timings: dict[str, tuple[float, int]] = dataclasses.field(default_factory=dict)
    steps: dict[str, float] = dataclasses.field(default_factory=dict)  # cached steps used -> compute seconds
    error_type: str = ""  # set when the job failed: its exception's class name,
    error: str = ""  # its message, first line
    error_traceback: str = ""  # and its formatted traceback
    harness_error: bool = False  # a user-input error (one line for the CLI), not a bug

    @property
    def label(self) -> str:
        return f"{self.row} seed={self.seed}"


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def resolve_workers(setting: int | str, jobs: int, threads: int, accelerator: bool, distributed: bool) -> int:
    """How many worker processes to use: ``setting`` if a number; for ``'auto'``, one per ``threads``
    free cores, at most one per job, and none (1 = run in this process) on a GPU or under torchrun."""
    if distributed or jobs <= 1:
        return 1
    if setting == "auto":
        return 1 if accelerator else max(1, min(jobs, available_cores() // max(1, threads)))
    return max(1, min(int(setting), jobs))


def _start(start: Callable[..., Callable[..., JobOutcome]], start_args: tuple) -> None:
    """Worker initialiser: ``start(*start_args)`` gives the function that runs this worker's jobs."""
    started = time.perf_counter()
    # Ctrl-C reaches the whole process group; the parent handles it and terminates the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    global _run_job
    _run_job = start(*start_args)
    timing.merge({"worker start-up": (time.perf_counter() - started, 1)})


def _run(job: tuple) -> JobOutcome:
    """Run one job ``(row, seed, *rest)`` in this worker; failures come back as data, never as a pickled
    exception."""
    row, seed = job[:2]
    try:
        outcome = _run_job(*job)
    except BaseException as e:  # noqa: BLE001  reported to the parent, which decides what to raise
        outcome = JobOutcome(row, seed, RecordingRun(f"{row} seed={seed}"), error_type=type(e).__name__,
                             error=(str(e).strip().splitlines() or [""])[0],
                             error_traceback=traceback.format_exc(), harness_error=isinstance(e, HarnessError))
    outcome.timings = timing.totals()
    timing.reset()  # the next job reports only its own time
    return outcome


def longest_first(jobs: Sequence[tuple[str, int]], steps: Mapping[tuple[str, int], Sequence[str]]) -> list:
    """The order to hand ``jobs`` to workers: repeatedly the job with the most steps that no job placed
    before it computes (ties: the given order), so long jobs start first and a step shared by two jobs
    is computed by the first while the second mostly finds it done. ``steps`` maps a job to the content
    keys of its steps; a job without any goes last."""
    claimed: set[str] = set()
    left = list(jobs)
    order = []
    while left:
        best = max(range(len(left)), key=lambda i: (len(set(steps.get(left[i], ())) - claimed), -i))
        job = left.pop(best)
        claimed |= set(steps.get(job, ()))
        order.append(job)
    return order


class WorkerPool:
    """``workers`` spawned processes, started at once so that their start-up (imports, ``start``) overlaps
    the parent's set-up; jobs are handed to them by ``run``. Leaving the ``with`` block (an error, Ctrl-C)
    terminates them; the steps they finished stay cached.

    ``start(*start_args)`` runs once in each worker and returns the function that runs a job; both must
    pickle (module-level functions, plain arguments), since the workers are fresh interpreters.
    """

    def __init__(self, workers: int, start: Callable[..., Callable[..., JobOutcome]], start_args: tuple):
        context = multiprocessing.get_context("spawn")  # fork would copy the parent's torch thread pools
        self.workers = workers
        self._pool = context.Pool(workers, initializer=_start, initargs=(start, start_args))

    def run(self, jobs: Sequence[tuple]) -> Iterator[JobOutcome]:
        """Run ``jobs`` ((row, seed, ...) each), handed out in the given order one at a time to whichever
        worker is free; yields their outcomes as they finish."""
        yield from self._pool.imap_unordered(_run, jobs, chunksize=1)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self._pool.terminate()
        self._pool.join()
        # Dropping the pool now frees its queues' semaphores (their finalizers unregister them), so an
        # exit that skips the interpreter's teardown (run_bench.py) leaves nothing for the resource tracker.
        self._pool = None
        gc.collect()

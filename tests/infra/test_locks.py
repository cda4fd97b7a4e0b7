"""Step locks: a second process waits for (or skips) a step another process holds."""
from __future__ import annotations

import multiprocessing
import time

from infra import timing
from infra.locks import WAITING, step_lock, try_step_lock


def _hold(path: str, ready, release) -> None:
    with step_lock(path):
        ready.set()
        release.wait(30)


def test_try_lock_reports_a_step_held_by_another_process_and_step_lock_waits(tmp_path):
    path = str(tmp_path / "locks" / "step.lock")
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(path, ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with try_step_lock(path) as held:
            assert not held
        timing.reset()
        started = time.perf_counter()
        context_release = context.Process(target=_release_later, args=(release,))
        context_release.start()
        with step_lock(path):
            waited = time.perf_counter() - started
        context_release.join()
        assert waited >= 0.2
        assert timing.totals()[WAITING][0] >= 0.2  # the wait shows in the run's profile
    finally:
        release.set()
        holder.join(30)
    with try_step_lock(path) as held:  # released when the holder ended
        assert held


def _release_later(release) -> None:
    time.sleep(0.3)
    release.set()

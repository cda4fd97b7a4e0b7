"""Advisory file locks on cache steps, so that concurrent processes never compute the same step twice.

Parallel workers of one table, and two invocations sharing a results folder, meet in the on-disk
caches. Before computing a step a process locks ``<step>.lock`` (``fcntl.flock``, released by the OS
when the process dies, so a crash never leaves a step locked); a process that finds the lock taken
waits, then finds the step done and reads it. The waiting time is charged to ``waiting for another
process`` in the run's profile.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Iterator

from infra import timing

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; each process then computes on its own (still correct)
    fcntl = None

WAITING = "waiting for another process"


def _lock_file(path: pathlib.Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)


@contextlib.contextmanager
def step_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the block, waiting for another holder to let go."""
    path = pathlib.Path(path)
    if fcntl is None:
        yield
        return
    fd = _lock_file(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with timing.span(WAITING):
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def try_step_lock(path: str | os.PathLike) -> Iterator[bool]:
    """Try to lock ``path`` without waiting: the block gets True if this process holds it, else False
    (another process is computing that step; come back to it later)."""
    path = pathlib.Path(path)
    if fcntl is None:
        yield True
        return
    fd = _lock_file(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            held = False
        yield held
    finally:
        os.close(fd)

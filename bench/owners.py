"""Who owns the MLflow runs of a results folder, so that a killed invocation's runs do not stay RUNNING.

``kill -9`` (or a crashed machine) ends an invocation before it can mark its runs KILLED and remove its
staging folder (``.<stamp>.partial``). Every invocation therefore holds an exclusive ``flock`` on its own
lock file, ``<results_dir>/locks/owners/<host>-<pid>-<ms>.lock``, while it runs, and tags every run it
opens with that file, its host and pid, and the results folder. The next invocation into the same folder
(``sweep``) looks at the RUNNING runs tagged with it: a run whose owner's lock can be taken (or, on the
same host, whose owner's pid is gone and whose lock file is gone too) has lost its process; it is marked
KILLED with a ``sam3d.stale`` tag saying so, and its staging folder is removed. The runs of an invocation
that is still running are never touched: its lock is held (the OS drops it only when the process ends).
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import socket
import time

from bench.results_layout import ResultsLayout

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; stale runs are then left as they are
    fcntl = None

OWNER_TAG = "sam3d.owner"  # "<host>:<pid>"
LOCK_TAG = "sam3d.owner_lock"  # the lock file the owner holds while it runs
RESULTS_TAG = "sam3d.results_dir"
STAGING_TAG = "sam3d.staging"  # the parent run's staging folder
STALE_TAG = "sam3d.stale"


class Owner:
    """This invocation as the owner of its runs: holds its lock file from ``acquire`` to ``release``."""

    def __init__(self, layout: ResultsLayout):
        self.results_dir = layout.root.resolve()
        self.host, self.pid = socket.gethostname(), os.getpid()
        name = f"{self.host}-{self.pid}-{int(time.time() * 1000)}.lock"
        self.lock = layout.owner_locks.resolve() / name
        self._fd: int | None = None

    def acquire(self) -> Owner:
        self.lock.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def release(self) -> None:
        """Give the lock up and remove its file (call once every run is terminated and flushed)."""
        if self._fd is not None:
            self.lock.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Owner:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def tags(self) -> dict[str, str]:
        """The tags every run of this invocation carries."""
        return {OWNER_TAG: f"{self.host}:{self.pid}", LOCK_TAG: str(self.lock), RESULTS_TAG: str(self.results_dir)}


def owner_is_gone(tags: dict[str, str]) -> bool:
    """Whether the process that opened a run with these tags has ended (module docstring)."""
    lock = tags.get(LOCK_TAG)
    if not lock or fcntl is None:
        return False
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        host, _, pid = tags.get(OWNER_TAG, "").rpartition(":")
        return host == socket.gethostname() and pid.isdigit() and not _alive(int(pid))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def sweep(store, me: Owner) -> list[str]:
    """Mark KILLED the RUNNING runs of ``me``'s results folder whose owner is gone, remove their staging
    folders and the owners' lock files; returns one line per owner swept."""
    results_dir = me.results_dir
    stale: dict[str, list[dict]] = {}
    for run in store.running_runs():
        tags = run["tags"]
        if tags.get(RESULTS_TAG) == str(results_dir) and tags.get(LOCK_TAG) != str(me.lock) and owner_is_gone(tags):
            stale.setdefault(tags.get(OWNER_TAG, "?"), []).append(run)
    lines = []
    note = f"RUNNING, but the process that opened it had ended; marked KILLED by {me.host}:{me.pid} at " \
           f"{time.strftime('%Y-%m-%d %H:%M:%S')}"
    for owner, runs in stale.items():
        removed = []
        for run in runs:
            if store.run_status(run["run_id"]) != "RUNNING":  # ended meanwhile (its owner flushed, then left)
                continue
            store.log_batch(run["run_id"], tags=[(STALE_TAG, note)])
            store.set_terminated(run["run_id"], "KILLED")
            staging = pathlib.Path(run["tags"].get(STAGING_TAG, ""))
            if staging.name.endswith(".partial") and results_dir in staging.parents and staging.is_dir():
                shutil.rmtree(staging, ignore_errors=True)
                removed.append(staging.name)
        with contextlib.suppress(OSError):
            pathlib.Path(runs[0]["tags"][LOCK_TAG]).unlink()
        lines.append(f"note: {len(runs)} MLflow run{'s' if len(runs) > 1 else ''} of an invocation that was killed "
                     f"({owner}) were still RUNNING; marked KILLED"
                     + (f", removed its partial results folder {', '.join(removed)}" if removed else ""))
    return lines

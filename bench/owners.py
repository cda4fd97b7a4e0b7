"""Who owns the MLflow runs of a results folder, so that a killed invocation's runs do not stay RUNNING.

``kill -9`` (or a crashed machine) ends an invocation before it can mark its runs KILLED and remove its
staging folder (``.<stamp>.partial``). Every invocation therefore keeps an owner file,
``<results_dir>/locks/owners/<host>-<pid>-<ms>.lock``, while it runs: a lease file (``infra.leases``) naming
its host, pid, boot id and pid namespace, whose time it renews while it runs; it also holds a ``flock`` on it
where flock works (older versions of the harness judge owners by that lock alone). Every run it opens is
tagged with that file, its host and pid, its identity, and the results folder.

The next invocation into the same folder (``sweep``) looks at the RUNNING runs tagged with it, and marks a
run KILLED (with a ``sam3d.stale`` tag saying why) and removes its staging folder only when the run's owner is
known to be gone (``leases.stale_reason``): a process of this machine that has ended, a machine that has
restarted since, or an owner file not renewed for longer than its lease (another machine's owner). An owner
whose flock is held runs. A live owner on another machine, whose locks this machine may not see, keeps its
runs. A run whose owner file is gone (let go, or swept) is swept only if its owner was a process of this
machine that has ended (its ``sam3d.owner_id`` tag says which). Owner files of an older version (empty, no
identity) are judged by their flock where flock reaches every machine, else by their ``<host>:<pid>`` tag on
this machine, else taken as alive.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import time

from bench.results_layout import ResultsLayout
from infra import leases, mounts
from infra.errors import HarnessError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; owners are judged by their lease files alone
    fcntl = None

OWNER_TAG = "sam3d.owner"  # "<host>:<pid>"
LOCK_TAG = "sam3d.owner_lock"  # the owner file, renewed while its owner runs
HOLDER_TAG = "sam3d.owner_id"  # the owner's identity (``leases.Holder``), for when its file is gone
RESULTS_TAG = "sam3d.results_dir"
STAGING_TAG = "sam3d.staging"  # the parent run's staging folder
STALE_TAG = "sam3d.stale"


class Owner:
    """This invocation as the owner of its runs: keeps its owner file from ``acquire`` to ``release``."""

    def __init__(self, layout: ResultsLayout):
        self.results_dir = layout.root.resolve()
        self.holder = leases.me()
        self.host, self.pid = self.holder.host, self.holder.pid
        name = f"{self.host}-{self.pid}-{int(time.time() * 1000)}.lock"
        self.lock = layout.owner_locks.resolve() / name
        self._fd: int | None = None

    def acquire(self) -> Owner:
        try:
            self.lock.parent.mkdir(parents=True, exist_ok=True)
            if not leases.take(self.lock, self.holder):
                raise FileExistsError(f"{self.lock.name} is there already")
            self._fd = os.open(self.lock, os.O_RDWR)  # writable: NFS grants an exclusive flock on no other
        except OSError as e:
            raise HarnessError(f"{self.lock}: cannot make this invocation's owner file "
                               f"({e.strerror or e}); the results folder must be writable") from None
        if fcntl is not None:
            with contextlib.suppress(OSError):  # where flock is unsupported, the lease alone says this runs
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return self

    def release(self) -> None:
        """Stop renewing the owner file and remove it (call once every run is terminated and flushed)."""
        if self._fd is not None:
            leases.let_go(self.lock, self.holder)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Owner:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def tags(self) -> dict[str, str]:
        """The tags every run of this invocation carries."""
        return {OWNER_TAG: f"{self.host}:{self.pid}", LOCK_TAG: str(self.lock), HOLDER_TAG: self.holder.to_text(),
                RESULTS_TAG: str(self.results_dir)}


def why_owner_is_gone(tags: dict[str, str]) -> str | None:
    """Why the process that opened a run with these tags is known to have ended (module docstring); None
    while it may still run."""
    lock = tags.get(LOCK_TAG)
    if not lock:
        return None
    try:
        found = leases.read(lock)
    except OSError:
        return None
    if found is None:  # its owner let go (after ending its runs) or was swept: only this machine knows more
        holder = leases.Holder.from_text(tags.get(HOLDER_TAG))
        if holder is None:
            return _old_owner_tag_says_gone(tags)
        ended = leases.ended_here(holder.host, holder.pid, holder.boot_id, holder.pid_ns, holder.started)
        return f"process {holder.pid} on {holder.host} has ended" if ended else None
    flock_held = _flock_is_held(lock)
    if flock_held:
        return None
    if found.holder is not None or tags.get(HOLDER_TAG):  # an unreadable new-format file expires with its lease
        return leases.stale_reason(found)
    # an older version's empty owner file: its free flock is the word only where flock reaches every machine
    if flock_held is False and mounts.flock_is_coherent(mounts.mount_of(lock)):
        return "its owner file's lock was free"
    return _old_owner_tag_says_gone(tags)


def owner_is_gone(tags: dict[str, str]) -> bool:
    """Whether the process that opened a run with these tags is known to have ended (module docstring)."""
    return why_owner_is_gone(tags) is not None


def _flock_is_held(lock: str) -> bool | None:
    """Whether another process holds a flock on ``lock``: True, False, or None where that cannot be told
    (no fcntl, flock unsupported there, the file not ours to open for writing)."""
    if fcntl is None:
        return None
    try:
        fd = os.open(lock, os.O_RDWR)  # NFS grants an exclusive flock on a writable file only
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)


def _old_owner_tag_says_gone(tags: dict[str, str]) -> str | None:
    """An owner known only by its ``<host>:<pid>`` tag: gone when it was this host's and its pid is dead."""
    host, _, pid = tags.get(OWNER_TAG, "").rpartition(":")
    return f"process {pid} on {host} has ended" if pid.isdigit() and leases.ended_here(host, int(pid)) else None


def sweep(store, me: Owner) -> list[str]:
    """Mark KILLED the RUNNING runs of ``me``'s results folder whose owner is known to be gone, remove their
    staging folders and the owners' files; returns one line per owner swept."""
    results_dir = me.results_dir
    verdicts: dict[str, str | None] = {}  # owner file -> why its owner is gone (None: it may run)
    stale: dict[str, list[dict]] = {}
    for run in store.running_runs():
        tags = run["tags"]
        lock = tags.get(LOCK_TAG, "")
        if tags.get(RESULTS_TAG) != str(results_dir) or lock == str(me.lock):
            continue
        if lock not in verdicts:
            verdicts[lock] = why_owner_is_gone(tags)
        if verdicts[lock] is not None:
            stale.setdefault(lock, []).append(run)
    lines = []
    for lock, runs in stale.items():
        why, owner = verdicts[lock], runs[0]["tags"].get(OWNER_TAG, "?")
        note = (f"RUNNING, but the process that opened it had ended ({why}); marked KILLED by {me.host}:{me.pid} "
                f"at {time.strftime('%Y-%m-%d %H:%M:%S')}")
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
            pathlib.Path(lock).unlink()
        lines.append(f"note: {len(runs)} MLflow run{'s' if len(runs) > 1 else ''} of an invocation that was killed "
                     f"({owner}: {why}) were still RUNNING; marked KILLED"
                     + (f", removed its partial results folder {', '.join(removed)}" if removed else ""))
    return lines

"""Advisory file locks on cache steps, so that concurrent processes never compute the same step twice.

Parallel workers of one table, and two invocations sharing a results folder (from one machine or several),
meet in the on-disk caches. Before computing a step a process locks ``<step>.lock``; a process that finds
the lock taken waits, then finds the step done and reads it. The waiting time is charged to ``waiting for
another process`` in the run's profile.

Two kinds of lock, chosen per mount (``infra.mounts``):

* ``flock`` where it excludes every machine that can open the file (local disks; NFS, Lustre ``-o flock``,
  CephFS, SMB as ``mounts.flock_is_coherent`` says). The OS releases it when its process dies, so a crash
  never leaves a step locked.
* a lease file ``<step>.lock.lease`` (``infra.leases``: made with O_EXCL, naming its holder's host, pid and
  boot id, its time renewed while the holder runs) where flock fails (ENOSYS, EOPNOTSUPP, ENOLCK: Lustre
  mounted without ``flock``, NFS without a lock daemon) or gives node-local locks (Lustre ``localflock``,
  NFS ``local_lock=flock``, GPFS, BeeGFS, FUSE mounts). A lease file whose holder is known to be gone
  (``leases.stale_reason``: a dead process of this machine, or an expired lease) is taken over.

``SAM3D_LOCKS=flock`` or ``=lease`` overrides the choice for every mount. Where neither kind works, locking
stops with one line naming the mount and what the results folder needs.
"""
from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import time
from collections.abc import Iterator

from infra import leases, mounts, timing
from infra.errors import HarnessError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; each process then computes on its own (still correct)
    fcntl = None

WAITING = "waiting for another process"
KIND_ENV = "SAM3D_LOCKS"
LEASE_SUFFIX = ".lease"
FLOCK_UNSUPPORTED = frozenset({errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOLCK})
POLL_SECONDS = (0.02, 1.0)  # a waiter looks again after 20 ms, doubling up to 1 s

_kind_of_folder: dict[str, str] = {}  # lock folder -> "flock" | "lease" | "none"
_why_lease: dict[str, str] = {}  # mount point -> why its locks are lease files (for the one-line error)


@contextlib.contextmanager
def step_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the block, waiting for another holder to let go."""
    with _lock(pathlib.Path(path), wait=True):
        yield


@contextlib.contextmanager
def try_step_lock(path: str | os.PathLike) -> Iterator[bool]:
    """Try to lock ``path`` without waiting: the block gets True if this process holds it, else False
    (another process is computing that step; come back to it later)."""
    with _lock(pathlib.Path(path), wait=False) as held:
        yield held


def lock_kind(folder: str | os.PathLike) -> str:
    """The kind of lock taken in ``folder``: 'flock', 'lease' (module docstring), or 'none' (no fcntl)."""
    folder = str(folder)
    kind = _kind_of_folder.get(folder)
    if kind is None:
        kind = _choose_kind(folder)
        _kind_of_folder[folder] = kind
    return kind


@contextlib.contextmanager
def _lock(path: pathlib.Path, wait: bool) -> Iterator[bool]:
    kind = lock_kind(path.parent)
    if kind == "none":
        yield True
        return
    if kind == "flock":
        fd = _lock_file(path)
        try:
            held = _flock(fd, wait)
        except BaseException as e:
            os.close(fd)
            if not (isinstance(e, OSError) and e.errno in FLOCK_UNSUPPORTED):
                raise
            _flock_failed(path.parent, e)
        else:
            try:
                yield held
            finally:
                os.close(fd)  # closing the descriptor releases the lock
            return
    lease = path.with_name(path.name + LEASE_SUFFIX)
    holder = _take_lease(lease, wait)
    try:
        yield holder is not None
    finally:
        if holder is not None:
            leases.let_go(lease, holder)


def _lock_file(path: pathlib.Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)


def _flock(fd: int, wait: bool) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        if not wait:
            return False
    with timing.span(WAITING):
        fcntl.flock(fd, fcntl.LOCK_EX)
    return True


def _choose_kind(folder: str) -> str:
    forced = os.environ.get(KIND_ENV, "").strip().lower()
    mount = mounts.mount_of(folder)
    if forced == "lease":
        _why_lease.setdefault(mount.point, f"is set to lease locks ({KIND_ENV}=lease)")
        return "lease"
    if forced and forced != "flock":
        raise HarnessError(f"{KIND_ENV}={forced!r}: expected 'flock' or 'lease' (or unset: chosen per mount)")
    if fcntl is None:
        return "none"
    if forced == "flock":
        return "flock"
    if mount.point in _why_lease:
        return "lease"
    if not mounts.flock_is_coherent(mount):
        _why_lease[mount.point] = "gives flock locks that other machines do not see"
        return "lease"
    return "flock"


def _flock_failed(folder: pathlib.Path, error: OSError) -> None:
    """flock is unsupported on ``folder``'s mount: this process uses lease files there from now on."""
    mount = mounts.mount_of(folder)
    _why_lease[mount.point] = f"does not support flock ({errno.errorcode.get(error.errno, error.errno)})"
    for known in [f for f in _kind_of_folder if mounts.mount_of(f).point == mount.point]:
        _kind_of_folder[known] = "lease"
    _kind_of_folder[str(folder)] = "lease"


def _take_lease(lease: pathlib.Path, wait: bool) -> leases.Holder | None:
    """Make the lease file ``lease`` (taking over a stale one); the holder written in it, or None when another
    process holds it and ``wait`` is False."""
    holder = leases.me()
    try:
        lease.parent.mkdir(parents=True, exist_ok=True)
        if _claim(lease, holder):
            return holder
        if not wait:
            return None
        delay = POLL_SECONDS[0]
        with timing.span(WAITING):
            while not _claim(lease, holder):
                time.sleep(delay)
                delay = min(2 * delay, POLL_SECONDS[1])
        return holder
    except OSError as e:
        raise HarnessError(_no_lock_line(lease, e)) from None


def _claim(lease: pathlib.Path, holder: leases.Holder) -> bool:
    """One try: make the file; else, if its holder is known to be gone, break it and try once more."""
    if leases.take(lease, holder):
        return True
    found = leases.read(lease)
    if found is None or leases.stale_reason(found):
        if found is not None:
            leases.break_stale(lease, found)
        return leases.take(lease, holder)
    return False


def _no_lock_line(lease: pathlib.Path, error: OSError) -> str:
    mount = mounts.mount_of(lease.parent)
    why = _why_lease.get(mount.point, "needs lease files")
    return (f"cannot lock {lease.with_suffix('')}: {mount.point} ({mount.fstype}) {why}, and a lock file could not "
            f"be made there ({error.strerror or error}); put --results_dir on a filesystem with flock (Lustre: "
            "mount -o flock) or with exclusive create (O_EXCL) and settable file times")

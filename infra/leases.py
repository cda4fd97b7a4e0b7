"""Lease files: a file that names the process holding it and stays fresh while that process lives.

A lease file is made with ``O_CREAT | O_EXCL`` (so of two processes making it, one does), and holds one JSON
line naming its holder: host, pid, boot id (``/proc/sys/kernel/random/boot_id``, new at every start of the
machine), pid namespace and the process's start time (which tell a pid of this machine apart from one of
another container, or from a reused pid), the lease length, and a token naming this holding alone. The
file's modification time is the lease: a daemon thread of the holder sets it to now every ``lease / 6``
seconds, on the file it made only (opened and checked against its token, so a file made since by another
process is never renewed).

The stale rule (``stale_reason``), which decides whether a file's holder is known to be gone:

* this machine in this boot (same host and boot id) and the same pid namespace: gone when its pid is dead
  (or a zombie, or reused by a process that started later); a live process is never judged by its lease
  (on Windows, where a pid cannot be checked, the lease decides);
* the same host with another boot id, and a lease last renewed before this machine started: the machine has
  restarted since, so its processes are gone (a lease renewed since means another machine with the same name);
* otherwise (another machine or container): gone only once its lease has expired, i.e. the file has not been
  renewed for longer than the lease the holder wrote in it (``LEASE_SECONDS``, or ``SAM3D_LOCK_LEASE_S``).
  This compares the holder's clock with ours: the lease is long next to the clock skew of synchronised hosts.
* a file whose line cannot be read (being written, or not a lease file) is gone once unchanged for a lease.

A stale file is removed race-free by ``break_stale``: whoever removes it first makes ``<file>.break-<key>``
(O_EXCL again, the key naming that very file), checks that the file is still the stale one, removes it and
then its break file; a second process that judged the same file stale either fails to make the break file or,
later, finds another file in its place and leaves it. (Renaming the stale file away would not do: a rename
by name may move away a fresh file made there since.) A break file left by a process that died half-way is
stale by the same rule and broken the same way. The one timing assumption is the lease's own: a live holder
renews its file within its lease.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import socket
import threading
import time
import uuid
from typing import NamedTuple

from infra.errors import HarnessError

LEASE_SECONDS = 120.0
LEASE_ENV = "SAM3D_LOCK_LEASE_S"
RENEWALS_PER_LEASE = 6  # a holder may miss five renewals (a stalled network filesystem) and keep its lease


def lease_seconds() -> float:
    """The lease this process writes in its files: ``SAM3D_LOCK_LEASE_S`` or ``LEASE_SECONDS``."""
    text = os.environ.get(LEASE_ENV, "").strip()
    if not text:
        return LEASE_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (seconds > 0 and math.isfinite(seconds)):
        raise HarnessError(f"{LEASE_ENV}={text!r}: expected a number of seconds above 0 (default {LEASE_SECONDS:g})")
    return seconds


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a lease file (module docstring): enough to tell, from any machine, whether it still runs."""

    host: str
    pid: int
    boot_id: str
    pid_ns: str
    started: str
    lease_s: float
    token: str

    def to_text(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_text(cls, text: str | bytes | None) -> Holder | None:
        """The holder written in ``text``; None where it is not one (empty, half-written, another format)."""
        try:
            fields = json.loads(text or "")
            holder = cls(**{f.name: fields[f.name] for f in dataclasses.fields(cls)})
            lease = float(holder.lease_s)
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        if not isinstance(holder.pid, int) or not (lease > 0 and math.isfinite(lease)):
            return None
        return holder


class Found(NamedTuple):
    """A lease file as read: its holder (None if unreadable), the seconds since it was renewed, and a key
    naming this very file (its token; for an unreadable file its inode and time)."""

    holder: Holder | None
    age_s: float
    renewed: float
    key: str


def me() -> Holder:
    """This process as the holder of a new lease file (a new token each call)."""
    host, boot_id, pid_ns, started = _identity()
    return Holder(host, os.getpid(), boot_id, pid_ns, started, lease_seconds(), uuid.uuid4().hex)


def create(path: str | os.PathLike, holder: Holder) -> bool:
    """Make the lease file ``path`` naming ``holder`` if no file is there; False if one is. Any other
    failure (the folder unwritable, exclusive create or setting a file's time unsupported) is an OSError."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, (holder.to_text() + "\n").encode())
        now = time.time()
        os.utime(fd, (now, now))  # this machine's clock, as every renewal: not the file server's
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)  # on NFS, closing sends the line to the server before anyone else opens the file
    return True


def read(path: str | os.PathLike) -> Found | None:
    """The lease file at ``path``; None when there is none."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        stat = os.fstat(fd)  # opening revalidates a network file's attributes: the time is the server's latest
        text = os.read(fd, 4096)
    finally:
        os.close(fd)
    holder = Holder.from_text(text)
    key = holder.token if holder is not None else f"{stat.st_ino}-{stat.st_mtime_ns}"
    return Found(holder, time.time() - stat.st_mtime, stat.st_mtime, key)


def stale_reason(found: Found) -> str | None:
    """Why ``found``'s holder is known to be gone (the stale rule, module docstring); None while it may run."""
    holder = found.holder
    if holder is None:
        lease = lease_seconds()
        return f"unreadable and unchanged for {found.age_s:.0f} s (lease {lease:g} s)" if found.age_s > lease else None
    host, boot_id, pid_ns, _ = _identity()
    if holder.host == host and holder.boot_id == boot_id:
        alive = _alive(holder.pid, holder.started) if holder.pid_ns == pid_ns else None
        if alive is not None:
            return None if alive else f"process {holder.pid} on {host} has ended"
    elif holder.host == host and holder.boot_id and boot_id and found.renewed < _booted_at():
        return f"{host} has restarted since"
    if found.age_s > holder.lease_s:
        return (f"the lease of process {holder.pid} on {holder.host} was last renewed {found.age_s:.0f} s ago "
                f"(lease {holder.lease_s:g} s)")
    return None


def ended_here(host: str, pid: int, boot_id: str | None = None, pid_ns: str | None = None, started: str = "") -> bool:
    """Whether this machine can tell, without a lease file, that process ``pid`` of ``host`` has ended: it is
    this host (and, where given, this boot and pid namespace) and its pid is dead."""
    here_host, here_boot, here_ns, _ = _identity()
    same = host == here_host and boot_id in (None, here_boot) and pid_ns in (None, here_ns)
    return same and _alive(pid, started) is False


def break_stale(path: str | os.PathLike, found: Found) -> None:
    """Remove ``path`` if it is still the stale file ``found`` (module docstring: race-free among breakers)."""
    path = pathlib.Path(path)
    breaker = path.with_name(f"{path.name}.break-{found.key}")
    if not create(breaker, me()):
        other = read(breaker)
        if other is not None and stale_reason(other):
            break_stale(breaker, other)  # its breaker died half-way; the next look breaks ``path``
        return
    try:
        now = read(path)
        if now is not None and now.key == found.key:
            path.unlink(missing_ok=True)
    finally:
        breaker.unlink(missing_ok=True)


def take(path: str | os.PathLike, holder: Holder) -> bool:
    """``create``, then keep the file's lease fresh until ``let_go``; False if a file is there."""
    if not create(path, holder):
        return False
    _KEEPER.hold(str(path), holder)
    return True


def let_go(path: str | os.PathLike, holder: Holder) -> None:
    """Stop renewing ``path`` and remove it if it is still ``holder``'s."""
    _KEEPER.drop(str(path))
    now = read(path)
    if now is not None and now.key == holder.token:
        pathlib.Path(path).unlink(missing_ok=True)


def renew(path: str | os.PathLike, token: str) -> bool:
    """Set the lease file's time to now if it is still the one holding ``token``; False if it is not."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        holder = Holder.from_text(os.read(fd, 4096))
        if holder is None or holder.token != token:
            return False
        now = time.time()
        os.utime(fd, (now, now))  # the file opened and checked, never one made since under the same name
        return True
    finally:
        os.close(fd)


class _Keeper:
    """One daemon thread per process renewing every lease file the process holds."""

    def __init__(self) -> None:
        self._held: dict[str, Holder] = {}
        self._guard = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._interval = math.inf

    def hold(self, path: str, holder: Holder) -> None:
        with self._guard:
            self._held[path] = holder
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lease renewals", daemon=True)
                self._thread.start()
            elif holder.lease_s / RENEWALS_PER_LEASE < self._interval:
                self._wake.set()  # a shorter lease than the thread waits for: it starts a shorter wait

    def drop(self, path: str) -> None:
        with self._guard:
            self._held.pop(path, None)

    def forget_after_fork(self) -> None:
        """A forked child holds none of its parent's files and has no renewing thread."""
        self._held, self._guard, self._wake, self._thread = {}, threading.Lock(), threading.Event(), None
        self._interval = math.inf

    def _run(self) -> None:
        while True:
            with self._guard:
                shortest = min((h.lease_s for h in self._held.values()), default=LEASE_SECONDS)
                self._interval = shortest / RENEWALS_PER_LEASE
            if self._wake.wait(self._interval):
                self._wake.clear()
                continue
            with self._guard:
                held = list(self._held.items())
            for path, holder in held:
                try:
                    kept = renew(path, holder.token)
                except OSError:  # a network filesystem's hiccup: the next round tries again
                    continue
                with self._guard:
                    if not kept and self._held.get(path) is holder:
                        del self._held[path]
                        print(f"warning: {path} was removed or taken over by another process (judged stale); "
                              "what it guarded may now be shared", flush=True)


_KEEPER = _Keeper()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_KEEPER.forget_after_fork)

_IDENTITY: tuple[int, tuple[str, str, str, str]] | None = None


def _identity() -> tuple[str, str, str, str]:
    """(host, boot id, pid namespace, start time) of this process, read once per process."""
    global _IDENTITY
    if _IDENTITY is None or _IDENTITY[0] != os.getpid():
        boot_id = _read_text("/proc/sys/kernel/random/boot_id")
        try:
            pid_ns = os.readlink("/proc/self/ns/pid")
        except OSError:
            pid_ns = ""
        stat = _process_stat(os.getpid())
        _IDENTITY = (os.getpid(), (socket.gethostname(), boot_id, pid_ns, stat[1] if stat else ""))
    return _IDENTITY[1]


def _alive(pid: int, started: str) -> bool | None:
    """Whether process ``pid`` of this machine runs and is the one that started at ``started``; None where
    that cannot be told (Windows, where os.kill would end it)."""
    if os.name == "nt":
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    except OSError:
        return True
    stat = _process_stat(pid)
    if stat is None:  # no /proc (or hidden): the pid exists, which is all we know
        return True
    state, start = stat
    return state != "Z" and (not started or start == started)


def _process_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of ``pid`` from /proc; None where unreadable."""
    text = _read_text(f"/proc/{pid}/stat")
    fields = text.rpartition(")")[2].split()  # the name before it, in parentheses, may hold spaces
    return (fields[0], fields[19]) if len(fields) > 19 else None


def _booted_at() -> float:
    """When this machine started (seconds since the epoch); 0 where unknown."""
    for line in _read_text("/proc/stat").splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""

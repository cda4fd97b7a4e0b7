"""Step locks: a second process waits for (or skips) a step another process holds, by flock or by lease files."""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import multiprocessing
import os
import subprocess
import sys
import time

import pytest

from infra import leases, locks, mounts, timing
from infra.errors import HarnessError
from infra.locks import WAITING, step_lock, try_step_lock


@pytest.fixture(autouse=True)
def _fresh_lock_kinds(monkeypatch):
    """Each test chooses its lock kinds afresh (the choice is remembered per folder and mount)."""
    monkeypatch.setattr(locks, "_kind_of_folder", {})
    monkeypatch.setattr(locks, "_why_lease", {})
    monkeypatch.delenv(locks.KIND_ENV, raising=False)
    monkeypatch.delenv(leases.LEASE_ENV, raising=False)


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


# --- where flock is unsupported or node-local: lease files (infra.leases)

def _no_flock(*args) -> None:
    raise OSError(errno.ENOSYS, "Function not implemented")  # Lustre mounted without -o flock


def _hold_elsewhere(path: str, ready, release, flock: bool, host: str | None = None, lease: str | None = None) -> None:
    """Hold ``path``'s lock in this (spawned) process: without flock unless ``flock``, as if on ``host`` where given,
    with a lease of ``lease`` seconds where given; until ``release`` is set, or killed where it is None."""
    if not flock:
        fcntl.flock = _no_flock
    if host is not None:
        leases._identity = lambda: (host, "its-boot", "pid:[7]", "")
    if lease is not None:
        os.environ[leases.LEASE_ENV] = lease
    with step_lock(path):
        ready.set()
        if release is None:
            time.sleep(60)  # until killed
        else:
            release.wait(30)


def _lease_of(path) -> leases.Found | None:
    return leases.read(f"{path}{locks.LEASE_SUFFIX}")


def test_where_flock_is_unsupported_two_processes_exclude_each_other_by_a_lease_file(tmp_path, monkeypatch):
    monkeypatch.setattr(fcntl, "flock", _no_flock)
    path = tmp_path / "locks" / "step.lock"
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_elsewhere, args=(str(path), ready, release, False))
    holder.start()
    try:
        assert ready.wait(60)
        with try_step_lock(path) as held:
            assert not held
        assert _lease_of(path).holder.pid == holder.pid
        timing.reset()
        started = time.perf_counter()
        releaser = context.Process(target=_release_later, args=(release,))
        releaser.start()
        with step_lock(path):
            waited = time.perf_counter() - started
            assert _lease_of(path).holder.pid == os.getpid()
        releaser.join()
        assert waited >= 0.2
        assert timing.totals()[WAITING][0] >= 0.2  # the wait shows in the run's profile
    finally:
        release.set()
        holder.join(30)
    assert _lease_of(path) is None  # let go: removed
    assert locks.lock_kind(path.parent) == "lease"


def test_where_no_lock_can_be_made_locking_stops_with_one_line_naming_the_mount(tmp_path, monkeypatch):
    monkeypatch.setattr(fcntl, "flock", _no_flock)

    def no_exclusive_create(path, holder):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(leases, "create", no_exclusive_create)
    point, kind = mounts.filesystem_of(tmp_path)
    with pytest.raises(HarnessError) as raised:
        with step_lock(tmp_path / "step.lock"):
            pass
    line = str(raised.value)
    assert "\n" not in line and f"{point} ({kind}) does not support flock (ENOSYS)" in line
    assert "Operation not supported" in line and "-o flock" in line and "O_EXCL" in line


def test_a_mount_whose_flock_is_node_local_gets_lease_files(tmp_path, monkeypatch):
    table = tmp_path / "mounts"
    table.write_text(f"server:/export {tmp_path.resolve()} nfs rw,vers=3,local_lock=flock 0 0\n")
    monkeypatch.setattr(mounts, "MOUNTS_FILE", str(table))
    path = tmp_path / "locks" / "step.lock"
    with step_lock(path):
        assert _lease_of(path).holder.pid == os.getpid() and not path.exists()
    assert _lease_of(path) is None


OTHER_MACHINE = {"host": "another-machine", "boot_id": "its-boot", "pid_ns": "pid:[7]", "pid": 4242, "started": ""}


def _lease_written_by(path, age_s: float, **holder) -> None:
    lease = f"{path}{locks.LEASE_SUFFIX}"
    assert leases.create(lease, dataclasses.replace(leases.me(), **holder))
    then = time.time() - age_s
    os.utime(lease, (then, then))


def test_a_lock_of_another_machine_s_live_holder_is_never_taken_and_an_expired_one_is(tmp_path, monkeypatch):
    monkeypatch.setenv(locks.KIND_ENV, "lease")
    live, expired = tmp_path / "live.lock", tmp_path / "expired.lock"
    _lease_written_by(live, age_s=leases.LEASE_SECONDS / 2, **OTHER_MACHINE)
    _lease_written_by(expired, age_s=leases.LEASE_SECONDS + 5, **OTHER_MACHINE)
    with try_step_lock(live) as held:
        assert not held and _lease_of(live).holder.host == "another-machine"
    with try_step_lock(expired) as held:
        assert held and _lease_of(expired).holder.pid == os.getpid()
    assert _lease_of(expired) is None and not list(tmp_path.glob("*.break-*"))


def test_a_lock_of_an_ended_process_of_this_machine_or_of_an_earlier_boot_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setenv(locks.KIND_ENV, "lease")
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, rebooted = tmp_path / "dead.lock", tmp_path / "rebooted.lock"
    _lease_written_by(dead, age_s=0, pid=int(ended.stdout))
    _lease_written_by(rebooted, age_s=time.time() - leases._booted_at() + 10, boot_id="an-earlier-boot")
    for path in (dead, rebooted):
        with try_step_lock(path) as held:
            assert held and _lease_of(path).holder.pid == os.getpid()


def test_another_machine_s_holder_keeps_its_lock_while_it_runs_and_loses_it_a_lease_after_it_dies(tmp_path,
                                                                                                  monkeypatch):
    monkeypatch.setenv(locks.KIND_ENV, "lease")
    path = tmp_path / "step.lock"
    context = multiprocessing.get_context("spawn")
    ready = context.Event()  # no release event: a process killed while waiting on one leaves it unusable
    holder = context.Process(target=_hold_elsewhere, args=(str(path), ready, None, True, "another-machine", "0.5"))
    holder.start()
    try:
        assert ready.wait(60)
        deadline = time.monotonic() + 1.5  # three leases: renewed all along
        while time.monotonic() < deadline:
            with try_step_lock(path) as held:
                assert not held
            time.sleep(0.05)
        holder.kill()  # kill -9: its lease file stays, renewed no more
        holder.join(30)
        started = time.monotonic()
        with step_lock(path):
            assert _lease_of(path).holder.pid == os.getpid()
        assert 0.1 < time.monotonic() - started < 10  # taken once the lease had expired
    finally:
        holder.kill()
        holder.join(30)

"""Lease files: the stale rule, race-free breaking of a stale file, renewal while the holder lives."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time

import pytest

from infra import leases
from infra.errors import HarnessError


def _ended_pid() -> int:
    """The pid of a process of this machine that has ended (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def _write(path, age_s: float = 0.0, **changes) -> leases.Found:
    """A lease file at ``path`` naming this process with ``changes``, last renewed ``age_s`` seconds ago."""
    assert leases.create(path, dataclasses.replace(leases.me(), **changes))
    then = time.time() - age_s
    os.utime(path, (then, then))
    return leases.read(path)


LEASE = leases.LEASE_SECONDS
OTHER_HOST = {"host": "another-machine", "boot_id": "another-boot", "pid_ns": "pid:[1]", "pid": 1, "started": "1"}


def test_another_machine_s_holder_is_gone_only_once_its_lease_has_expired(tmp_path):
    assert leases.stale_reason(_write(tmp_path / "fresh", age_s=LEASE / 2, **OTHER_HOST)) is None
    why = leases.stale_reason(_write(tmp_path / "expired", age_s=LEASE + 5, **OTHER_HOST))
    assert why and "another-machine" in why and "lease" in why
    # the lease is the one the holder wrote, not this process's
    assert leases.stale_reason(_write(tmp_path / "long", age_s=LEASE + 5, lease_s=10 * LEASE, **OTHER_HOST)) is None


def test_this_machine_s_holder_is_gone_when_its_process_has_ended_and_never_while_it_runs(tmp_path):
    why = leases.stale_reason(_write(tmp_path / "dead", pid=_ended_pid()))
    assert why and "has ended" in why
    assert leases.stale_reason(_write(tmp_path / "alive", age_s=10 * LEASE)) is None  # alive: its lease is moot
    # a reused pid: the process running under it started at another time
    assert leases.stale_reason(_write(tmp_path / "reused", started="12345")) is not None
    # a process of another container of this machine (another pid namespace): judged by its lease
    assert leases.stale_reason(_write(tmp_path / "ns", pid=_ended_pid(), pid_ns="pid:[9]")) is None
    assert leases.stale_reason(_write(tmp_path / "ns-old", age_s=LEASE + 5, pid_ns="pid:[9]")) is not None


def test_a_changed_boot_id_means_the_machine_restarted_unless_the_lease_was_renewed_since(tmp_path):
    booted = leases._booted_at()
    if not booted:
        pytest.skip("no /proc/stat btime here")
    before_boot = time.time() - booted + 10
    why = leases.stale_reason(_write(tmp_path / "rebooted", age_s=before_boot, boot_id="an-earlier-boot"))
    assert why and "restarted" in why
    # renewed since this machine started: another machine under the same host name, alive
    assert leases.stale_reason(_write(tmp_path / "namesake", age_s=1, boot_id="another-boot")) is None


def test_an_unreadable_file_is_held_until_unchanged_for_a_lease(tmp_path):
    young, old = tmp_path / "young", tmp_path / "old"
    young.write_text("")
    old.write_text("{half")
    then = time.time() - LEASE - 5
    os.utime(old, (then, then))
    assert leases.stale_reason(leases.read(young)) is None
    assert leases.stale_reason(leases.read(old)) is not None


def test_breaking_a_stale_file_never_removes_the_file_made_after_it(tmp_path):
    path = tmp_path / "step.lock.lease"
    stale = _write(path, pid=_ended_pid())
    seen_by_a, seen_by_b = leases.read(path), leases.read(path)  # two processes judge the same file stale
    assert leases.stale_reason(seen_by_a) and leases.stale_reason(seen_by_b)
    leases.break_stale(path, seen_by_a)
    assert not path.exists()
    mine = leases.me()
    assert leases.create(path, mine)
    leases.break_stale(path, seen_by_b)  # late: the file there now is another one
    assert leases.read(path).holder == mine
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name] and stale.key != mine.token


def test_a_break_left_half_done_by_a_dead_process_is_broken_too(tmp_path):
    path = tmp_path / "step.lock.lease"
    stale = _write(path, pid=_ended_pid())
    breaker = tmp_path / f"{path.name}.break-{stale.key}"
    _write(breaker, pid=_ended_pid())
    leases.break_stale(path, stale)  # breaks the dead breaker; the stale file waits for the next look
    assert path.exists() and not breaker.exists()
    leases.break_stale(path, stale)
    assert not path.exists() and not breaker.exists()


def test_a_live_breaker_is_left_to_finish(tmp_path):
    path = tmp_path / "step.lock.lease"
    stale = _write(path, pid=_ended_pid())
    breaker = tmp_path / f"{path.name}.break-{stale.key}"
    _write(breaker)  # this process, alive
    leases.break_stale(path, stale)
    assert path.exists() and breaker.exists()


def test_a_held_file_is_renewed_while_held_and_removed_when_let_go(tmp_path, monkeypatch):
    monkeypatch.setenv(leases.LEASE_ENV, "0.6")
    path, other = tmp_path / "held", tmp_path / "other"
    holder = leases.me()
    assert holder.lease_s == 0.6 and leases.take(path, holder)
    assert not leases.take(path, leases.me())  # one holder at a time
    then = time.time() - 100
    os.utime(path, (then, then))
    deadline = time.time() + 10
    while leases.read(path).age_s > 50 and time.time() < deadline:
        time.sleep(0.02)
    assert leases.read(path).age_s < 1  # renewed by the holder's thread
    assert not leases.renew(path, "not-its-token")
    _write(other, age_s=100)
    assert not leases.renew(other, holder.token) and leases.read(other).age_s > 50  # another's file is left as is
    leases.let_go(path, holder)
    assert not path.exists()


def test_a_lease_length_that_is_not_a_number_is_one_line(monkeypatch):
    monkeypatch.setenv(leases.LEASE_ENV, "soon")
    with pytest.raises(HarnessError, match=r"^SAM3D_LOCK_LEASE_S='soon': expected a number of seconds"):
        leases.me()

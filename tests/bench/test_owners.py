"""Run owners on shared filesystems: a run is marked KILLED only when its owner is known to be gone."""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import time

import pytest
from mlflow.tracking import MlflowClient

from bench import owners
from bench.mlflow_store import MlflowStore
from bench.results_layout import ResultsLayout
from infra import leases, locks, mounts
from tests.bench.test_crash_safety import _open_runs, owner_of_an_ended_process

OTHER_MACHINE = {"host": "another-machine", "boot_id": "its-boot", "pid_ns": "pid:[7]", "pid": 4242, "started": ""}


@pytest.fixture(autouse=True)
def _no_env_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(leases.LEASE_ENV, raising=False)
    monkeypatch.setattr(locks, "_kind_of_folder", {})
    monkeypatch.setattr(locks, "_why_lease", {})


def _owner_on_another_machine(results, name: str, age_s: float) -> dict[str, str]:
    """The run tags of an invocation on another machine whose owner file was last renewed ``age_s`` ago (its
    flock, if it holds one, is not seen here: locks on a node-local mount)."""
    holder = dataclasses.replace(leases.me(), **OTHER_MACHINE)
    lock = ResultsLayout(results).owner_locks.resolve() / f"{name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    assert leases.create(lock, holder)
    then = time.time() - age_s
    os.utime(lock, (then, then))
    return {owners.OWNER_TAG: f"another-machine:{name}", owners.LOCK_TAG: str(lock),
            owners.HOLDER_TAG: holder.to_text(), owners.RESULTS_TAG: str(results)}


def _statuses(results, runs) -> list[str]:
    client = MlflowClient(ResultsLayout(results).tracking_uri)
    return [client.get_run(run_id).info.status for run_id in runs]


def _sweep(results) -> list[str]:
    me = owners.Owner(ResultsLayout(results)).acquire()
    try:
        return owners.sweep(MlflowStore(ResultsLayout(results).tracking_uri), me)
    finally:
        me.release()


def test_another_machine_s_live_owner_keeps_its_runs_and_an_expired_one_s_are_marked_killed(tmp_path, monkeypatch):
    monkeypatch.setattr(fcntl, "flock", _no_flock)  # Lustre without -o flock: nothing to probe but the lease
    results = tmp_path.resolve()
    live = _owner_on_another_machine(results, "live", age_s=leases.LEASE_SECONDS / 2)
    expired = _owner_on_another_machine(results, "expired", age_s=leases.LEASE_SECONDS + 5)
    live_runs, expired_runs = _open_runs(results, live, "x"), _open_runs(results, expired, "y")
    killed = owner_of_an_ended_process(results)  # this machine's owner whose process has ended
    killed_runs = _open_runs(results, killed, "z")
    container_runs = _open_runs(results, _owner_in_another_container(results), "w")

    lines = _sweep(results)
    assert _statuses(results, live_runs + container_runs) == ["RUNNING"] * 4
    assert list((results / "x").glob(".*.partial")) and os.path.exists(live[owners.LOCK_TAG])
    assert _statuses(results, expired_runs + killed_runs) == ["KILLED"] * 4
    assert not list((results / "y").glob(".*.partial")) and not os.path.exists(expired[owners.LOCK_TAG])
    assert not list((results / "z").glob(".*.partial")) and not os.path.exists(killed[owners.LOCK_TAG])
    assert len(lines) == 2 and any("another-machine:expired" in line and "lease" in line for line in lines)
    stale = MlflowClient(ResultsLayout(results).tracking_uri).get_run(expired_runs[0]).data.tags[owners.STALE_TAG]
    assert "last renewed" in stale and "another-machine" in stale
    assert _sweep(results) == []  # the live owner's runs stay as they are


def _owner_in_another_container(results) -> dict[str, str]:
    """An owner of this machine in another pid namespace: its pid means nothing here, even dead; its fresh
    lease says it runs."""
    tags = owner_of_an_ended_process(results)
    holder = dataclasses.replace(leases.Holder.from_text(tags[owners.HOLDER_TAG]), pid_ns="pid:[another]")
    os.unlink(tags[owners.LOCK_TAG])
    assert leases.create(tags[owners.LOCK_TAG], holder)
    return {**tags, owners.HOLDER_TAG: holder.to_text()}


def _no_flock(*args) -> None:
    raise OSError(errno.ENOSYS, "Function not implemented")


def test_an_older_version_s_owner_is_judged_by_its_flock_only_where_flock_reaches_every_machine(tmp_path,
                                                                                                 monkeypatch):
    results = tmp_path.resolve()
    held, free = (_old_owner(results, name) for name in ("held", "free"))
    fd = os.open(held[owners.LOCK_TAG], os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # the older invocation, running: it holds its file's lock
    try:
        held_runs, free_runs = _open_runs(results, held, "x"), _open_runs(results, free, "y")
        lines = _sweep(results)
        assert _statuses(results, held_runs) == ["RUNNING", "RUNNING"]
        assert _statuses(results, free_runs) == ["KILLED", "KILLED"] and len(lines) == 1
    finally:
        os.close(fd)
    # on a mount whose flock other machines do not see, a free flock says nothing: the owner is taken as alive
    table = tmp_path / "mounts"
    table.write_text(f"server:/export {results} nfs rw,vers=3,local_lock=flock 0 0\n")
    monkeypatch.setattr(mounts, "MOUNTS_FILE", str(table))
    elsewhere_runs = _open_runs(results, _old_owner(results, "elsewhere"), "z")
    assert _sweep(results) == [] and _statuses(results, elsewhere_runs) == ["RUNNING", "RUNNING"]


def _old_owner(results, name: str) -> dict[str, str]:
    """The tags of an older version's owner on another host: an empty owner file it held a flock on."""
    lock = ResultsLayout(results).owner_locks.resolve() / f"{name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_bytes(b"")
    return {owners.OWNER_TAG: f"{name}-host:1", owners.LOCK_TAG: str(lock), owners.RESULTS_TAG: str(results)}

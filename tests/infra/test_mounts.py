"""The mount table: which filesystem holds a path, whether other machines share it, whether its flock reaches them."""
from __future__ import annotations

import pytest

from infra import mounts


@pytest.fixture
def table(tmp_path, monkeypatch):
    """A mount table whose mount points are folders under ``tmp_path`` (so that paths below them resolve)."""
    root = tmp_path.resolve()
    lines = [
        "/dev/vda / ext4 rw,relatime 0 0",
        f"server:/export {root}/nfs nfs4 rw,vers=4.2,local_lock=none 0 0",
        f"server:/export2 {root}/nfs/local nfs rw,vers=3,local_lock=flock 0 0",
        f"tmpfs {root}/nfs/local/tmp tmpfs rw 0 0",
        f"mgs@tcp:/fs {root}/lustre lustre rw,flock 0 0",
        f"mgs@tcp:/fs2 {root}/lustre2 lustre rw,localflock 0 0",
        f"user@host: {root}/my\\040space fuse.sshfs rw,user_id=0 0 0",
        f"/dev/vdb {root}/stacked ext4 rw 0 0",
        f"server:/over {root}/stacked nfs4 rw 0 0",  # mounted later over the same folder: it is the one seen
    ]
    for folder in ("nfs/local/tmp", "lustre", "lustre2", "my space", "stacked"):
        (root / folder).mkdir(parents=True)
    path = tmp_path / "mounts"
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(mounts, "MOUNTS_FILE", str(path))
    return root


def test_the_longest_mount_point_above_a_path_holds_it_even_before_the_path_exists(table):
    assert mounts.filesystem_of(table / "nfs" / "results" / "not" / "made") == (f"{table}/nfs", "nfs4")
    assert mounts.filesystem_of(table / "nfs" / "local" / "x") == (f"{table}/nfs/local", "nfs")
    assert mounts.filesystem_of(table / "nfs" / "local" / "tmp" / "x") == (f"{table}/nfs/local/tmp", "tmpfs")
    assert mounts.filesystem_of(table / "nfsother") == ("/", "ext4")  # a prefix of the name is not a parent
    assert mounts.filesystem_of(table / "my space" / "x") == (f"{table}/my space", "fuse.sshfs")
    assert mounts.filesystem_of(table / "stacked") == (f"{table}/stacked", "nfs4")


def test_a_symbolic_link_is_followed_to_the_filesystem_it_points_into(table):
    (table / "link").symlink_to(table / "lustre")
    assert mounts.filesystem_of(table / "link" / "results") == (f"{table}/lustre", "lustre")


def test_network_filesystems_are_told_from_local_ones(table):
    for folder in ("nfs", "nfs/local", "lustre", "my space", "stacked"):
        assert mounts.is_network_filesystem(table / folder), folder
    for folder in ("nfs/local/tmp", "nothing"):
        assert not mounts.is_network_filesystem(table / folder), folder


def test_flock_counts_only_where_it_reaches_every_machine(table):
    coherent = {folder: mounts.flock_is_coherent(mounts.mount_of(table / folder))
                for folder in ("nfs", "nfs/local", "nfs/local/tmp", "lustre", "lustre2", "my space", "nothing")}
    assert coherent == {"nfs": True, "nfs/local": False, "nfs/local/tmp": True, "lustre": True, "lustre2": False,
                        "my space": False, "nothing": True}
    assert not mounts.flock_is_coherent(mounts.Mount("/l", "lustre", frozenset({"rw"})))  # no flock option: ENOSYS
    assert not mounts.flock_is_coherent(mounts.Mount("/g", "gpfs", frozenset({"rw"})))
    assert not mounts.flock_is_coherent(mounts.Mount("/n", "nfs", frozenset({"rw", "nolock"})))


def test_the_real_mount_table_names_a_mount_above_any_path(tmp_path):
    point, kind = mounts.filesystem_of(tmp_path / "not" / "yet")
    assert str(tmp_path.resolve()).startswith(point.rstrip("/") + "/") and kind

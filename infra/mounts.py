"""Which filesystem a path lives on, and what that means for locks and SQLite there.

Read from ``/proc/self/mounts`` (Linux). A results folder on a network filesystem is shared by several
machines: a lock there must reach every machine, and SQLite's own locking is often unreliable there.
Where the mount table cannot be read (not Linux), every path is on ``/`` of type ``unknown``, which counts
as local.
"""
from __future__ import annotations

import os
import re
from typing import NamedTuple

MOUNTS_FILE = "/proc/self/mounts"

# Filesystems whose files other machines see too (the kernel's type names, as /proc/self/mounts spells them).
NETWORK_TYPES = frozenset({
    "nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "smbfs", "beegfs", "ceph", "glusterfs", "ocfs2", "gfs2",
    "afs", "9p", "orangefs", "pvfs2", "panfs", "wekafs", "quobyte", "cvfs", "davfs", "ncpfs", "coda",
})
# FUSE filesystems report ``fuse.<name>``; these names reach storage on other machines.
NETWORK_FUSE = frozenset({
    "sshfs", "s3fs", "gcsfuse", "glusterfs", "ceph-fuse", "cephfs", "juicefs", "rclone", "goofys", "mfs",
    "moosefs", "lizardfs", "blobfuse", "blobfuse2", "beegfs", "davfs2", "seaweedfs", "alluxio-fuse",
    "mountpoint-s3", "geesefs", "weka", "ossfs", "cvmfs2", "xtreemfs",
})


class Mount(NamedTuple):
    """One line of the mount table: where it is mounted, its type, its options."""

    point: str
    fstype: str
    options: frozenset[str]


def mount_of(path: str | os.PathLike) -> Mount:
    """The mount that holds ``path`` (the longest mount point above it; the last one mounted where two are
    stacked). ``path`` need not exist: its nearest existing folder is looked up."""
    target = _existing_real_path(path)
    best, best_length = Mount("/", "unknown", frozenset()), 0
    for mount in _mounts():
        point = mount.point.rstrip("/")  # "" for the root
        if (target == point or target.startswith(point + "/")) and len(point) >= best_length:
            best, best_length = mount, len(point)
    return best


def filesystem_of(path: str | os.PathLike) -> tuple[str, str]:
    """(mount point, filesystem type) of the filesystem that holds ``path``, which need not exist yet."""
    mount = mount_of(path)
    return mount.point, mount.fstype


def is_network_filesystem(path: str | os.PathLike) -> bool:
    """Whether ``path`` lies on a filesystem other machines share (NFS, Lustre, GPFS, SMB, BeeGFS, CephFS,
    a FUSE mount of network storage...)."""
    return _is_network(mount_of(path).fstype)


def flock_is_coherent(mount: Mount) -> bool:
    """Whether a ``flock`` on ``mount`` excludes every process that can open the file, on any machine.

    True on local filesystems (one machine), and on the network filesystems whose server arbitrates flock:
    NFS (Linux emulates flock with the server's byte-range locks) unless mounted ``nolock`` or with
    ``local_lock=flock|all``, Lustre mounted ``-o flock``, kernel CephFS, and SMB unless mounted ``nobrl``.
    Every other network filesystem (GPFS, BeeGFS, FUSE mounts, Lustre with ``localflock`` or without
    ``flock``, ...) counts as giving node-local locks: where that is not known for sure, a lock that is
    always right (``infra.locks``' lease files) is worth its slower recovery after a crash.
    """
    kind, options = mount.fstype, mount.options
    if not _is_network(kind):
        return True
    if kind in ("nfs", "nfs4"):
        return not ({"nolock", "local_lock=flock", "local_lock=all"} & options)
    if kind == "lustre":
        return "flock" in options
    if kind == "ceph":
        return True
    if kind in ("cifs", "smb3"):
        return "nobrl" not in options
    return False


def _is_network(fstype: str) -> bool:
    if fstype.startswith("fuse."):
        return fstype[len("fuse."):] in NETWORK_FUSE
    return fstype in NETWORK_TYPES


def _existing_real_path(path: str | os.PathLike) -> str:
    """``path`` with symbolic links resolved, cut back to its nearest folder that exists."""
    current = os.path.abspath(os.fspath(path))
    while not os.path.exists(current) and os.path.dirname(current) != current:
        current = os.path.dirname(current)
    return os.path.realpath(current)


def _mounts() -> list[Mount]:
    try:
        with open(MOUNTS_FILE, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    mounts = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 4:
            mounts.append(Mount(_unescape(fields[1]), _unescape(fields[2]), frozenset(fields[3].split(","))))
    return mounts


def _unescape(field: str) -> str:
    """The mount table writes a space, tab, newline and backslash in a name as ``\\040`` ``\\011`` ``\\012``
    ``\\134``."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)

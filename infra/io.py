"""Atomic file writes: a reader never sees a half-written file, a crash never corrupts an old one.

Cache files (checkpoints, cached scenes, prepared frames, groups, row results, figures) are written with
``write_cache_file``, which records their SHA-256, size and the compute seconds that made them in a
small ``<name>.meta.json`` beside them; ``read_cache_file`` checks the bytes against it, so a file
changed after it was written (a bad disk, a copy gone wrong, a hand edit) is recomputed, never used.
A write that fails for lack of space (or any other OS error) is one line naming the folder.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import pathlib
import tempfile
from typing import Any

from infra.errors import HarnessError

META_SUFFIX = ".meta.json"


class CorruptCacheFile(Exception):
    """A cache file whose bytes are not those recorded when it was written (or with no record at all)."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> pathlib.Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    path = pathlib.Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; results are meant to be shared
        with os.fdopen(fd, "wb") as f:
            _write(f, data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            pathlib.Path(tmp).unlink(missing_ok=True)
        raise HarnessError(_write_problem(path, e)) from None
    except BaseException:
        if tmp is not None:
            pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _write(f, data: bytes) -> None:
    f.write(data)


def _write_problem(path: pathlib.Path, error: OSError) -> str:
    """One line for a failed write: a full disk names the folder and what to do."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on the device of {path.parent} (writing {path.name}); free space there or "
                "choose another --results_dir (nothing half-written was kept)")
    return f"cannot write {path}: {error.strerror or error}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
    """Write text (UTF-8) atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> pathlib.Path:
    """Write ``obj`` as indented JSON atomically (NaN is written as null, which JSON can represent)."""
    return atomic_write_bytes(path, json_bytes(obj))


def json_bytes(obj: Any) -> bytes:
    """``obj`` as indented UTF-8 JSON with sorted keys, NaN as null."""
    return (json.dumps(_nan_to_none(obj), indent=2, sort_keys=True) + "\n").encode("utf-8")


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def meta_path(path: str | os.PathLike) -> pathlib.Path:
    """The record of a cache file's checksum, size and compute seconds."""
    path = pathlib.Path(path)
    return path.with_name(path.name + META_SUFFIX)


def write_cache_file(path: str | os.PathLike, data: bytes, seconds: float | None = None,
                     extra: dict | None = None) -> pathlib.Path:
    """Write a cache file atomically with its record (SHA-256, size, the ``seconds`` it took to make, and
    ``extra`` fields: what a reader may know of the file without reading it, e.g. a scene's frames).

    The record is written first: a file that exists always has one, and a crash between the two
    writes leaves a record that the old file (if any) fails, so it is recomputed.
    """
    record = {**(extra or {}), "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "seconds": seconds}
    atomic_write_text(meta_path(path), json.dumps(record))
    return atomic_write_bytes(path, data)


def read_cache_meta(path: str | os.PathLike) -> dict | None:
    """The record of a cache file (``sha256``, ``bytes``, ``seconds``), or None if absent or unreadable."""
    try:
        record = json.loads(meta_path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def read_cache_file(path: str | os.PathLike) -> tuple[bytes, dict]:
    """The bytes of a cache file and its record, after checking them against each other.

    Raises FileNotFoundError when the file is absent, CorruptCacheFile (one line naming the file) when
    its record is missing or its bytes differ from those written.
    """
    path = pathlib.Path(path)
    data = path.read_bytes()
    record = read_cache_meta(path)
    if record is None:
        raise CorruptCacheFile(f"{path}: no checksum was recorded for it")
    # A file this process has checked is not hashed again while its size and time are unchanged: an epoch
    # that reads it again (past the memory caches) pays for the read alone.
    stat = path.stat()
    seen = (str(path), stat.st_size, stat.st_mtime_ns, record.get("sha256"))
    if seen not in _VERIFIED:
        if len(data) != record.get("bytes") or hashlib.sha256(data).hexdigest() != record.get("sha256"):
            raise CorruptCacheFile(f"{path}: its contents differ from the checksum recorded when it was written")
        _VERIFIED.add(seen)
    return data, record


_VERIFIED: set[tuple] = set()  # (path, size, mtime, sha256) of the cache files this process has checked


def check_writable_dir(path: str | os.PathLike, what: str = "results directory") -> pathlib.Path:
    """Create ``path`` if needed and prove it is writable; raise HarnessError in one line otherwise."""
    path = pathlib.Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test."):
            pass
    except OSError as e:
        raise HarnessError(f"{what} {str(path)!r} is not writable: {e.strerror or e}") from None
    return path

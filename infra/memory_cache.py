"""A per-process memory of loaded cache files, so that an epoch does not re-read what the last one read.

Training reads every scene (or prepared frame) of a split once per epoch; decoding the same ``.npz``
files again each epoch cost about a tenth of a demo fine-tuning step. Values are kept until a byte
budget is spent, first come first kept: a split larger than the budget keeps a fixed part in memory
(an LRU would evict every item before its next use when epochs sweep the whole split). Keys carry the
file's size and modification time, so a rewritten file is never served stale.
"""
from __future__ import annotations

import os
import pathlib
from collections.abc import Hashable
from typing import Any

import numpy as np

# Per process and per kind of file: enough for the synthetic demo's splits many times over, small
# next to a GPU node's memory; ScanNet-sized splits keep their first ~2 GB in memory.
DEFAULT_BUDGET_BYTES = 2 << 30


def file_key(path: pathlib.Path, *extra: Hashable) -> tuple | None:
    """A key for ``path`` as it is on disk now (None when it does not exist)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (str(path), stat.st_size, stat.st_mtime_ns, *extra)


def array_bytes(value: Any) -> int:
    """Bytes held by the numpy arrays among ``value``'s attributes."""
    return sum(v.nbytes for v in vars(value).values() if isinstance(v, np.ndarray))


def freeze_arrays(value: Any) -> Any:
    """Make ``value``'s numpy arrays read-only, so that one consumer cannot change what the next one reads."""
    for v in vars(value).values():
        if isinstance(v, np.ndarray):
            v.flags.writeable = False
    return value


class ByteBudgetCache:
    """Keeps values by key until ``max_bytes`` are used; later values are returned but not kept."""

    def __init__(self, max_bytes: int = DEFAULT_BUDGET_BYTES):
        self.max_bytes = int(max_bytes)
        self.used = 0
        self._values: dict[Hashable, Any] = {}

    def get(self, key: Hashable | None) -> Any | None:
        return None if key is None else self._values.get(key)

    def put(self, key: Hashable | None, value: Any, nbytes: int) -> Any:
        """Keep ``value`` if the budget allows; returns it either way."""
        if key is not None and key not in self._values and self.used + nbytes <= self.max_bytes:
            self._values[key] = value
            self.used += nbytes
        return value

    def clear(self) -> None:
        self._values.clear()
        self.used = 0

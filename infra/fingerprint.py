"""Content fingerprints of configured components, for keying on-disk caches.

A component's fingerprint covers its type and its public state (attributes not starting with ``_``,
where components keep loaded models and other caches), recursively; arrays, tensors and pandas tables
by their contents. Two components configured the same way get the same fingerprint in any process.
A component must therefore keep every constructor parameter that changes what it computes in its public
state (``tests/bench/test_cache_keys.py`` changes each one and checks the fingerprint changes), or say what
its output depends on with a ``cache_state()`` method: a model's weights by their content
(``file_digest``) rather than their path, without settings that change only speed or placement (a batch
size, the device).
"""
from __future__ import annotations

import enum
import hashlib
import json
import pathlib
from typing import Any

import numpy as np


def describe(obj: Any, _depth: int = 0) -> Any:
    """A JSON-able description of ``obj``'s configuration (see module docstring)."""
    if _depth > 12:
        raise ValueError(f"fingerprint: object nesting too deep at {type(obj).__name__}")
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, enum.Enum):
        return f"{type(obj).__qualname__}.{obj.name}"
    if isinstance(obj, pathlib.PurePath):
        return str(obj)
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, np.ndarray) or type(obj).__name__ == "Tensor":
        array = np.ascontiguousarray(obj.detach().cpu().numpy() if hasattr(obj, "detach") else obj)
        return {"array": hashlib.sha256(array.tobytes()).hexdigest(), "dtype": str(array.dtype),
                "shape": list(array.shape)}
    if type(obj).__module__.startswith("pandas") and hasattr(obj, "to_csv"):  # a table's figures
        return {"type": type(obj).__name__, "csv": obj.to_csv()}
    if isinstance(obj, (list, tuple)):
        return [describe(v, _depth + 1) for v in obj]
    if isinstance(obj, dict):
        return {str(k): describe(v, _depth + 1) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, type) or callable(obj) and not hasattr(obj, "__dict__"):
        return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
    kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if callable(getattr(obj, "cache_state", None)):  # the component says itself what its output depends on
        return {"type": kind, "state": describe(obj.cache_state(), _depth + 1)}
    state = {k: v for k, v in vars(obj).items() if not k.startswith("_")} if hasattr(obj, "__dict__") else {}
    if not state and callable(obj) and hasattr(obj, "__qualname__"):  # plain functions
        return f"{getattr(obj, '__module__', '?')}.{obj.__qualname__}"
    return {"type": kind, "state": describe(state, _depth + 1)}


_DIGESTS: dict[tuple, str] = {}  # (path, size, mtime) -> SHA-256 of the file's bytes, per process


def file_digest(path: str | pathlib.Path) -> str:
    """SHA-256 of a file's bytes (a weights file's identity, wherever it lies), computed once per process and
    remembered by its path, size and modification time."""
    path = pathlib.Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def fingerprint(*objs: Any, length: int = 16) -> str:
    """Hex digest of the descriptions of ``objs`` (order matters)."""
    text = json.dumps([describe(o) for o in objs], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]

"""Load dataset info pickles without letting them run code.

``pickle.load`` calls whatever global a file names, so a downloaded ``*_infos.pkl`` could run
``os.system``. The info files of mmdet3d / votenet only need builtin containers and numpy array
reconstruction, so every other global is refused.
"""
from __future__ import annotations

import codecs
import collections
import os
import pickle
from typing import Any, Callable

import numpy as np

try:  # numpy >= 2 keeps the implementation in numpy._core; numpy.core is a deprecated alias there.
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes`` (always latin1); nothing else."""
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode only allowed with latin1 on a str, got {encoding!r}")
    return codecs.encode(text, encoding)


_NUMPY = {  # (module, name) as pickles written by numpy 1.x and 2.x spell them
    **{(f"{pkg}.multiarray", "_reconstruct"): _multiarray._reconstruct for pkg in ("numpy.core", "numpy._core")},
    **{(f"{pkg}.multiarray", "scalar"): _multiarray.scalar for pkg in ("numpy.core", "numpy._core")},
    # protocol >= 5 pickles rebuild arrays from a bytes buffer with this
    **{(f"{pkg}.numeric", "_frombuffer"): _numeric._frombuffer for pkg in ("numpy.core", "numpy._core")},
}
_ALLOWED: dict[tuple[str, str], Any] = {
    **_NUMPY,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _latin1_encode,
    **{("builtins", c.__name__): c for c in (dict, list, tuple, set, frozenset, bytearray, complex)},
}


class RefusedGlobalError(ValueError):
    """A pickle names a global outside the allow-list."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, path: str):
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Callable[..., Any]:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobalError(
                f"{self._path}: refusing to unpickle global {module}.{name} "
                "(only builtin containers and numpy arrays are allowed)"
            ) from None


def load_pickle(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` allowing only builtin containers, ``OrderedDict`` and numpy arrays/scalars.

    Raises ``FileNotFoundError`` for a missing file and a one-line ``ValueError`` naming the file for
    a refused global or a corrupt/truncated pickle.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pickle file not found: {path}")
    with open(path, "rb") as f:
        try:
            return _RestrictedUnpickler(f, path).load()
        except RefusedGlobalError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
            raise ValueError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None

"""The official files of the ScanNet Data-Efficient benchmark (Hou et al., CVPR 2021), read and checked.

Formats, as the benchmark distributes them:

- Limited reconstructions (``lr``): ``tasks/scenes/{1,5,10,20}.txt``, the ids of 1 / 5 / 10 / 20 % of the
  ScanNet training scenes, one a line (``scene0000_00``).
- Limited annotations (``la``): ``tasks/points/points{20,50,100,200}``, each a ``torch.save``d dict from
  scene id to the indices of the scene's 20 / 50 / 100 / 200 labelled points, a 1-D integer tensor or
  numpy array. They index the vertices of the scene's ``_vh_clean_2.ply`` in file order, which the raw
  reader and full-resolution exports keep; VoteNet's 50k-point ``_vert.npy`` subsample does not, and a
  reader that drops non-finite points (``non_finite='drop'``) renumbers the points after them, so read
  with ``non_finite='error'`` where these indices are used.

Files are loaded without unpickling arbitrary objects (``torch.load(weights_only=True)`` with only numpy's
array reconstruction allowed besides tensors) and checked against the training scenes
(``methods.protocols`` uses them); every problem is a one-line ``DataError`` naming the file and what was
expected.
"""
from __future__ import annotations

import pathlib
import pickle
import re
from collections.abc import Mapping, Sequence

import numpy as np

from infra.errors import DataError

PointAnnotations = dict[str, np.ndarray]
_LIST_FORMAT = "one ScanNet scene id a line (tasks/scenes/<percent>.txt)"
_POINTS_FORMAT = "a torch.save'd dict of scene id -> 1-D integer tensor/array of point indices (tasks/points/points<N>)"


def read_scene_list(path: str | pathlib.Path) -> list[str]:
    """Scene ids of a limited-reconstruction list, in file order (blank lines skipped).

    A missing or empty file, a line that is not one id, or an id listed twice is a ``DataError``.
    """
    path = pathlib.Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: missing scene list (expected {_LIST_FORMAT})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable scene list ({exc}); expected {_LIST_FORMAT}") from None
    ids: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        token = line.strip()
        if not token:
            continue
        if len(token.split()) != 1:
            raise DataError(f"{path}: line {number}: {token[:60]!r} is not one scene id; expected {_LIST_FORMAT}")
        if token in first_line:
            raise DataError(f"{path}: line {number}: scene {token!r} is listed again (first on line "
                            f"{first_line[token]}); expected each scene once")
        first_line[token] = number
        ids.append(token)
    if not ids:
        raise DataError(f"{path}: empty scene list; expected {_LIST_FORMAT}")
    return ids


def check_scene_list(ids: Sequence[str], known: Sequence[str], what: str,
                     path: str | pathlib.Path = "scene list") -> None:
    """Check a limited-reconstruction list against the ids of the scenes it picks from (``known``, e.g. the
    training split, named ``what`` in messages): every id once, and among them. ``path`` names the list."""
    seen: set[str] = set()
    for scene_id in ids:
        if scene_id in seen:
            raise DataError(f"{path}: scene {scene_id!r} is listed twice; expected each scene once")
        seen.add(scene_id)
    known_ids = set(known)
    unknown = [s for s in ids if s not in known_ids]
    if unknown:
        raise DataError(f"{path}: {len(unknown)} of {len(ids)} scenes are not in {what} ({len(known_ids)} scenes; "
                        f"first: {unknown[0]!r}); expected ids of the scenes it reads")


# ---- limited annotations -------------------------------------------------------------------------

def _numpy_array_globals(torch) -> list:
    """What ``torch.load(weights_only=True)`` must also allow to rebuild numpy arrays, and nothing else."""
    reconstruct = np.zeros(1).__reduce__()[0]
    dtypes = {type(np.dtype(code)) for code in np.typecodes["AllInteger"] + np.typecodes["AllFloat"] + "?"}
    allowed = [reconstruct, np.ndarray, np.dtype, *dtypes]
    if torch.__version__ >= "2.6":  # (object, name) pairs; files written under numpy 1.x spell it numpy.core
        allowed.append((reconstruct, "numpy.core.multiarray._reconstruct"))
    return allowed


def _load_refusal(exc: Exception) -> str:
    """The one-line reason inside torch's long weights_only error."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    if found:
        return f"it names {found.group(1)}, which is not allowed"
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def read_point_annotations(path: str | pathlib.Path) -> PointAnnotations:
    """Scene id -> int64 indices of its labelled points, from a limited-annotation file.

    Loaded with ``torch.load(weights_only=True)``: a file that needs any other object than tensors, numpy
    arrays and builtin containers is refused, not unpickled. Not a dict, a key that is not a string, or a
    value that is not a 1-D integer tensor/array is a ``DataError``.
    """
    import torch  # only this reader needs torch; the rest of datasets/ reads without it

    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing point annotation file (expected {_POINTS_FORMAT})")
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    try:
        if safe_globals is None:  # torch < 2.5: tensors only
            data = torch.load(path, map_location="cpu", weights_only=True)
        else:
            with safe_globals(_numpy_array_globals(torch)):
                data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path}: refused to load ({_load_refusal(exc)}); expected {_POINTS_FORMAT}") from None
    except Exception as exc:  # noqa: BLE001 - on bytes that are no torch file, torch raises IndexError, KeyError, ...
        raise DataError(f"{path}: not a torch.save file ({type(exc).__name__}: {_load_refusal(exc)}); "
                        f"expected {_POINTS_FORMAT}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: holds a {type(data).__name__}, expected {_POINTS_FORMAT}")
    if not data:
        raise DataError(f"{path}: empty dict, expected {_POINTS_FORMAT}")
    annotations: PointAnnotations = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise DataError(f"{path}: key {key!r} is a {type(key).__name__}, expected scene id strings")
        array = value.numpy() if isinstance(value, torch.Tensor) else value
        if not isinstance(array, np.ndarray) or array.ndim != 1 or array.dtype.kind not in "iu":
            got = (f"{array.dtype} array of shape {array.shape}" if isinstance(array, np.ndarray)
                   else type(value).__name__)
            raise DataError(f"{path}: scene {key!r}: {got}, expected a 1-D integer tensor/array of point indices")
        annotations[key] = array.astype(np.int64)
    return annotations


def annotated_points(annotations: Mapping[str, np.ndarray], scene_id: str, num_points: int,
                     path: str | pathlib.Path = "point annotations") -> np.ndarray:
    """The sorted, unique labelled point indices of scene ``scene_id`` (``num_points`` points) in
    ``annotations``; a ``DataError`` naming ``path`` when the scene has no entry or an index is outside it."""
    if scene_id not in annotations:
        raise DataError(f"{path}: no labelled points for scene {scene_id!r} ({len(annotations)} scenes annotated); "
                        "expected labelled points for every training scene")
    labelled = np.asarray(annotations[scene_id], dtype=np.int64)
    outside = labelled[(labelled < 0) | (labelled >= num_points)]
    if outside.size:
        raise DataError(f"{path}: scene {scene_id!r}: {outside.size} of {len(labelled)} indices are outside "
                        f"0..{num_points - 1} (first: {int(outside[0])}); expected indices into its {num_points} "
                        "points")
    return np.unique(labelled)

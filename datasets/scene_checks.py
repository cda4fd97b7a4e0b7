"""What a Scene must hold, checked field by field, wherever a scene is read (readers, ``verify``).

Every field of ``datasets/types.py`` is checked for its dtype, shape and range: at least one point, a colour
and labels for each point, semantic ids inside the dataset's classes (or the ignore index), instance ids
>= 0, finite boxes with extents >= 0, box labels inside the detection classes, one label and instance
id per box. Non-finite coordinates are reported too; the readers' ``non_finite`` policy handles them first
(``datasets.scene_list``).
"""
from __future__ import annotations

import numpy as np

from datasets.types import IGNORE_INDEX, DatasetInfo, Scene

# Expected (dtype, ndim, columns) of each Scene array (datasets/types.py); None = any column count.
SCENE_ARRAYS = {"points": (np.float32, 2, 3), "colors": (np.uint8, 2, 3), "semantic": (np.int32, 1, None),
                "instance": (np.int32, 1, None), "boxes": (np.float32, 2, 7), "box_labels": (np.int32, 1, None),
                "box_instance": (np.int32, 1, None)}


def field_problems(scene: Scene, info: DatasetInfo) -> list[tuple[str, str]]:
    """Every problem of ``scene`` as (field, one-line message); empty when the scene is sound."""
    problems = []
    for name, (dtype, ndim, cols) in SCENE_ARRAYS.items():
        a = np.asarray(getattr(scene, name))
        if a.dtype != dtype or a.ndim != ndim or (cols is not None and a.shape[1] != cols):
            problems.append((name, f"{name}: {a.dtype} {a.shape}, expected {np.dtype(dtype)} with {ndim} dims"
                                   + (f" and {cols} columns" if cols else "")))
    if problems:
        return problems
    n = scene.num_points
    if n == 0:
        problems.append(("points", "empty: 0 points"))
    for name in ("colors", "semantic", "instance"):
        if len(getattr(scene, name)) != n:
            problems.append((name, f"{name}: {len(getattr(scene, name))} values for {n} points"))
    if len(scene.box_labels) != len(scene.boxes) or len(scene.box_instance) != len(scene.boxes):
        problems.append(("boxes", f"{len(scene.boxes)} boxes but {len(scene.box_labels)} labels, "
                                  f"{len(scene.box_instance)} instance ids"))
    bad = int(n - np.count_nonzero(np.isfinite(scene.points).all(axis=1)))
    if bad:
        problems.append(("points", f"{bad} of {n} points have non-finite (NaN/inf) coordinates (readers drop them "
                                   "by default, or refuse the scene with non_finite='error')"))
    problems += [("boxes", p) for p in box_problems(scene.boxes)]
    sem = scene.semantic
    outside = (sem != IGNORE_INDEX) & ((sem < 0) | (sem >= len(info.seg_classes)))
    if outside.any():
        problems.append(("semantic", f"semantic ids {_span(sem[outside])} outside 0..{len(info.seg_classes) - 1} "
                                     f"(and {IGNORE_INDEX} = unlabelled) at {int(outside.sum())} points"))
    if len(scene.instance) and scene.instance.min() < 0:
        problems.append(("instance", f"instance ids down to {scene.instance.min()}; expected ids >= 0 (0 = none)"))
    labels = scene.box_labels
    if len(labels) and (labels.min() < 0 or labels.max() >= len(info.det_classes)):
        problems.append(("box_labels", f"box labels {_span(labels)} outside 0..{len(info.det_classes) - 1}"))
    return problems


def box_problems(boxes: np.ndarray) -> list[str]:
    """What is wrong with (M, 7) boxes ``[cx, cy, cz, dx, dy, dz, yaw]``: non-finite values, negative extents
    (a zero extent is a flat or one-point object, which exports derive from instances)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    problems = []
    finite = np.isfinite(boxes).all(axis=1)
    if not finite.all():
        problems.append(f"non-finite box parameters in {int((~finite).sum())} of {len(boxes)} boxes")
    negative = finite & (boxes[:, 3:6] < 0).any(axis=1)
    if negative.any():
        first = int(np.flatnonzero(negative)[0])
        problems.append(f"{int(negative.sum())} of {len(boxes)} boxes have a negative extent (box {first}: "
                        f"{np.round(boxes[first, 3:6], 4).tolist()}); expected full extents dx, dy, dz >= 0")
    return problems


def _span(values: np.ndarray) -> str:
    low, high = int(values.min()), int(values.max())
    return f"{low}" if low == high else f"{low}..{high}"

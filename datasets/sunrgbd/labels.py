"""SUN RGB-D's 10-class detection benchmark and the votenet label files' boxes in the harness convention.

SUN RGB-D has no per-point labels. ``SUNRGBD_INFO.seg_classes`` still names the 10 classes (identity
``seg_to_det``) so that components sized by the segmentation label space work, but every point's
semantic label is ``IGNORE_INDEX``: segmentation metrics on SUN RGB-D are undefined (all NaN), only
detection is evaluated.
"""
from __future__ import annotations

import collections
import pathlib

import numpy as np

from datasets.sunrgbd.camera import SunRgbdError
from datasets.types import DatasetInfo

DET_CLASSES = ("bed", "table", "sofa", "chair", "toilet", "desk", "dresser", "night_stand", "bookshelf", "bathtub")
CLASS_INDEX = {name: i for i, name in enumerate(DET_CLASSES)}

SUNRGBD_INFO = DatasetInfo(
    name="sunrgbd",
    seg_classes=DET_CLASSES,
    det_classes=DET_CLASSES,
    seg_to_det=tuple(range(len(DET_CLASSES))),
    has_yaw=True,
)

LABEL_LINE = "classname xmin ymin w h cx cy cz c0 c1 c2 ox oy"
_NUMBERS_PER_LINE = 12


def parse_label_line(line: str, where: str) -> tuple[str, np.ndarray]:
    """(raw class name, the 12 numbers) of one votenet label line; ``where`` names it in errors."""
    tokens = line.split()
    # Names are single tokens in the export; taking the numbers from the end keeps a name with a space.
    if len(tokens) < _NUMBERS_PER_LINE + 1:
        raise SunRgbdError(f"{where}: {len(tokens)} fields, expected '{LABEL_LINE}'")
    try:
        numbers = np.array(tokens[-_NUMBERS_PER_LINE:], dtype=np.float64)
    except ValueError:
        raise SunRgbdError(f"{where}: non-numeric field, expected '{LABEL_LINE}'") from None
    return " ".join(tokens[:-_NUMBERS_PER_LINE]), numbers


def label_box(numbers: np.ndarray) -> np.ndarray:
    """Harness box ``[cx, cy, cz, dx, dy, dz, yaw]`` from a label line's 12 numbers.

    c0..c2 are half sizes; the box's own x axis is the orientation vector (ox, oy) and carries c1
    (votenet: ``l = c1`` "along heading arrow", ``w = c0``; mmdet3d: sizes ``[2 c1, 2 c0, 2 c2]``).
    yaw = atan2(oy, ox) = -(votenet heading); on frame 000001 it matches the room's walls (-7.5 deg)
    within 1.6 deg, where the negated yaw is 13 deg off.
    """
    cx, cy, cz, c0, c1, c2, ox, oy = numbers[4:12]
    return np.array([cx, cy, cz, 2.0 * c1, 2.0 * c0, 2.0 * c2, np.arctan2(oy, ox)], dtype=np.float64)


def read_votenet_boxes(label_file: pathlib.Path | str,
                       dropped: collections.Counter | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (B, 7) float64 in the harness convention and labels (B,) int32 (0..9) of a label file.

    Objects whose raw class is not one of the 10 benchmark classes are dropped; pass a ``Counter`` as
    ``dropped`` to count them by raw name.
    """
    path = pathlib.Path(label_file)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise SunRgbdError(f"{path}: missing label file (expected label/NNNNNN.txt, one '{LABEL_LINE}' "
                           "per object)") from None
    boxes, labels = [], []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        name, numbers = parse_label_line(line, f"{path}: line {i}")
        if name not in CLASS_INDEX:
            if dropped is not None:
                dropped[name] += 1
            continue
        boxes.append(label_box(numbers))
        labels.append(CLASS_INDEX[name])
    return np.array(boxes, dtype=np.float64).reshape(-1, 7), np.array(labels, dtype=np.int32)

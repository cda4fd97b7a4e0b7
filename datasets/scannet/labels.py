"""ScanNet v2 label spaces: NYU40 ids -> ScanNet-20 segmentation and ScanNet-18 detection indices.

Per-point labels in every ScanNet export are NYU40 ids (0 = unannotated). The benchmark classes
and their order follow votenet / mmdet3d (MANIFEST.md section 4), names spelt as mmdet3d does
(``showercurtrain``; NYU40 id 39 is ``otherfurniture`` for segmentation but ``garbagebin`` for
detection).
"""
from __future__ import annotations

import numpy as np

from datasets.types import IGNORE_INDEX, DatasetInfo

SEG_NYU40_IDS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)
SEG_CLASSES: tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
    "counter", "desk", "curtain", "refrigerator", "showercurtrain", "toilet", "sink", "bathtub", "otherfurniture",
)
DET_NYU40_IDS: tuple[int, ...] = SEG_NYU40_IDS[2:]
DET_CLASSES: tuple[str, ...] = SEG_CLASSES[2:-1] + ("garbagebin",)
NUM_NYU40 = 40


def _lookup(ids: tuple[int, ...], fill: int) -> np.ndarray:
    table = np.full(NUM_NYU40 + 1, fill, dtype=np.int32)
    table[list(ids)] = np.arange(len(ids), dtype=np.int32)
    return table


_SEG_LUT = _lookup(SEG_NYU40_IDS, IGNORE_INDEX)
_DET_LUT = _lookup(DET_NYU40_IDS, -1)


def _apply(lut: np.ndarray, ids: np.ndarray, fill: int) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        if not np.all(np.isfinite(ids)) or not np.array_equal(ids, np.round(ids)):
            raise ValueError(f"NYU40 ids must be integers, got non-integral values of dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    out = np.full(ids.shape, fill, dtype=np.int32)
    ok = (ids >= 0) & (ids <= NUM_NYU40)  # ids outside 0..40 are not NYU40 classes: ignore them
    out[ok] = lut[ids[ok]]
    return out


def nyu40_to_seg(ids: np.ndarray) -> np.ndarray:
    """ScanNet-20 segmentation index (int32) of each NYU40 id; ``IGNORE_INDEX`` for the other ids."""
    return _apply(_SEG_LUT, ids, IGNORE_INDEX)


def nyu40_to_det(ids: np.ndarray) -> np.ndarray:
    """ScanNet-18 detection index (int32) of each NYU40 id; -1 for ids that are not detected."""
    return _apply(_DET_LUT, ids, -1)


SCANNET_INFO = DatasetInfo(
    name="scannet",
    seg_classes=SEG_CLASSES,
    det_classes=DET_CLASSES,
    seg_to_det=tuple(int(d) for d in nyu40_to_det(np.array(SEG_NYU40_IDS))),
    has_yaw=False,
)

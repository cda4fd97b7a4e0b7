"""How often each detection class occurs in a split: boxes per class, for sizing evaluation splits.

A long-tailed split needs enough scenes that its rarest classes occur several times, or their AP
and IoU are noise; these counts say how many.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from datasets.types import Scene


def box_counts(scenes: Iterable[Scene], det_classes: Sequence[str]) -> dict[str, int]:
    """Number of ground-truth boxes of each detection class over ``scenes``, in class order."""
    counts = np.zeros(len(det_classes), dtype=np.int64)
    for scene in scenes:
        counts += np.bincount(scene.box_labels, minlength=len(det_classes))[:len(det_classes)]
    return {name: int(n) for name, n in zip(det_classes, counts)}


def box_counts_by_size(dataset, split: str, sizes: Sequence[int]) -> dict[int, dict[str, int]]:
    """Boxes per class in the first n scenes of ``split``, for each n in ``sizes``.

    Scenes are read once, in index order; a dataset whose scenes do not depend on the split size
    (``SyntheticIndoor``) thereby gives the counts of a split of each size. ``dataset`` needs
    ``info``, ``num_scenes`` and ``scene``.
    """
    if not sizes or min(sizes) < 0 or max(sizes) > dataset.num_scenes(split):
        raise ValueError(f"sizes {list(sizes)} must be in 0..{dataset.num_scenes(split)} (scenes in {split!r})")
    classes = dataset.info.det_classes
    per_scene = np.zeros((max(sizes), len(classes)), dtype=np.int64)
    for index in range(max(sizes)):
        per_scene[index] = list(box_counts([dataset.scene(split, index)], classes).values())
    cumulative = np.concatenate([np.zeros((1, len(classes)), np.int64), per_scene.cumsum(axis=0)])
    return {n: {name: int(c) for name, c in zip(classes, cumulative[n])} for n in sizes}

"""Semantic segmentation mIoU / mAcc / overall accuracy, DESIGN.md 2.10 (matches mmdet3d ``seg_eval``).

Conventions, each named:

- SPLIT_CONFUSION: one confusion matrix summed over every point of the split (not a mean of
  per-scene scores). Rows are ground truth, columns predictions.
- IGNORE_INDEX: points whose GT equals ``ignore_index`` are dropped, whatever their prediction
  (default -1, the harness's ``datasets.types.IGNORE_INDEX``). An ignore index inside
  ``[0, num_classes)`` is also a class a model can predict: its GT points are dropped as above,
  its IoU and accuracy are NaN and excluded from mIoU / mAcc, and a prediction of it on a kept
  point stays in the matrix, a false negative of that point's true class and a wrong point for
  oAcc (the point is not dropped). Any other GT or prediction outside ``[0, num_classes)`` is an
  error, not silently dropped (mmdet3d drops out-of-range GT).
- IOU: IoU_c = TP / (TP + FP + FN); a class absent from both GT and predictions is NaN and
  excluded from mIoU (a class only predicted has IoU 0, unless it is the ignore index).
- ACC: acc_c = TP / (TP + FN), the recall of class c; NaN where the class has no GT.
- MEANS: mIoU and mAcc are NaN-means over classes; oAcc = correct points / kept points. An empty
  mean (or no kept point) is NaN, without a warning.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_MAX_DENSE_PAIRS = 1 << 20  # label_pairs counts (gt, pred) pairs in one array below this many combinations

def label_pairs(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """A scene's confusion before the class count and the ignore index are known: (K, 3) int64 rows
    ``[gt, pred, points]``, one per distinct (GT, prediction) pair, sorted by (gt, pred).

    Kilobytes where the labels are megabytes: what a torchrun rank sends for each scene it evaluated
    (``bench.tasks``); ``confusion_from_pairs`` sums them into a matrix. Raises ``ValueError`` on a
    length mismatch or non-integer labels.
    """
    gt = _int_labels(gt, "gt")
    pred = _int_labels(pred, "pred")
    if gt.shape != pred.shape:
        raise ValueError(
            f"expected as many predictions as GT labels, got {len(pred)} predictions for {len(gt)} points"
        )
    if len(gt) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    gt_low, pred_low = int(gt.min()), int(pred.min())
    gt_span, pred_span = int(gt.max()) - gt_low + 1, int(pred.max()) - pred_low + 1
    if gt_span * pred_span > _MAX_DENSE_PAIRS:  # labels far apart (invalid ones): sort the pairs instead
        pairs, counts = np.unique(np.stack([gt, pred], axis=1), axis=0, return_counts=True)
        return np.column_stack([pairs, counts]).astype(np.int64, copy=False)
    # One bincount over the labels' (small) range: ~50x faster than sorting a scene's pairs.
    counts = np.bincount((gt - gt_low) * pred_span + (pred - pred_low), minlength=gt_span * pred_span)
    present = np.flatnonzero(counts)
    return np.column_stack([present // pred_span + gt_low, present % pred_span + pred_low, counts[present]])


def confusion_from_pairs(pairs: np.ndarray, num_classes: int, ignore_index: int = -1) -> np.ndarray:
    """(num_classes, num_classes) int64 counts ``[gt, pred]`` of ``label_pairs`` rows whose GT is not ignored.

    Raises ``ValueError`` on a kept GT / prediction outside ``[0, num_classes)`` (the smallest such value).
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 3)
    kept = pairs[pairs[:, 0] != ignore_index]
    for name, values in (("GT label", kept[:, 0]), ("prediction", np.sort(kept[:, 1]))):
        bad = (values < 0) | (values >= num_classes)
        if bad.any():
            hint = f" (ignore_index is {ignore_index})" if name == "GT label" else ""
            raise ValueError(f"{name} {values[bad][0]} is outside [0, {num_classes}){hint}")
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    confusion[kept[:, 0], kept[:, 1]] = kept[:, 2]  # the pairs are distinct: no two rows hit one cell
    return confusion


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int = -1) -> np.ndarray:
    """(num_classes, num_classes) int64 counts, ``[gt, pred]``, over points whose GT is not ignored.

    Raises ``ValueError`` on a length mismatch, non-integer labels, or a kept GT / prediction
    outside ``[0, num_classes)``.
    """
    return confusion_from_pairs(label_pairs(gt, pred), num_classes, ignore_index)


def segmentation_scores(confusion: np.ndarray, ignore_index: int = -1) -> dict:
    """IoU / accuracy per class and their means from a split's confusion matrix ``[gt, pred]``.

    An ``ignore_index`` inside ``[0, num_classes)`` makes that class's IoU and accuracy NaN; its
    column still counts (IGNORE_INDEX in the module docstring).
    """
    _check_ignore_index(ignore_index)
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    num_gt = confusion.sum(axis=1)
    num_pred = confusion.sum(axis=0)
    union = num_gt + num_pred - tp
    iou = np.divide(tp, union, out=np.full_like(tp, np.nan), where=union > 0)
    acc = np.divide(tp, num_gt, out=np.full_like(tp, np.nan), where=num_gt > 0)
    if 0 <= ignore_index < len(tp):
        # Its GT is unlabelled, so its predictions can only be errors: scoring it would be 0 by
        # construction and pull mIoU down (mmdet3d seg_eval sets it to NaN the same way).
        iou[ignore_index] = acc[ignore_index] = np.nan
    total = confusion.sum()
    return {
        "iou": iou.tolist(),
        "miou": _nanmean(iou),
        "acc": acc.tolist(),
        "macc": _nanmean(acc),
        "oacc": float(tp.sum() / total) if total > 0 else float("nan"),
    }


def evaluate_segmentation(
    gt_list: Sequence[np.ndarray],
    pred_list: Sequence[np.ndarray],
    num_classes: int,
    ignore_index: int = -1,
) -> dict:
    """mIoU, mAcc and overall accuracy of a split (conventions: module docstring).

    Args:
        gt_list: per-scene (N_i,) integer GT labels, ``ignore_index`` for unlabelled points.
        pred_list: per-scene (N_i,) integer predictions, same lengths as ``gt_list``.
        num_classes: number of segmentation classes.
        ignore_index: GT value of points to drop (default -1); inside ``[0, num_classes)`` that
            class is also left unscored (IoU and accuracy NaN).

    Returns:
        ``{"iou": [...], "miou": float, "acc": [...], "macc": float, "oacc": float}``; per-class
        values are Python lists of ``num_classes`` floats, NaN where undefined.

    Raises:
        ValueError: one line naming the scene and the problem.
    """
    _check_arguments(num_classes, ignore_index)
    if len(gt_list) != len(pred_list):
        raise ValueError(f"expected one prediction array per scene, got {len(pred_list)} for {len(gt_list)} scenes")
    scenes = []
    for i, (gt, pred) in enumerate(zip(gt_list, pred_list)):
        try:
            scenes.append(label_pairs(gt, pred))
        except ValueError as err:
            raise ValueError(f"scene {i}: {err}") from None
    return evaluate_segmentation_pairs(scenes, num_classes, ignore_index)


def evaluate_segmentation_pairs(scene_pairs: Sequence[np.ndarray], num_classes: int, ignore_index: int = -1) -> dict:
    """``evaluate_segmentation`` of a split given as each scene's ``label_pairs`` (in any order: the
    split's confusion is a sum of integers). Raises ``ValueError`` naming the scene by its index."""
    _check_arguments(num_classes, ignore_index)
    total = np.zeros((num_classes, num_classes), dtype=np.int64)
    for i, pairs in enumerate(scene_pairs):
        try:
            total += confusion_from_pairs(pairs, int(num_classes), ignore_index)
        except ValueError as err:
            raise ValueError(f"scene {i}: {err}") from None
    return segmentation_scores(total, ignore_index)


def _check_arguments(num_classes: int, ignore_index: int) -> None:
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes: expected a positive integer, got {num_classes!r}")
    _check_ignore_index(ignore_index)


def _check_ignore_index(ignore_index: int) -> None:
    """``ValueError`` unless ``ignore_index`` is an integer: it is compared with labels and names a class."""
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise ValueError(f"ignore_index: expected an integer, got {ignore_index!r}")


def _int_labels(labels: np.ndarray, name: str) -> np.ndarray:
    """A 1-D int64 view of integer labels."""
    arr = np.asarray(labels)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of labels, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected integer labels, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _nanmean(values: np.ndarray) -> float:
    """Mean of the non-NaN values; NaN (without a warning) if there are none."""
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if len(kept) else float("nan")

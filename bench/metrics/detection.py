"""3D detection AP / AR at IoU thresholds (AP25 / AP50), DESIGN.md 2.10.

Matches VoteNet / 3DETR ``eval_det_cls`` except where noted, with every convention named:

- POOLED_RANKING: per class, the detections of all scenes are pooled and sorted by score,
  descending, with a STABLE sort: tied scores keep input order (scene order, then prediction
  order). (VoteNet uses an unstable ``np.argsort(-confidence)``.)
- GREEDY_BEST_GT: walking down the ranking, a detection looks at the GTs of its class in its own
  scene and takes the one of highest IoU, already-matched GTs included (first GT on IoU ties).
- STRICT_THRESHOLD: it is a true positive iff that IoU is ``> threshold`` (strictly) and that GT
  is still unmatched (the GT then becomes matched); otherwise it is a false positive. So a
  duplicate detection of a matched GT is a false positive, and it does not fall back to its
  second-best GT.
- VOC_ALL_POINT_AP: AP is the area under the monotone (non-increasing) envelope of the
  precision/recall curve, over all points (VOC 2010+, not 11-point).
- ABSENT_CLASSES: a class with GT but no predictions has AP 0 and recall 0; a class with
  predictions but no GT anywhere in the split has AP 0 and recall 0 (every detection is a false
  positive; 3DETR's guard for zero GT); a class with neither has AP NaN and recall NaN and is not
  evaluated. mAP and AR are the means of AP and of recall over the evaluated classes (those
  present in GT or predictions), so a predicted-only class counts as 0 in both. An all-NaN mean
  is NaN, without a warning.
- FINAL_RECALL: recall of a class is TP / number of GT at the end of its ranked list.

Because the best GT of a detection includes already-matched GTs, it does not depend on the
ranking, so everything is vectorised: the IoU of every (detection, same-class GT in the same scene)
pair of the whole split is computed in one call, and a detection is a true positive iff it is the
first in ranking order to claim its best GT with IoU above the threshold.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from datasets.box_iou import as_boxes, paired_box_iou_3d

SCENE_KEYS = ("gt_boxes", "gt_labels", "pred_boxes", "pred_labels", "pred_scores")


def evaluate_detection(
    scenes: Sequence[Mapping[str, np.ndarray]],
    iou_thresholds: Sequence[float],
    num_classes: int,
) -> dict[float, dict]:
    """AP and recall per class, mAP and AR, at each IoU threshold (conventions: module docstring).

    Args:
        scenes: one mapping per scene with ``gt_boxes`` (G, 6|7), ``gt_labels`` (G,),
            ``pred_boxes`` (P, 6|7), ``pred_labels`` (P,), ``pred_scores`` (P,). Boxes are
            ``[cx, cy, cz, dx, dy, dz(, yaw)]``, centre and full extents, (N, 6) meaning yaw 0.
            Labels are integer class ids in ``[0, num_classes)``.
        iou_thresholds: e.g. ``(0.25, 0.5)``; a detection needs IoU strictly above it.
        num_classes: number of detection classes.

    Returns:
        ``{threshold: {"ap": [...], "recall": [...], "mAP": float, "AR": float}}`` keyed by the
        thresholds as given; ``"ap"`` and ``"recall"`` are Python lists of ``num_classes`` floats
        (NaN where not evaluated), ``"mAP"`` and ``"AR"`` Python floats.

    Raises:
        ValueError: one line naming the scene index, the field and what was expected.
    """
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes: expected a positive integer, got {num_classes!r}")
    thresholds = [iou_thresholds] if np.ndim(iou_thresholds) == 0 else list(iou_thresholds)
    for t in thresholds:
        if not np.isfinite(t):
            raise ValueError(f"iou_thresholds: expected finite numbers, got {t!r}")
    split = _stack_scenes(scenes, int(num_classes))
    best_iou, best_gt = _best_gt(split, int(num_classes))
    # Rank by class, then score descending; lexsort is stable, so ties keep input order.
    order = np.lexsort((-split["pred_scores"], split["pred_labels"]))
    bounds = np.searchsorted(split["pred_labels"][order], np.arange(num_classes + 1))
    num_gt = np.bincount(split["gt_labels"], minlength=num_classes)
    results = {}
    for t in thresholds:
        tp = _true_positives(best_iou[order], best_gt[order], t)
        ap, recall = _per_class(tp, bounds, num_gt)
        results[t] = {"ap": ap.tolist(), "recall": recall.tolist(), "mAP": _nanmean(ap), "AR": _nanmean(recall)}
    return results


def _stack_scenes(scenes: Sequence[Mapping[str, np.ndarray]], num_classes: int) -> dict[str, np.ndarray]:
    """Validate every scene and concatenate the split, with the scene index of each box."""
    if isinstance(scenes, Mapping) or not isinstance(scenes, Sequence):
        raise ValueError(f"scenes: expected a list of per-scene mappings, got {type(scenes).__name__}")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in (*SCENE_KEYS, "gt_scene", "pred_scene")}
    for i, scene in enumerate(scenes):
        checked = _check_scene(i, scene, num_classes)
        for key, value in checked.items():
            parts[key].append(value)
        parts["gt_scene"].append(np.full(len(checked["gt_labels"]), i))
        parts["pred_scene"].append(np.full(len(checked["pred_labels"]), i))
    empty = {"gt_boxes": np.zeros((0, 7)), "pred_boxes": np.zeros((0, 7)), "pred_scores": np.zeros(0)}
    return {k: np.concatenate(v) if v else empty.get(k, np.zeros(0, dtype=np.int64)) for k, v in parts.items()}


def _check_scene(i: int, scene: Mapping[str, np.ndarray], num_classes: int) -> dict[str, np.ndarray]:
    """One scene's arrays, validated; ``ValueError`` naming ``scenes[i]`` and the field otherwise."""
    keys = ", ".join(SCENE_KEYS)
    if not isinstance(scene, Mapping):
        raise ValueError(f"scenes[{i}]: expected a mapping with keys {keys}, got {type(scene).__name__}")
    missing = [k for k in SCENE_KEYS if k not in scene]
    if missing:
        raise ValueError(f"scenes[{i}] is missing {', '.join(map(repr, missing))} (expected keys {keys})")
    out = {
        "gt_boxes": as_boxes(scene["gt_boxes"], f"scenes[{i}]['gt_boxes']"),
        "gt_labels": _labels(scene["gt_labels"], f"scenes[{i}]['gt_labels']", num_classes),
        "pred_boxes": as_boxes(scene["pred_boxes"], f"scenes[{i}]['pred_boxes']"),
        "pred_labels": _labels(scene["pred_labels"], f"scenes[{i}]['pred_labels']", num_classes),
        "pred_scores": _scores(scene["pred_scores"], f"scenes[{i}]['pred_scores']"),
    }
    for boxes, others in (("gt_boxes", ("gt_labels",)), ("pred_boxes", ("pred_labels", "pred_scores"))):
        for other in others:
            if len(out[other]) != len(out[boxes]):
                raise ValueError(
                    f"scenes[{i}]: expected one entry of {other!r} per row of {boxes!r}, "
                    f"got {len(out[other])} and {len(out[boxes])}"
                )
    return out


def _labels(labels: np.ndarray, name: str, num_classes: int) -> np.ndarray:
    """Integer class ids in ``[0, num_classes)`` as an int64 (N,) array."""
    arr = np.asarray(labels)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected shape (N,), got {arr.shape}")
    if arr.dtype.kind == "f" and np.isfinite(arr).all() and (arr == np.round(arr)).all():
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected integer class ids, got dtype {arr.dtype}")
    bad = (arr < 0) | (arr >= num_classes)
    if bad.any():
        raise ValueError(f"{name}: expected class ids in [0, {num_classes}), found {arr[bad][0]}")
    return arr.astype(np.int64)


def _scores(scores: np.ndarray, name: str) -> np.ndarray:
    """Finite scores as a float64 (N,) array."""
    try:
        arr = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a numeric array of shape (N,)") from None
    if arr.size == 0:
        return np.zeros(0)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected shape (N,), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: expected finite values, found nan/inf at index {int(np.argmin(np.isfinite(arr)))}")
    return arr


def _best_gt(split: dict[str, np.ndarray], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per detection: IoU with its best same-class GT in its scene (-inf if none), and that GT's index.

    Pairs every detection with each GT of the same (scene, class) key, keeping GTs in input order
    so that an IoU tie goes to the first GT, as in VoteNet's loop.
    """
    gt_key = split["gt_scene"] * num_classes + split["gt_labels"]
    det_key = split["pred_scene"] * num_classes + split["pred_labels"]
    gt_order = np.argsort(gt_key, kind="stable")
    first = np.searchsorted(gt_key[gt_order], det_key, side="left")
    count = np.searchsorted(gt_key[gt_order], det_key, side="right") - first
    offset = np.cumsum(count) - count
    det = np.repeat(np.arange(len(det_key)), count)
    gt = gt_order[first[det] + np.arange(len(det)) - offset[det]]
    iou = paired_box_iou_3d(split["pred_boxes"][det], split["gt_boxes"][gt])

    best_iou = np.full(len(det_key), -np.inf)
    best_gt = np.full(len(det_key), -1)
    has = count > 0
    if has.any():
        starts = offset[has]
        top = np.maximum.reduceat(iou, starts)
        at_top = np.where(iou == np.repeat(top, count[has]), np.arange(len(iou)), len(iou))
        best_iou[has] = top
        best_gt[has] = gt[np.minimum.reduceat(at_top, starts)]
    return best_iou, best_gt


def _true_positives(best_iou: np.ndarray, best_gt: np.ndarray, threshold: float) -> np.ndarray:
    """TP flags of ranked detections: the first (in rank order) to claim a GT above threshold wins."""
    claims = np.flatnonzero(best_iou > threshold)
    _, first = np.unique(best_gt[claims], return_index=True)
    tp = np.zeros(len(best_iou), dtype=bool)
    tp[claims[first]] = True
    return tp


def _per_class(tp: np.ndarray, bounds: np.ndarray, num_gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """VOC AP and final recall per class from class-sorted TP flags (class c at bounds[c]:bounds[c+1])."""
    num_classes = len(num_gt)
    ap = np.full(num_classes, np.nan)
    recall = np.full(num_classes, np.nan)
    for c in range(num_classes):
        hits = tp[bounds[c] : bounds[c + 1]]
        if num_gt[c] > 0 and len(hits) > 0:
            ap[c], recall[c] = voc_ap(hits, int(num_gt[c])), hits.sum() / num_gt[c]
        elif num_gt[c] > 0 or len(hits) > 0:
            # Evaluated with nothing found: no detection to rank, or no GT to find (3DETR takes
            # recall 0 there rather than 0 / 0, so a predicted-only class lowers AR as it does mAP).
            ap[c], recall[c] = 0.0, 0.0
    return ap, recall


def voc_ap(tp_ranked: np.ndarray, num_gt: int) -> float:
    """VOC all-point AP of a ranked list of TP flags against ``num_gt`` > 0 ground truths.

    The area under the precision envelope ``p(r) = max(precision at recall >= r)``, summed over
    the recall steps (the VOC 2010+ / VoteNet ``voc_ap(use_07_metric=False)`` formula).
    """
    ctp = np.cumsum(tp_ranked)
    rec = np.concatenate([[0.0], ctp / num_gt, [1.0]])
    prec = np.concatenate([[0.0], ctp / np.arange(1, len(ctp) + 1), [0.0]])
    envelope = np.maximum.accumulate(prec[::-1])[::-1]
    steps = np.flatnonzero(rec[1:] != rec[:-1])
    return float(np.sum((rec[steps + 1] - rec[steps]) * envelope[steps + 1]))


def _nanmean(values: np.ndarray) -> float:
    """Mean of the non-NaN values; NaN (without a warning) if there are none."""
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if len(kept) else float("nan")

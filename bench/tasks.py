"""Downstream evaluation tasks: collect a method's predictions scene by scene, then score them.

Each task yields metrics keyed ``<dataset>/<task>/<metric>`` (e.g. ``synthetic/det/AP25``) in percent, as
the paper's tables report them, plus per-class values under ``<dataset>/<task>/class/<name>/<metric>``.
A detection task for one of a row's named detection heads keys them ``<dataset>/det-<head>/<metric>``.
"""
from __future__ import annotations

from collections.abc import Sequence

import gin
import numpy as np

from bench.metrics import evaluate_detection, evaluate_segmentation
from datasets.types import DatasetInfo, Scene


@gin.register
class SemanticSegmentationTask:
    """mIoU / mAcc / overall accuracy over the whole split (DESIGN 2.10)."""

    key = "seg"
    metric_names = ("mIoU", "mAcc", "oAcc")  # the headline metrics, ``<dataset>/seg/<name>``

    def __init__(self):
        self._gt: list[np.ndarray] = []
        self._pred: list[np.ndarray] = []

    def add(self, method, scene: Scene) -> None:
        pred = np.asarray(method.predict_segmentation(scene))
        self._gt.append(scene.semantic)
        self._pred.append(pred)

    def result(self, info: DatasetInfo) -> dict[str, float]:
        scores = evaluate_segmentation(self._gt, self._pred, len(info.seg_classes), info.ignore_index)
        prefix = f"{info.name}/{self.key}"
        metrics = {f"{prefix}/mIoU": 100 * scores["miou"], f"{prefix}/mAcc": 100 * scores["macc"],
                   f"{prefix}/oAcc": 100 * scores["oacc"]}
        for name, iou, acc in zip(info.seg_classes, scores["iou"], scores["acc"]):
            metrics[f"{prefix}/class/{name}/IoU"] = 100 * float(iou)
            metrics[f"{prefix}/class/{name}/Acc"] = 100 * float(acc)
        return metrics


@gin.register
class DetectionTask:
    """AP / AR at each IoU threshold, VOC all-point AP with strict IoU > threshold (DESIGN 2.10).

    ``head`` "" scores ``method.predict_detection(scene)`` under ``det``; a head name scores
    ``method.predict_detection(scene, head=head)`` (a ``FinetuneRow``'s ``detection_heads``) under
    ``det-<head>``, e.g. ``groupfree/DetectionTask.head = 'groupfree'`` -> ``synthetic/det-groupfree/AP25``.
    """

    key = "det"

    def __init__(self, iou_thresholds: Sequence[float] = (0.25, 0.5), head: str = ""):
        self.iou_thresholds = tuple(iou_thresholds)
        if not isinstance(head, str) or "/" in head:
            raise ValueError(f"DetectionTask.head: expected a name without '/', got {head!r}")
        self.head = head
        self.key = f"det-{head}" if head else "det"
        self._scenes: list[dict[str, np.ndarray]] = []

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The headline metrics, ``<dataset>/<key>/<name>``: AP and AR at each threshold."""
        tags = [f"{round(100 * t)}" for t in self.iou_thresholds]
        return tuple(f"AP{t}" for t in tags) + tuple(f"AR{t}" for t in tags)

    def add(self, method, scene: Scene) -> None:
        detections = method.predict_detection(scene, head=self.head) if self.head else method.predict_detection(scene)
        self._scenes.append({"gt_boxes": scene.boxes, "gt_labels": scene.box_labels,
                             "pred_boxes": detections.boxes, "pred_labels": detections.labels,
                             "pred_scores": detections.scores})

    def result(self, info: DatasetInfo) -> dict[str, float]:
        scores = evaluate_detection(self._scenes, self.iou_thresholds, len(info.det_classes))
        prefix = f"{info.name}/{self.key}"
        metrics = {}
        for threshold in self.iou_thresholds:  # names as metric_names
            tag = f"{round(100 * threshold)}"
            metrics[f"{prefix}/AP{tag}"] = 100 * scores[threshold]["mAP"]
            metrics[f"{prefix}/AR{tag}"] = 100 * scores[threshold]["AR"]
            for name, ap in zip(info.det_classes, scores[threshold]["ap"]):
                metrics[f"{prefix}/class/{name}/AP{tag}"] = 100 * float(ap)
        return metrics

"""Downstream evaluation tasks: collect a method's predictions scene by scene, then score them.

Each task yields metrics keyed ``<dataset>/<task>/<metric>`` (e.g. ``synthetic/det/AP25``) in percent, as
the paper's tables report them, plus per-class values under ``<dataset>/<task>/class/<name>/<metric>``.
A detection task for one of a row's named detection heads keys them ``<dataset>/det-<head>/<metric>``.

A task's state is a list of per-scene records, in scene order: ``scene_record(method, scene)`` predicts one
scene and returns what it adds (picklable, small), ``add_record`` appends it, ``add`` does both. Under
torchrun each rank makes the records of its share of the scenes and rank 0 adds them all in scene order
(``bench.row_context.RowContext.evaluate``), so ``result`` sees what one process would have made.
"""
from __future__ import annotations

from collections.abc import Sequence

import gin
import numpy as np

from bench.metrics import evaluate_detection
from bench.metrics.segmentation import evaluate_segmentation_pairs, label_pairs
from datasets.types import DatasetInfo, Scene


@gin.register
class SemanticSegmentationTask:
    """mIoU / mAcc / overall accuracy over the whole split (DESIGN 2.10)."""

    key = "seg"
    metric_names = ("mIoU", "mAcc", "oAcc")  # the headline metrics, ``<dataset>/seg/<name>``

    def __init__(self):
        self._scenes: list[np.ndarray] = []  # each scene's (GT, prediction) pair counts

    def scene_record(self, method, scene: Scene) -> np.ndarray:
        """``scene``'s confusion as (K, 3) rows ``[gt, pred, points]`` (``bench.metrics.segmentation.label_pairs``):
        kilobytes, where its labels and predictions are megabytes."""
        pred = np.asarray(method.predict_segmentation(scene))
        try:
            return label_pairs(scene.semantic, pred)
        except ValueError as err:
            raise ValueError(f"scene {scene.scene_id}: {err}") from None

    def add_record(self, record: np.ndarray) -> None:
        """Add one scene's ``scene_record`` (scenes in split order)."""
        self._scenes.append(record)

    def add(self, method, scene: Scene) -> None:
        """Predict ``scene`` with ``method`` and add its record."""
        self.add_record(self.scene_record(method, scene))

    def result(self, info: DatasetInfo) -> dict[str, float]:
        """The split's metrics from every scene added (module docstring for the keys)."""
        scores = evaluate_segmentation_pairs(self._scenes, len(info.seg_classes), info.ignore_index)
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

    def scene_record(self, method, scene: Scene) -> dict[str, np.ndarray]:
        """``scene``'s boxes and the detections of the task's head: what ``evaluate_detection`` takes per scene."""
        detections = method.predict_detection(scene, head=self.head) if self.head else method.predict_detection(scene)
        return {"gt_boxes": scene.boxes, "gt_labels": scene.box_labels, "pred_boxes": np.asarray(detections.boxes),
                "pred_labels": np.asarray(detections.labels), "pred_scores": np.asarray(detections.scores)}

    def add_record(self, record: dict[str, np.ndarray]) -> None:
        """Add one scene's ``scene_record`` (scenes in split order: ties in score keep that order)."""
        self._scenes.append(record)

    def add(self, method, scene: Scene) -> None:
        """Predict ``scene`` with ``method`` and add its record."""
        self.add_record(self.scene_record(method, scene))

    def result(self, info: DatasetInfo) -> dict[str, float]:
        """The split's metrics from every scene added (module docstring for the keys)."""
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

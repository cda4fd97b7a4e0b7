"""Evaluation metrics, pure numpy, with explicit conventions (DESIGN.md 2.10).

- ``evaluate_detection``: AP / recall per class, mAP and AR at IoU thresholds (AP25 / AP50).
- ``evaluate_segmentation``: IoU / accuracy per class, mIoU, mAcc and overall accuracy.

Helpers live in the submodules: ``box_iou`` (exact 3D IoU of yaw-rotated boxes),
``detection.voc_ap``, ``segmentation.confusion_matrix`` and ``segmentation.segmentation_scores``.
"""
from bench.metrics.detection import evaluate_detection
from bench.metrics.segmentation import evaluate_segmentation

__all__ = ["evaluate_detection", "evaluate_segmentation"]

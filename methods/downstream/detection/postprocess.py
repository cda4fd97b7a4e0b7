"""From detector outputs to per-scene ``Detections`` [prior: 3DETR / VoteNet ``parse_predictions``].

Rule, per scene, on the last decoder layer:
1. 3DETR-style outputs (``logits``, C+1 with no-object last): objectness = 1 - p(no-object); class
   probabilities p(c) = softmax over all C+1 logits, first C. GroupFree3D-style outputs
   (``objectness_logits`` and ``class_logits``): objectness = sigmoid, p(c) = softmax over the C class
   logits [prior: GroupFree3D / VoteNet ``parse_predictions``]. Each query's label is its arg-max class.
2. Keep valid queries with objectness > ``objectness_threshold`` (strict, 3DETR's conf_thresh 0.05).
3. Class-aware greedy 3D NMS over the kept boxes ranked by objectness (as 3DETR): a box is dropped
   when its exact 3D IoU (``datasets.box_iou.box_iou_3d``) with a kept box of the same label is
   > ``nms_iou`` (0.25). 3DETR uses the IoU of the boxes' axis-aligned hulls here [choice: exact IoU].
4. Scores: with ``per_class_proposals`` (3DETR/VoteNet evaluation default) every surviving box is
   reported once per class c with score objectness * p(c); otherwise once, with its arg-max label
   and score objectness * p(label).
5. ``max_detections`` (None = all, as 3DETR) keeps the highest-scoring detections.
"""
from __future__ import annotations

import numpy as np
import torch

from datasets.box_iou import box_iou_3d
from datasets.types import Detections
from methods.downstream.detection.objective import pred_boxes


def nms_3d(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Class-aware greedy NMS with exact 3D IoU: indices kept, highest score first (ties: lower index).

    ``boxes`` (N, 7); a box is suppressed by a higher-ranked kept box of the same label whose IoU
    with it is strictly greater than ``iou_threshold``. Boxes of different labels never interact.
    """
    boxes, scores, labels = np.asarray(boxes), np.asarray(scores), np.asarray(labels)
    keep = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        iou = box_iou_3d(boxes[idx], boxes[idx])
        alive = np.ones(len(idx), dtype=bool)
        for i in range(len(idx)):
            if alive[i]:
                keep.append(idx[i])
                alive[i + 1:] &= iou[i, i + 1:] <= iou_threshold
    keep = np.asarray(keep, dtype=np.int64)
    return keep[np.argsort(-scores[keep], kind="stable")]


def decode_detections(outputs_last: dict[str, torch.Tensor], objectness_threshold: float = 0.05,
                      nms_iou: float = 0.25, max_detections: int | None = None,
                      per_class_proposals: bool = True) -> list[Detections]:
    """The last layer's outputs -> one ``Detections`` per scene (rule in the module docstring)."""
    class_prob, objectness_prob = _probabilities(outputs_last)
    boxes = pred_boxes({k: v.detach().float() for k, v in outputs_last.items()}).cpu().numpy()
    query_valid = outputs_last["query_valid"].cpu().numpy()
    result = []
    for i in range(class_prob.shape[0]):
        cls_prob, objectness = class_prob[i], objectness_prob[i]
        idx = np.flatnonzero(query_valid[i] & (objectness > objectness_threshold))
        labels = cls_prob[idx].argmax(axis=1)
        idx = idx[nms_3d(boxes[i, idx], objectness[idx], labels, nms_iou)]
        if per_class_proposals:
            n, c = len(idx), cls_prob.shape[1]
            box_rows = np.repeat(idx, c)
            det_labels = np.tile(np.arange(c), n)
            scores = (cls_prob[idx] * objectness[idx, None]).ravel()
        else:
            box_rows = idx
            det_labels = cls_prob[idx].argmax(axis=1)
            scores = cls_prob[idx, det_labels] * objectness[idx]
        order = np.argsort(-scores, kind="stable")[:max_detections]
        result.append(Detections(boxes=boxes[i, box_rows[order]].astype(np.float32),
                                 labels=det_labels[order].astype(np.int64),
                                 scores=scores[order].astype(np.float32)))
    return result


def _probabilities(out: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """(class probabilities (B, Q, C), objectness (B, Q)) of a 3DETR- or GroupFree3D-style output."""
    if "objectness_logits" in out:
        cls_prob = out["class_logits"].detach().float().softmax(dim=-1)
        return cls_prob.cpu().numpy(), torch.sigmoid(out["objectness_logits"].detach().float()).cpu().numpy()
    prob = out["logits"].detach().float().softmax(dim=-1).cpu().numpy()
    return prob[..., :-1], 1.0 - prob[..., -1]


@torch.no_grad()
def predict_batch(model: torch.nn.Module, batch: dict[str, torch.Tensor],
                  offsets: torch.Tensor | np.ndarray | None = None, **decode_kwargs) -> list[Detections]:
    """Run a ``Detector3D`` or ``GroupFreeDetector`` in eval mode on ``batch`` and decode, adding each
    scene's offset back.

    ``offsets`` (B, 3): what was subtracted from each scene's coordinates to build the batch (None =
    0); it is added to the box centres so boxes are in the scene's own frame. ``decode_kwargs`` go to
    ``decode_detections``. The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        detections = decode_detections(model(batch)[-1], **decode_kwargs)
    finally:
        model.train(was_training)
    if offsets is not None:
        offsets = offsets.detach().cpu().numpy() if torch.is_tensor(offsets) else np.asarray(offsets)
        for det, offset in zip(detections, offsets):
            det.boxes[:, :3] += offset.astype(np.float32)
    return detections

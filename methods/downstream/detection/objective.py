"""Set-prediction loss of the 3DETR-style detector [prior: 3DETR ``criterion.py``].

Per decoder layer and per scene, queries are matched one-to-one to ground-truth boxes by the
Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) on

    cost = c_cls * (-p(gt class)) + c_center * L1(centres) + c_giou * (-GIoU) + c_obj * (-objectness)

then the layer's loss is

    w_cls * CE(all valid queries; unmatched -> no-object, class weight ``no_object_weight``)
    + [w_center * L1(centre) + w_size * L1(log-extents) + w_giou * (1 - GIoU)
       + w_hcls * CE(heading bin) + w_hreg * Huber(heading residual)] / num_boxes

with ``num_boxes`` = valid GT boxes in the batch (at least 1), as 3DETR; the total is summed over
layers. The CE is a class-weighted mean over the valid queries (``F.cross_entropy`` with weights).

GIoU [choice]: an axis-aligned 3D GIoU of the boxes' enclosing axis-aligned boxes (for yaw boxes the
AABB of the rotated box), differentiable everywhere; 3DETR computes a rotated GIoU on corners.
Units [choice]: centres in metres and sizes as log-extents, where 3DETR uses scene-normalised
coordinates, so its weights act on differently scaled errors.

Defaults: 3DETR's ScanNet recipe (``scripts/scannet_ep1080.sh`` on top of ``main.py``): matcher
cls 1, giou 2, center 0, objectness 0; losses cls 1, no-object 0.25, center 5, size 1, giou 1,
heading bin 0.1, heading residual 0.5 (Huber, delta 1). Its SUN RGB-D recipe changes: matcher giou 3,
center 5, objectness 5; giou loss 0; no-object 0.1.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from methods.downstream.detection.boxes import aabb_giou, angle_to_bin, enclosing_aabb, padded_targets
from methods.downstream.detection.model import Detector3D

_LOSS_KEYS = ("cls", "center", "size", "giou", "heading")


def pred_boxes(out: dict[str, torch.Tensor]) -> torch.Tensor:
    """One layer's output -> (B, Q, 7) boxes ``[cx, cy, cz, dx, dy, dz, yaw]``."""
    return torch.cat([out["center"], out["size"], out["yaw"].unsqueeze(-1)], dim=-1)


@torch.no_grad()
def match_cost(out: dict[str, torch.Tensor], gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
               cost_class: float = 1.0, cost_center: float = 0.0, cost_giou: float = 2.0,
               cost_objectness: float = 0.0) -> torch.Tensor:
    """(B, Q, M) float32 matching cost of every query against every GT box (padding included)."""
    prob = out["logits"].float().softmax(dim=-1)
    q = prob.shape[1]
    # Padding labels may be anything (-1 by convention); their columns are never matched.
    labels = gt_labels.clamp(0, prob.shape[-1] - 2).unsqueeze(1).expand(-1, q, -1)
    pred, gt = pred_boxes(out).float(), gt_boxes.float()
    cost = -cost_class * prob.gather(2, labels)
    if cost_center:
        cost = cost + cost_center * torch.cdist(pred[..., :3], gt[..., :3], p=1)
    if cost_giou:
        cost = cost - cost_giou * aabb_giou(enclosing_aabb(pred)[:, :, None], enclosing_aabb(gt)[:, None])
    if cost_objectness:
        cost = cost - cost_objectness * (1 - prob[..., -1:])
    return cost


def hungarian_match(cost: torch.Tensor, query_valid: torch.Tensor,
                    gt_valid: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per scene, the min-cost one-to-one matching of valid queries to valid GT boxes.

    ``cost`` (B, Q, M); returns per scene (query indices, GT indices), int64 on ``cost``'s device,
    each GT matched at most once (exactly once when there are at least as many queries).
    """
    import scipy.optimize  # here: importing it costs every command; only training matches

    matches = []
    for i in range(cost.shape[0]):
        qi = torch.nonzero(query_valid[i]).squeeze(1)
        gi = torch.nonzero(gt_valid[i]).squeeze(1)
        if len(qi) == 0 or len(gi) == 0:
            empty = torch.zeros(0, dtype=torch.long, device=cost.device)
            matches.append((empty, empty))
            continue
        sub = cost[i][qi][:, gi].detach().float().cpu().numpy()
        rows, cols = scipy.optimize.linear_sum_assignment(np.nan_to_num(sub, nan=1e6))
        matches.append((qi[torch.from_numpy(rows).to(qi.device)], gi[torch.from_numpy(cols).to(gi.device)]))
    return matches


class DetectionObjective(nn.Module):
    """Wraps a ``Detector3D`` for ``methods.train.train``: ``forward(batch)`` -> loss and its parts.

    Returned components (detached) are weighted and summed over layers, so they add up to ``loss``;
    ``heading`` is bin CE + residual Huber (0 without yaw). ``heading_huber_beta`` 0 gives plain L1.
    """

    def __init__(self, detector: Detector3D, cost_class: float = 1.0, cost_center: float = 0.0,
                 cost_giou: float = 2.0, cost_objectness: float = 0.0, weight_cls: float = 1.0,
                 no_object_weight: float = 0.25, weight_center: float = 5.0, weight_size: float = 1.0,
                 weight_giou: float = 1.0, weight_heading_cls: float = 0.1,
                 weight_heading_reg: float = 0.5, heading_huber_beta: float = 1.0):
        super().__init__()
        self.detector = detector
        self.costs = dict(cost_class=cost_class, cost_center=cost_center, cost_giou=cost_giou,
                          cost_objectness=cost_objectness)
        self.weights = dict(cls=weight_cls, center=weight_center, size=weight_size, giou=weight_giou,
                            heading_cls=weight_heading_cls, heading_reg=weight_heading_reg)
        self.no_object_weight = no_object_weight
        self.heading_huber_beta = heading_huber_beta

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = self.detector(batch)
        gt_boxes, gt_labels, gt_valid = padded_targets(batch)
        num_boxes = max(int(gt_valid.sum()), 1)
        parts = {k: gt_boxes.new_zeros(()) for k in _LOSS_KEYS}
        for out in outputs:
            for key, value in self.layer_loss(out, gt_boxes, gt_labels, gt_valid, num_boxes).items():
                parts[key] = parts[key] + value
        loss = sum(parts.values())
        return {"loss": loss, **{k: v.detach() for k, v in parts.items()}}

    def layer_loss(self, out: dict[str, torch.Tensor], gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
                   gt_valid: torch.Tensor, num_boxes: int) -> dict[str, torch.Tensor]:
        """Weighted loss components of one decoder layer's output (matched on that layer)."""
        query_valid = out["query_valid"]
        cost = match_cost(out, gt_boxes, gt_labels, **self.costs)
        matches = hungarian_match(cost, query_valid, gt_valid)
        b = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(matches)])
        q = torch.cat([m[0] for m in matches])
        g = torch.cat([m[1] for m in matches])
        w = self.weights
        parts = {"cls": w["cls"] * self._class_loss(out["logits"], query_valid, gt_labels, b, q, g)}
        pred, gt = pred_boxes(out)[b, q].float(), gt_boxes[b, g]
        parts["center"] = w["center"] * (pred[:, :3] - gt[:, :3]).abs().sum() / num_boxes
        log_gt = torch.log(gt[:, 3:6].clamp(min=1e-6))
        parts["size"] = w["size"] * (out["log_size"][b, q].float() - log_gt).abs().sum() / num_boxes
        giou = aabb_giou(enclosing_aabb(pred), enclosing_aabb(gt))
        parts["giou"] = w["giou"] * (1 - giou).sum() / num_boxes
        parts["heading"] = self._heading_loss(out, b, q, gt[:, 6], num_boxes)
        return parts

    def _class_loss(self, logits: torch.Tensor, query_valid: torch.Tensor, gt_labels: torch.Tensor,
                    b: torch.Tensor, q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        no_object = logits.shape[-1] - 1
        target = torch.full(logits.shape[:2], no_object, dtype=torch.long, device=logits.device)
        target[b, q] = gt_labels[b, g].long()
        if not bool(query_valid.any()):
            return logits.sum() * 0.0
        weight = logits.new_ones(no_object + 1, dtype=torch.float32)
        weight[-1] = self.no_object_weight
        return F.cross_entropy(logits[query_valid].float(), target[query_valid], weight=weight)

    def _heading_loss(self, out: dict[str, torch.Tensor], b: torch.Tensor, q: torch.Tensor,
                      gt_yaw: torch.Tensor, num_boxes: int) -> torch.Tensor:
        if "heading_logits" not in out:
            return gt_yaw.new_zeros(())
        logits = out["heading_logits"][b, q].float()
        cls, residual = angle_to_bin(gt_yaw, logits.shape[-1])
        pred_res = out["heading_residual"][b, q].float().gather(1, cls.unsqueeze(1)).squeeze(1)
        ce = F.cross_entropy(logits, cls, reduction="sum")
        reg = F.smooth_l1_loss(pred_res, residual, beta=self.heading_huber_beta, reduction="sum")
        return (self.weights["heading_cls"] * ce + self.weights["heading_reg"] * reg) / num_boxes

"""Training loss of the GroupFree3D-style detector [prior: GroupFree3D ``models/loss_helper.py``].

Which object a token belongs to [choice]: the GT box holding the largest share of the token's K points
(a box's faces grown by ``margin``; yaw-rotated boxes tested in their own frame), when that share is at least
``min_coverage`` (half); equal shares (nested boxes) go to the box whose centre is nearest the token centre
in size-normalised distance ``|R^T (x - c) / d|`` (GroupFree3D's KPS distance). Otherwise the token is
background. GroupFree3D labels single points (SUN RGB-D: the points inside an object's box; ScanNet: the mesh
instance labels, which the fine-tuning batch does not carry). A token is a patch of points: labelled by its
centre alone, a floor token beside an object (half its points on it) is a negative whose features match the
object's edge tokens; overfitting one scene, such a query kept the objectness of the object's queries and an
untrained box, a false positive level with the true one (AP25 0.83; 1.0 with the share rule).

Losses, with ``b`` the batch size and every box set ``l = 0..L`` (the proposal, then each decoder layer):

- KPS (sampling) loss: per-token objectness, sigmoid focal loss (alpha 0.25, gamma 2); positives are, for
  every GT box, the ``kps_topk`` (4) member tokens nearest its centre (size-normalised distance) --
  fewer when the box has fewer member tokens, none when it has none (such a box can never be detected).
  Mean over a scene's valid tokens, mean over scenes.
- per box set: each query takes the object its token belongs to (no Hungarian matching); objectness =
  focal loss with label "its token belongs to an object", mean over valid queries, mean over scenes;
  on the positive queries, normalised by their number in the batch: centre smooth-L1 (``0.5 x^2 / delta``
  below ``center_delta``, ``|x| - delta / 2`` above; summed over xyz), size Huber loss (``0.5 x^2`` below
  ``size_delta``, ``delta (|x| - delta / 2)`` above, GroupFree3D's ``delta * smoothl1``) on log-extents
  summed over xyz, heading bin CE + Huber (``heading_delta``) on the normalised residual, class CE.

    loss = scale * [w_kps * KPS + 1/(L+1) * sum_l (w_obj * obj_l + w_box * box_l + w_cls * cls_l)]
    box_l = w_center * center_l + w_size * size_l + w_heading_cls * hcls_l + w_heading_reg * hreg_l

Defaults: GroupFree3D's ScanNet recipe (``train_dist.py`` + README command): w_kps 0.8, w_obj 0.1, w_box 1,
w_cls 0.1, scale 10, top-k 4; centre delta 0.04; size delta 1/9 (its size-cluster residuals are relative
sizes, close to log-extents); box terms center 1, size 1, heading bin 0.1, heading residual 1, heading
delta 1. Its SUN RGB-D recipe: w_kps 0.2, w_obj 0.4, centre delta 1/9, size delta 0.0625 (metres there),
heading delta 0.04.

A scene with no GT box: every token and query is a negative; box and class terms are 0 (with gradients,
so every parameter takes part in every step, as DDP needs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from methods.downstream.detection.boxes import angle_to_bin, padded_targets, points_in_box_frame
from methods.downstream.detection.groupfree import GroupFreeDetector

LOSS_KEYS = ("kps", "objectness", "center", "size", "heading", "cls")


@torch.no_grad()
def token_coverage(centers: torch.Tensor, rel: torch.Tensor, gt_boxes: torch.Tensor,
                   margin: float = 0.0) -> torch.Tensor:
    """(B, G, M) share of each token's K points (``centers + rel[..., :3]``) inside each box (faces grown by
    ``margin``)."""
    b, g, k = rel.shape[:3]
    points = (centers[:, :, None, :].float() + rel[..., :3].float()).reshape(b, g * k, 3)
    boxes = gt_boxes.float()
    coverage = points.new_zeros(b, g, boxes.shape[1])
    for j in range(boxes.shape[1]):  # one box at a time: (B, G*K) per box, not (B, G*K, M)
        local = points_in_box_frame(points, boxes[:, j:j + 1, :3], boxes[:, j:j + 1, 6])[:, :, 0]
        inside = (local.abs() <= boxes[:, None, j, 3:6] / 2 + margin).all(dim=-1)
        coverage[..., j] = inside.reshape(b, g, k).float().mean(dim=-1)
    return coverage


@torch.no_grad()
def token_assignment(centers: torch.Tensor, rel: torch.Tensor, valid: torch.Tensor, gt_boxes: torch.Tensor,
                     gt_valid: torch.Tensor, min_coverage: float = 0.5,
                     margin: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The object of every token (rule in the module docstring); ``rel`` (B, G, K, >=3) its points.

    Returns (box index (B, G) int64, -1 = background or padding; size-normalised distance of every token
    centre to every box centre (B, G, M), +inf where the token is not a member of that box).
    """
    coverage = token_coverage(centers, rel, gt_boxes, margin)
    coverage = torch.where(valid[:, :, None] & gt_valid[:, None, :], coverage, torch.zeros_like(coverage))
    boxes = gt_boxes.float()
    local = points_in_box_frame(centers.float(), boxes[..., :3], boxes[..., 6])
    dist = (local / boxes[:, None, :, 3:6].clamp(min=1e-6)).norm(dim=-1)
    inf = torch.full_like(dist, float("inf"))
    best = coverage.max(dim=-1, keepdim=True).values if coverage.shape[-1] else coverage[..., :1]
    candidate = (coverage == best) & (coverage >= min_coverage) & (coverage > 0)
    nearest = torch.where(candidate, dist, inf).argmin(dim=-1) if dist.shape[-1] else valid.long() * 0
    assignment = torch.where(candidate.any(dim=-1), nearest, torch.full_like(nearest, -1))
    member = assignment[..., None] == torch.arange(dist.shape[-1], device=dist.device)
    return assignment, torch.where(member, dist, inf)


@torch.no_grad()
def kps_labels(member_dist: torch.Tensor, topk: int) -> torch.Tensor:
    """(B, G) bool KPS positives: per box, its ``topk`` member tokens nearest its centre.

    ``member_dist`` (B, G, M) from ``token_assignment`` (+inf for non-members); a box with fewer members
    contributes all of them, a box with none contributes nothing.
    """
    if topk < 1:
        raise ValueError(f"kps_topk: expected >= 1, got {topk}")
    b, g, m = member_dist.shape
    labels = torch.zeros(b, g, dtype=torch.bool, device=member_dist.device)
    if m == 0 or g == 0:
        return labels
    k = min(topk, g)
    near, index = member_dist.topk(k, dim=1, largest=False)  # (B, k, M)
    batch = torch.arange(b, device=labels.device)[:, None, None].expand_as(index)
    labels[batch[torch.isfinite(near)], index[torch.isfinite(near)]] = True
    return labels


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, alpha: float = 0.25,
               gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al. 2017), mean over each scene's ``valid`` entries, mean over scenes."""
    target = labels.float()
    logits = logits.float()
    p = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    weight = (target * alpha + (1 - target) * (1 - alpha)) * (target * (1 - p) + (1 - target) * p).pow(gamma)
    per_scene = (weight * bce * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1)
    return per_scene.mean()


class GroupFreeObjective(nn.Module):
    """Wraps a ``GroupFreeDetector`` for ``methods.train.train``: ``forward(batch)`` -> loss and its parts.

    The returned parts (``LOSS_KEYS``, detached) are weighted and scaled so that they add up to ``loss``
    (``heading`` is 0 without yaw). Weights and deltas: module docstring.
    """

    def __init__(self, detector: GroupFreeDetector, kps_topk: int = 4, min_coverage: float = 0.5,
                 margin: float = 0.0, weight_kps: float = 0.8, weight_objectness: float = 0.1, weight_box: float = 1.0,
                 weight_cls: float = 0.1, weight_center: float = 1.0, weight_size: float = 1.0,
                 weight_heading_cls: float = 0.1, weight_heading_reg: float = 1.0, center_delta: float = 0.04,
                 size_delta: float = 1 / 9, heading_delta: float = 1.0, focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0, scale: float = 10.0):
        super().__init__()
        for name, value in (("center_delta", center_delta), ("size_delta", size_delta),
                            ("heading_delta", heading_delta)):
            if value <= 0:
                raise ValueError(f"{name}: expected > 0, got {value}")
        if margin < 0:
            raise ValueError(f"margin: expected >= 0 (metres), got {margin}")
        if not 0.0 < min_coverage <= 1.0:
            raise ValueError(f"min_coverage: expected a share in (0, 1], got {min_coverage}")
        self.detector = detector
        self.kps_topk = int(kps_topk)
        self.margin = float(margin)
        self.min_coverage = float(min_coverage)
        self.weights = dict(kps=weight_kps, objectness=weight_objectness, box=weight_box, cls=weight_cls,
                            center=weight_center, size=weight_size, heading_cls=weight_heading_cls,
                            heading_reg=weight_heading_reg)
        self.deltas = dict(center=center_delta, size=size_delta, heading=heading_delta)
        self.focal = dict(alpha=focal_alpha, gamma=focal_gamma)
        self.scale = scale

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = self.detector(batch)
        gt_boxes, gt_labels, gt_valid = padded_targets(batch)
        valid = batch["valid"].bool()
        assignment, member_dist = token_assignment(batch["centers"], batch["rel"], valid, gt_boxes, gt_valid,
                                                   self.min_coverage, self.margin)
        w, per_layer = self.weights, self.scale / len(outputs)
        kps = kps_labels(member_dist, self.kps_topk)
        parts = {"kps": self.scale * w["kps"] * focal_loss(outputs[0]["token_logits"], kps, valid, **self.focal)}
        for key in LOSS_KEYS[1:]:
            parts[key] = gt_boxes.new_zeros(())
        for out in outputs:
            for key, value in self.layer_loss(out, assignment, gt_boxes, gt_labels).items():
                parts[key] = parts[key] + per_layer * value
        loss = sum(parts.values())
        return {"loss": loss, **{k: v.detach() for k, v in parts.items()}}

    def layer_loss(self, out: dict[str, torch.Tensor], assignment: torch.Tensor, gt_boxes: torch.Tensor,
                   gt_labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted (unscaled) loss terms of one box set, targets from each query token's object."""
        query_valid = out["query_valid"]
        target = torch.where(query_valid, assignment.gather(1, out["query_token"]), -1)
        positive = target >= 0
        w, d = self.weights, self.deltas
        parts = {"objectness": w["objectness"] * focal_loss(out["objectness_logits"], positive, query_valid,
                                                            **self.focal)}
        num_pos = positive.sum().clamp(min=1)
        index = target.clamp(min=0)
        gt = gt_boxes.gather(1, index[..., None].expand(-1, -1, 7))
        mask = positive.float()

        def masked(term: torch.Tensor) -> torch.Tensor:  # (B, Q) -> mean over positives
            return (term * mask).sum() / num_pos

        center = F.smooth_l1_loss(out["center"].float(), gt[..., :3], beta=d["center"], reduction="none").sum(-1)
        log_gt = torch.log(gt[..., 3:6].clamp(min=1e-6))
        size = F.huber_loss(out["log_size"].float(), log_gt, delta=d["size"], reduction="none").sum(-1)
        parts["center"] = w["box"] * w["center"] * masked(center)
        parts["size"] = w["box"] * w["size"] * masked(size)
        parts["heading"] = w["box"] * self._heading_loss(out, gt[..., 6], masked)
        labels = gt_labels.gather(1, index)
        cls = F.cross_entropy(out["class_logits"].float().transpose(1, 2), labels, reduction="none")
        parts["cls"] = w["cls"] * masked(cls)
        return parts

    def _heading_loss(self, out: dict[str, torch.Tensor], gt_yaw: torch.Tensor, masked) -> torch.Tensor:
        if "heading_logits" not in out:
            return gt_yaw.new_zeros(())
        logits = out["heading_logits"].float()
        cls, residual = angle_to_bin(gt_yaw, logits.shape[-1])
        ce = F.cross_entropy(logits.transpose(1, 2), cls, reduction="none")
        pred = out["heading_residual"].float().gather(-1, cls[..., None]).squeeze(-1)
        reg = F.huber_loss(pred, residual, delta=self.deltas["heading"], reduction="none")
        return self.weights["heading_cls"] * masked(ce) + self.weights["heading_reg"] * masked(reg)

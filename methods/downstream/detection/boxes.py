"""Box maths for the detection heads: heading bins, points in a box's frame, a differentiable axis-aligned 3D GIoU.

Boxes follow the harness convention (DESIGN.md 2.10): ``[cx, cy, cz, dx, dy, dz, yaw]``, centre and
FULL extents along the box's own axes, yaw counter-clockwise about +z from +x.

Heading coding [prior: 3DETR / VoteNet]: ``num_bins`` bins of width ``w = 2*pi/num_bins`` whose centres
are ``k * w`` (bin 0 is centred on yaw 0); the residual is the signed offset from the bin centre,
normalised by HALF the bin width (``pi / num_bins``, as 3DETR), so it lies in [-1, 1).
"""
from __future__ import annotations

import math

import torch


def angle_to_bin(yaw: torch.Tensor, num_bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Yaw (radians, any range) -> (bin index int64, residual normalised by half the bin width)."""
    width = 2 * math.pi / num_bins
    # Shift by half a bin so bin k covers [k*w - w/2, k*w + w/2) and wraps past 2*pi back to bin 0.
    shifted = torch.remainder(yaw + width / 2, 2 * math.pi)
    cls = torch.clamp(torch.floor(shifted / width).long(), 0, num_bins - 1)
    residual = shifted - (cls.to(yaw.dtype) * width + width / 2)
    return cls, residual / (width / 2)


def bin_to_angle(cls: torch.Tensor, residual: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Inverse of ``angle_to_bin``: yaw in [-pi, pi) from a bin index and its normalised residual."""
    width = 2 * math.pi / num_bins
    angle = cls.to(residual.dtype) * width + residual * (width / 2)
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi


def heading_to_yaw(logits: torch.Tensor, residual: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Yaw (...) of the arg-max heading bin of ``logits`` (..., num_bins) and that bin's ``residual``."""
    cls = logits.argmax(dim=-1, keepdim=True)
    return bin_to_angle(cls.squeeze(-1), residual.gather(-1, cls).squeeze(-1), num_bins)


def points_in_box_frame(points: torch.Tensor, center: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
    """(B, N, M, 3): each point (B, N, 3) relative to each box centre (B, M, 3), rotated by -yaw (B, M)
    into the box's own axes."""
    d = points[:, :, None, :] - center[:, None, :, :]
    c, s = torch.cos(yaw)[:, None], torch.sin(yaw)[:, None]
    return torch.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1], d[..., 2]], dim=-1)


def padded_targets(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch's (GT boxes (B, M, 7), labels (B, M), valid (B, M)) with every padding row set to a unit box
    at the origin and label 0: padding rows may hold anything, and a unit box keeps every cost, loss and log
    finite (callers still mask them out by ``valid``)."""
    gt_valid = batch["gt_valid"].bool()
    unit = torch.tensor([0, 0, 0, 1, 1, 1, 0], dtype=torch.float32, device=gt_valid.device)
    gt_boxes = torch.where(gt_valid[..., None], batch["gt_boxes"].float(), unit)
    return gt_boxes, torch.where(gt_valid, batch["gt_labels"].long(), 0), gt_valid


def enclosing_aabb(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 7) yaw boxes -> (..., 6) ``[cx, cy, cz, ex, ey, ez]``: the axis-aligned box enclosing each.

    The bird's-eye extents of a rectangle rotated by yaw are ``|cos| dx + |sin| dy`` and
    ``|sin| dx + |cos| dy``; z is unchanged. Differentiable in every input.
    """
    cos, sin = torch.cos(boxes[..., 6]).abs(), torch.sin(boxes[..., 6]).abs()
    dx, dy, dz = boxes[..., 3], boxes[..., 4], boxes[..., 5]
    extents = torch.stack([cos * dx + sin * dy, sin * dx + cos * dy, dz], dim=-1)
    return torch.cat([boxes[..., :3], extents], dim=-1)


def aabb_giou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Generalised IoU of axis-aligned boxes ``[cx, cy, cz, ex, ey, ez]`` (..., 6), broadcast -> (...).

    GIoU = IoU - (C - U) / C with U the union and C the volume of the smallest box enclosing both
    (Rezatofighi et al. 2019): 1 for identical boxes, IoU for nested ones, in (-1, 0] for disjoint
    ones. For pairwise values pass ``a[:, None]`` and ``b[None]``.
    """
    a_lo, a_hi = a[..., :3] - a[..., 3:6] / 2, a[..., :3] + a[..., 3:6] / 2
    b_lo, b_hi = b[..., :3] - b[..., 3:6] / 2, b[..., :3] + b[..., 3:6] / 2
    inter = (torch.minimum(a_hi, b_hi) - torch.maximum(a_lo, b_lo)).clamp(min=0).prod(dim=-1)
    union = a[..., 3:6].prod(dim=-1) + b[..., 3:6].prod(dim=-1) - inter
    hull = (torch.maximum(a_hi, b_hi) - torch.minimum(a_lo, b_lo)).prod(dim=-1)
    # eps keeps degenerate (zero-volume) pairs finite; real boxes are many orders larger.
    return inter / (union + eps) - (hull - union) / (hull + eps)

"""Pretraining losses (DESIGN.md 2.5, 2.7, 2.8), as plain functions of batched tensors.

Shared conventions:
- Every loss is a mean over the selected items (tokens, groups, samples) of a per-item value that
  is itself a mean over channels (or points), so it is 0 exactly when prediction equals target.
- An empty selection returns ``0 * pred.sum()``-style zero: finite, and still attached to the graph
  so ``backward()`` works (with zero gradients) on a batch where nothing was selected.
- Entries outside the selection are replaced (``torch.where``), never multiplied by 0, so NaN/inf in
  padding cannot leak into the loss.
- Targets are used as given: detach a teacher's features before passing them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_same(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")


def _selected_mean(per_item: torch.Tensor, select: torch.Tensor | None,
                   weight: torch.Tensor | None = None) -> torch.Tensor:
    """(1/M) sum over selected items of weight * value, M = number selected; 0 when M = 0."""
    if select is None:
        select = torch.ones_like(per_item, dtype=torch.bool)
    if select.shape != per_item.shape:
        raise ValueError(f"selection mask {tuple(select.shape)} does not match items {tuple(per_item.shape)}")
    if weight is not None:
        if weight.shape != per_item.shape:
            raise ValueError(f"weight {tuple(weight.shape)} does not match items {tuple(per_item.shape)}")
        per_item = per_item * weight
    total = torch.where(select, per_item, torch.zeros((), dtype=per_item.dtype, device=per_item.device)).sum()
    return total / select.sum().clamp_min(1)


def region_distillation_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                             has_target: torch.Tensor) -> torch.Tensor:
    """Stage-1 DD loss L = (1/M) sum_i w_i * L1(F3D_i, F2D_i) [paper].

    Args:
      pred: (B, G, C) projected token features F3D.
      target: (B, G, C) region features F2D of each token's region (or region mix).
      weight: (B, G) token weights w_i (``methods.reweighting.token_weights``); None = all 1.
      has_target: (B, G) bool, real tokens with a region; others (no region, padding) are left out.

    L1 here is the mean absolute difference over the C channels; M = number of tokens with a target.
    """
    _check_same(pred, target)
    return _selected_mean((pred - target).abs().mean(dim=-1), has_target, weight)


def mixed_region_targets(point_regions: torch.Tensor, region_features: torch.Tensor,
                         valid: torch.Tensor | None = None,
                         region_valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token 2D target as the point-count-weighted mean of its points' region features [choice].

    Args:
      point_regions: (B, G, K) int64 region id of each point of each token, 0 = no region. Ids are
        row indices into the sample's own table; row 0 is never read.
      region_features: (B, R, C) per-sample region feature tables (R > max id).
      valid: (B, G) bool real tokens (padding gets no target); None = all.
      region_valid: (B, R) bool rows that hold a feature; points of other regions are ignored like
        region 0. None = all rows but 0.

    Returns:
      targets (B, G, C) (0 where no target) and has_target (B, G) bool (True iff the token has at
      least one point in a region with a feature). For SAM-guided tokens this is the token's one
      region's feature.
    """
    b, g, _ = point_regions.shape
    r = region_features.shape[1]
    if point_regions.numel() and (int(point_regions.min()) < 0 or int(point_regions.max()) >= r):
        raise ValueError(f"point_regions: expected ids in [0, {r}), got "
                         f"[{int(point_regions.min())}, {int(point_regions.max())}]")
    counts = torch.zeros(b, g, r, dtype=region_features.dtype, device=region_features.device)
    counts.scatter_add_(2, point_regions, torch.ones_like(point_regions, dtype=counts.dtype))
    usable = torch.ones(b, r, dtype=torch.bool, device=counts.device) if region_valid is None else region_valid.clone()
    usable[:, 0] = False
    counts = counts * usable[:, None, :]
    if valid is not None:
        counts = counts * valid[..., None]
    total = counts.sum(dim=-1, keepdim=True)
    # (B, G, R) x (B, R, C): never materialises per-point features (B, G, K, C).
    targets = torch.bmm(counts / total.clamp_min(1), region_features)
    return targets, total[..., 0] > 0


def masked_token_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Stage-2 L_token = (1/N_m) sum over masked tokens of MSE (mean over channels) [paper]."""
    _check_same(student, teacher)
    return _selected_mean((student - teacher).pow(2).mean(dim=-1), mask)


def masked_mean_pool(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` (B, G, C) over valid tokens -> (B, C); a row with no valid token pools to 0."""
    kept = torch.where(valid[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
    return kept.sum(dim=1) / valid.sum(dim=1, keepdim=True).clamp_min(1).to(x.dtype)


def instance_loss(student_pooled: torch.Tensor, teacher_pooled: torch.Tensor,
                  valid: torch.Tensor | None = None) -> torch.Tensor:
    """Stage-2 L_ins = MSE between pooled features (B, C), mean over samples and channels [paper].

    ``valid`` (B,) bool optionally leaves out samples (e.g. frames with no token).
    """
    _check_same(student_pooled, teacher_pooled)
    return _selected_mean((student_pooled - teacher_pooled).pow(2).mean(dim=-1), valid)


def chamfer_l2(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Point-MAE reconstruction loss: squared-L2 Chamfer distance per group, averaged over groups.

    Args:
      pred: (..., P, 3) predicted points of each group; target: (..., Q, 3) with the same leading dims.
      valid: (...) bool groups that count (e.g. real masked tokens); None = all.

    Per group: mean over pred points of the squared distance to the nearest target point plus mean
    over target points of the squared distance to the nearest pred point (as Point-MAE's
    ``ChamferDistanceL2``, whose batch-wide means equal this average when every group has K points).
    """
    if pred.shape[:-2] != target.shape[:-2] or pred.shape[-1] != target.shape[-1]:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} are not paired groups")
    lead = pred.shape[:-2]
    p = pred.reshape(-1, *pred.shape[-2:])
    q = target.reshape(-1, *target.shape[-2:])
    if p.shape[0] == 0:
        return pred.sum() * 0.0
    # Direct differences, not the matrix-product expansion: exact 0 at equality, no cancellation.
    d2 = torch.cdist(p, q, compute_mode="donot_use_mm_for_euclid_dist").pow(2)  # (N, P, Q)
    per_group = d2.min(dim=2).values.mean(dim=1) + d2.min(dim=1).values.mean(dim=1)
    return _selected_mean(per_group.reshape(lead), valid)


def smooth_l1_distillation(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
                           beta: float = 1.0) -> torch.Tensor:
    """Bridge3D-style feature distillation [prior]: SmoothL1 (mean over channels) averaged over valid items.

    ``pred``/``target`` (..., C) with ``valid`` (...) bool: (B, C) pooled scene features or (B, G, C)
    token / region features. ``beta`` is PyTorch's SmoothL1 threshold (default 1.0).
    """
    _check_same(pred, target)
    per_item = F.smooth_l1_loss(pred, target, reduction="none", beta=beta).mean(dim=-1)
    return _selected_mean(per_item, valid)

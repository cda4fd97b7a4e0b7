"""Group-balanced re-weighting (BR) for Stage 1 (DESIGN.md 2.2, 2.6) [paper].

Offline, all region features of the training set are clustered into K groups (k-means [choice:
K = 32], ``methods.region_groups``) and each group's region count n_i is taken. A group's weight is

    k_i = (n_i - n_min) / n_max,  tau_i = 1 - k_i,  w_i = tau_i / sum_j tau_j,

so rare groups weigh more. Each token takes the weight of its region's group; token weights are then
rescaled to mean 1 over the tokens that enter the loss, so the loss scale does not change [choice].

Empty groups (k-means may leave a cluster empty, and K may exceed the number of distinct regions)
are left out of the formula: n_min and n_max are taken over non-empty groups, the normalisation sums
over non-empty groups only, and an empty group gets weight 0. Counting them as n = 0 would give every
empty group the largest weight (tau = 1) and shrink the weights of the groups that tokens actually
carry, for no token. Weights of non-empty groups then do not depend on how many groups are empty.
"""
from __future__ import annotations

import dataclasses
import gin
import numpy as np
import torch

def group_counts(assignment: np.ndarray | torch.Tensor, num_groups: int) -> np.ndarray:
    """(K,) int64 number of regions assigned to each group; empty groups count 0."""
    labels = np.asarray(assignment.cpu() if isinstance(assignment, torch.Tensor) else assignment)
    if labels.size and (labels.min() < 0 or labels.max() >= num_groups):
        raise ValueError(f"assignment: expected ids in [0, {num_groups}), got [{labels.min()}, {labels.max()}]")
    return np.bincount(labels.reshape(-1).astype(np.int64), minlength=num_groups)


def group_weights(counts: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per-group weights w (K,) float64 from region counts n (K,) (DESIGN 2.6, empty groups: module doc).

    k_i = (n_i - n_min) / n_max, tau_i = 1 - k_i, w_i = tau_i / sum_j tau_j over non-empty groups.
    """
    n = np.asarray(counts.cpu() if isinstance(counts, torch.Tensor) else counts, dtype=np.float64)
    if n.ndim != 1 or (n < 0).any():
        raise ValueError(f"counts: expected a 1D array of non-negative counts, got {n}")
    present = n > 0
    if not present.any():
        raise ValueError("counts: every group is empty")
    n_min, n_max = n[present].min(), n[present].max()
    tau = np.where(present, 1.0 - (n - n_min) / n_max, 0.0)
    return tau / tau.sum()


def token_weights(group_of_token: torch.Tensor, weights: torch.Tensor | np.ndarray | None,
                  valid: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """(B, G) float per-token loss weights.

    Args:
      group_of_token: (B, G) int64 group of each token's region; read only where ``valid``.
      weights: (K,) group weights from ``group_weights``; None = re-weighting off (all ones).
      valid: (B, G) bool, the tokens that enter the loss (real tokens with a target); others get 0.
      normalize: rescale so the mean over the valid tokens of the batch is 1 [choice].
    """
    if group_of_token.shape != valid.shape:
        raise ValueError(f"group_of_token {tuple(group_of_token.shape)} and valid {tuple(valid.shape)} differ")
    if weights is None:
        return valid.to(torch.float32)
    w = torch.as_tensor(weights, dtype=torch.float32, device=group_of_token.device)
    groups = group_of_token[valid]
    if groups.numel() and (int(groups.min()) < 0 or int(groups.max()) >= w.numel()):
        raise ValueError(f"group_of_token: expected ids in [0, {w.numel()}) on valid tokens, "
                         f"got [{int(groups.min())}, {int(groups.max())}]")
    out = torch.where(valid, w[group_of_token.clamp(0, w.numel() - 1)], torch.zeros((), device=w.device))
    if normalize and groups.numel():
        mean = out.sum() / valid.sum()
        if mean > 0:  # all tokens in zero-weight groups: nothing sensible to rescale
            out = out / mean
    return out


def assign_groups(features: torch.Tensor, centroids: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Nearest centroid (Euclidean) of each feature (..., C) -> (...,) int64 group ids.

    Maps a batch's region features (or a per-frame region table) to the groups fitted offline.
    """
    c = torch.as_tensor(centroids, dtype=torch.float32, device=features.device)
    flat = features.reshape(-1, features.shape[-1]).to(torch.float32)
    if flat.shape[0] == 0:
        return torch.zeros(features.shape[:-1], dtype=torch.int64, device=features.device)
    return torch.cdist(flat, c).argmin(dim=1).reshape(features.shape[:-1])


@gin.register
@dataclasses.dataclass(frozen=True)
class GroupBalancing:
    """Stage-1 BR switch: ``enabled`` False = all weights 1 (Table 3's "without BR").

    The groups themselves (k-means over the training region features and their counts) are computed
    once by the offline preparation step (``FramePreparation.num_groups``), not here.
    """

    enabled: bool = True
    normalize: bool = True

    def weights_of_tokens(self, group_of_token: torch.Tensor, group_weights: np.ndarray | torch.Tensor,
                          valid: torch.Tensor) -> torch.Tensor:
        """Per-token loss weights (B, G): the token's group weight, or 1 on valid tokens when off."""
        return token_weights(group_of_token, group_weights if self.enabled else None, valid,
                             normalize=self.normalize)

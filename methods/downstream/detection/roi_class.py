"""Class logits from the points inside each predicted box [choice: an addition to GroupFree3D, off by default].

GroupFree3D classifies a query from its decoder feature alone. On a small budget that feature learns the
class slowly: on the synthetic demo (no pretraining, 20 epochs) every positive query of the last layer got
the same class, the training split's most frequent one by token count. ``RoiClassifier`` looks at the object
directly: the points inside the box (faces grown by ``margin``, a share of each extent), in the box's own
frame divided by its extents, go through a shared point MLP and a max-pool; with the box's log-extents an
MLP gives class logits, which the head adds to its own. Boxes are detached: the class loss never moves them.

At most ``num_points`` points per box take part: those inside, in a fixed pseudo-random order (a generator
of its own, so the choice is the same in training and evaluation and draws nothing from the global one). A
box with no point inside pools to zeros (its logits come from its size alone).

Measured (synthetic demo, no-pretraining row, GroupFree3D-style head at demo size, 32 val rooms): 20 epochs,
3 seeds, AP25 2.0 / 1.6 / 2.0 -> 4.7 / 8.9 / 5.2 (mean 1.9 -> 6.3), for about 30 % more training time; 40
epochs, seed 0, 7.3 -> 13.8, with the class of the top-scoring box overlapping an object (IoU > 0.25) right
for 66 % of the objects instead of 40 %; 60 epochs, 3 seeds, 15.0 / 18.4 / 15.8 -> 24.7 / 23.5 / 17.4 (mean
16.4 -> 21.9) for 1.5x the training time. Boxes stay the limit: AP50 about 2 either way.
"""
from __future__ import annotations

import torch
from torch import nn

from methods.downstream.detection.boxes import points_in_box_frame


class RoiClassifier(nn.Module):
    """``forward(points (B, N, 3), center (B, Q, 3), log_size (B, Q, 3), yaw (B, Q))`` -> logits (B, Q, C)."""

    def __init__(self, num_classes: int, width: int = 64, num_points: int = 64, margin: float = 0.1):
        super().__init__()
        if num_points < 1 or margin < 0:
            raise ValueError(f"RoiClassifier: num_points >= 1 and margin >= 0 expected, got {num_points}, {margin}")
        self.num_points = int(num_points)
        self.margin = float(margin)
        self.point_mlp = nn.Sequential(nn.Linear(3, width), nn.LayerNorm(width), nn.ReLU(),
                                       nn.Linear(width, width), nn.LayerNorm(width), nn.ReLU(),
                                       nn.Linear(width, 2 * width))
        self.head = nn.Sequential(nn.Linear(2 * width + 3, width), nn.LayerNorm(width), nn.ReLU(),
                                  nn.Linear(width, num_classes))

    def forward(self, points: torch.Tensor, center: torch.Tensor, log_size: torch.Tensor,
                yaw: torch.Tensor) -> torch.Tensor:
        center, log_size, yaw = center.detach().float(), log_size.detach().float(), yaw.detach().float()
        size = torch.exp(log_size)
        local = points_in_box_frame(points.float(), center, yaw) / size[:, None]  # (B, N, Q, 3)
        inside = (local.abs() <= 0.5 + self.margin).all(dim=-1)  # (B, N, Q)
        n = points.shape[1]
        order = torch.rand(n, generator=torch.Generator().manual_seed(0)).to(points.device)
        priority = inside.float() * 2.0 + order[None, :, None]  # inside first, then the fixed order
        index = priority.topk(min(self.num_points, n), dim=1).indices  # (B, M, Q)
        chosen = local.gather(1, index[..., None].expand(-1, -1, -1, 3))
        chosen_inside = inside.gather(1, index)
        features = self.point_mlp(chosen)  # (B, M, Q, 2W)
        lowest = torch.finfo(features.dtype).min
        pooled = features.masked_fill(~chosen_inside[..., None], lowest).amax(dim=1)
        pooled = torch.where(chosen_inside.any(dim=1)[..., None], pooled, torch.zeros_like(pooled))
        return self.head(torch.cat([pooled, log_size], dim=-1))

"""Test oracles of box geometry: which points lie inside which boxes (readers' boxes must hold their objects)."""
from __future__ import annotations

import numpy as np


def points_in_boxes(points: np.ndarray, boxes: np.ndarray, eps: float = 0.0) -> np.ndarray:
    """(N, B) bool: whether each point lies inside each (yaw-rotated) box, faces grown by ``eps``."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    d = pts[:, None, :] - boxes[None, :, :3]
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    # Rotate by -yaw into each box's own frame.
    lx = c * d[..., 0] + s * d[..., 1]
    ly = -s * d[..., 0] + c * d[..., 1]
    half = 0.5 * boxes[:, 3:6] + eps
    return (np.abs(lx) <= half[:, 0]) & (np.abs(ly) <= half[:, 1]) & (np.abs(d[..., 2]) <= half[:, 2])

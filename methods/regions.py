"""Region maths: teacher patch features -> one feature per mask region (DESIGN.md 2.2).

F2D_r = mean of the teacher's per-pixel features inside region r, where the per-pixel features are
the patch grid upsampled bilinearly to the image (``align_corners=False``, no antialiasing; the grid
is taken to span the whole image, which is how both teachers produce it).

Bilinear upsampling is linear, so the mean over a region of the upsampled features equals a
weighted mean of the patch features with weights = summed bilinear weights of the region's pixels.
``region_features`` uses that identity on patch grids and never materialises the (C, H, W) array,
which for a ViT-g teacher on a 480x640 frame would be ~1.9 GB.
"""
from __future__ import annotations

import numpy as np
import torch


def _bilinear_taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each output index: the two source indices and their weights, as in PyTorch's bilinear
    (align_corners=False): src = max((dst + 0.5) * n_in / n_out - 0.5, 0)."""
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0
    return i0, i1, 1.0 - w1, w1


def _region_index(label_map: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Region ids (sorted non-zero labels), the flat pixel indices inside any region, and each such
    pixel's row in the id array."""
    label_map = np.asarray(label_map)
    if label_map.ndim != 2 or not np.issubdtype(label_map.dtype, np.integer):
        raise ValueError(f"label_map: expected a 2D integer array, got {label_map.dtype} shape {label_map.shape}")
    flat = label_map.reshape(-1)
    pixels = np.flatnonzero(flat)
    region_ids, rows = np.unique(flat[pixels], return_inverse=True)
    return region_ids.astype(np.int32), pixels, rows.reshape(-1)


def region_features(features: torch.Tensor | np.ndarray, label_map: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """Mean teacher feature of every region of ``label_map``.

    Args:
      features: (C, H, W) per-pixel features, or (C, h, w) patch features of the whole frame that are
        upsampled bilinearly to the label map's size (see module docstring).
      label_map: (H, W) integer map; regions are its non-zero labels.

    Returns:
      region_ids: (R,) int32 sorted non-zero labels present in the map.
      feats: (R, C) float32 tensor, row r = mean feature of region ``region_ids[r]``.
    """
    feats = torch.as_tensor(features, dtype=torch.float32)
    if feats.ndim != 3:
        raise ValueError(f"features: expected (C, h, w), got shape {tuple(feats.shape)}")
    region_ids, pixels, rows = _region_index(label_map)
    H, W = label_map.shape
    C, h, w = feats.shape
    counts = np.bincount(rows, minlength=len(region_ids)).astype(np.float64)
    if (h, w) == (H, W):
        sums = torch.zeros(len(region_ids), C, dtype=torch.float64)
        sums.index_add_(0, torch.from_numpy(rows), feats.reshape(C, -1)[:, pixels].T.double())
    else:
        sums = torch.from_numpy(_region_cell_weights(rows, pixels, len(region_ids), (H, W), (h, w)))
        sums = sums @ feats.reshape(C, -1).T.double()
    return region_ids, (sums / torch.from_numpy(counts)[:, None]).float()


def _region_cell_weights(rows: np.ndarray, pixels: np.ndarray, n_regions: int,
                         hw: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """(R, h*w) matrix: for each region, the summed bilinear weight of each patch cell over its pixels."""
    (H, W), (h, w) = hw, grid
    r0, r1, a0, a1 = _bilinear_taps(H, h)
    c0, c1, b0, b1 = _bilinear_taps(W, w)
    pr, pc = np.divmod(pixels, W)
    out = np.zeros(n_regions * h * w, dtype=np.float64)
    for ri, ra in ((r0, a0), (r1, a1)):
        for ci, cb in ((c0, b0), (c1, b1)):
            index = rows * (h * w) + ri[pr] * w + ci[pc]
            out += np.bincount(index, weights=ra[pr] * cb[pc], minlength=out.size)
    return out.reshape(n_regions, h * w)

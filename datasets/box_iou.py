"""Exact 3D IoU of yaw-rotated boxes, vectorised over all pairs at once.

Boxes are ``[cx, cy, cz, dx, dy, dz, yaw]`` (DESIGN.md 2.10): centre, FULL extents along the box's
own axes, yaw counter-clockwise about +z from +x; ``dx`` is the extent along ``(cos yaw, sin yaw)``.
An (N, 6) array means yaw 0. Boxes only rotate about z, so the intersection volume is the
bird's-eye-view (BEV) intersection area times the overlap of the z intervals, exactly.

BEV intersection, per pair: express box b in box a's frame, where a is the axis-aligned rectangle
``[-dx/2, dx/2] x [-dy/2, dy/2]``, and clip b's rectangle by a's four edges (Sutherland-Hodgman),
every pair at once; the area is the shoelace formula of the clipped polygon. Pairs whose yaws are
equal (all pairs, for axis-aligned data) take a fast path of interval overlaps instead, and pairs
that cannot meet (no z overlap, or BEV circumcircles apart) are not clipped.

Degenerate boxes (a zero extent) have IoU 0 with everything, themselves included: the union volume
is 0 or the intersection is, and a zero union is defined to give IoU 0, never NaN or a warning.
"""
from __future__ import annotations

import numpy as np

# Pairs per chunk of the rotated path: bounds its temporaries to a few tens of MB.
_CHUNK = 1 << 16


def as_boxes(boxes: np.ndarray, name: str = "boxes") -> np.ndarray:
    """Check ``boxes`` is (N, 6) or (N, 7), finite, with extents >= 0; return it as (N, 7) float64.

    Raises ``ValueError`` with one line naming ``name`` and what was expected.
    """
    try:
        arr = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a numeric array of shape (N, 6) or (N, 7)") from None
    if arr.size == 0:
        return np.zeros((0, 7))
    if arr.ndim != 2 or arr.shape[1] not in (6, 7):
        raise ValueError(f"{name}: expected shape (N, 6) or (N, 7), got {arr.shape}")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise ValueError(f"{name}: expected finite values, found nan/inf in row {int(np.argmax(bad))}")
    neg = (arr[:, 3:6] < 0).any(axis=1)
    if neg.any():
        row = int(np.argmax(neg))
        raise ValueError(f"{name}: expected extents dx, dy, dz >= 0, got {arr[row, 3:6].tolist()} in row {row}")
    if arr.shape[1] == 6:
        arr = np.concatenate([arr, np.zeros((len(arr), 1))], axis=1)
    return arr


def box_iou_3d(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``boxes_a`` (N, 6|7) with every box in ``boxes_b`` (M, 6|7): (N, M)."""
    a = as_boxes(boxes_a, "boxes_a")
    b = as_boxes(boxes_b, "boxes_b")
    ia, ib = np.meshgrid(np.arange(len(a)), np.arange(len(b)), indexing="ij")
    return _paired_iou(a[ia.ravel()], b[ib.ravel()]).reshape(len(a), len(b))


def paired_box_iou_3d(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of ``boxes_a[k]`` with ``boxes_b[k]`` for each k: both (K, 6|7), result (K,)."""
    a = as_boxes(boxes_a, "boxes_a")
    b = as_boxes(boxes_b, "boxes_b")
    if len(a) != len(b):
        raise ValueError(f"paired_box_iou_3d: expected as many boxes in boxes_a ({len(a)}) as in boxes_b ({len(b)})")
    return _paired_iou(a, b)


def _paired_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of validated (K, 7) pairs."""
    inter_z = _overlap(a[:, 2], a[:, 5], b[:, 2], b[:, 5])
    same = a[:, 6] == b[:, 6]
    area = np.zeros(len(a))
    area[same] = _same_yaw_area(a[same], b[same])
    # Clip only pairs that can meet: z intervals overlap and the BEV circumcircles intersect.
    reach = np.hypot(a[:, 3], a[:, 4]) + np.hypot(b[:, 3], b[:, 4])
    near = 2 * np.hypot(a[:, 0] - b[:, 0], a[:, 1] - b[:, 1]) <= reach
    rot = np.flatnonzero(~same & near & (inter_z > 0))
    for start in range(0, len(rot), _CHUNK):
        idx = rot[start : start + _CHUNK]
        area[idx] = _rotated_area(a[idx], b[idx])
    inter = area * inter_z
    union = a[:, 3:6].prod(axis=1) + b[:, 3:6].prod(axis=1) - inter
    # A zero union means both boxes are degenerate and coincide; IoU 0 by convention.
    iou = np.divide(inter, union, out=np.zeros(len(a)), where=union > 0)
    return np.minimum(iou, 1.0)  # identical boxes can round to 1 + 1 ulp


def _overlap(ca: np.ndarray, da: np.ndarray, cb: np.ndarray, db: np.ndarray) -> np.ndarray:
    """Length of the overlap of intervals ``[c - d/2, c + d/2]``, >= 0."""
    lo = np.maximum(ca - da / 2, cb - db / 2)
    hi = np.minimum(ca + da / 2, cb + db / 2)
    return np.maximum(hi - lo, 0.0)


def _to_frame_of_a(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre of b in a's frame (origin at a's centre, x along a's heading): two (K,) arrays."""
    cos, sin = np.cos(a[:, 6]), np.sin(a[:, 6])
    ox, oy = b[:, 0] - a[:, 0], b[:, 1] - a[:, 1]
    return cos * ox + sin * oy, cos * oy - sin * ox


def _same_yaw_area(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """BEV intersection of pairs with equal yaw: both rectangles are aligned in a's frame."""
    x, y = _to_frame_of_a(a, b)
    zero = np.zeros(len(a))
    return _overlap(zero, a[:, 3], x, b[:, 3]) * _overlap(zero, a[:, 4], y, b[:, 4])


def _rotated_area(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """BEV intersection area of general pairs by clipping b's rectangle to a's (in a's frame)."""
    cx, cy = _to_frame_of_a(a, b)
    turn = b[:, 6] - a[:, 6]
    cos, sin = np.cos(turn)[:, None], np.sin(turn)[:, None]
    # b's corners counter-clockwise: (+,+), (-,+), (-,-), (+,-) half extents.
    lx = b[:, 3:4] / 2 * np.array([1.0, -1.0, -1.0, 1.0])
    ly = b[:, 4:5] / 2 * np.array([1.0, 1.0, -1.0, -1.0])
    x = cx[:, None] + cos * lx - sin * ly
    y = cy[:, None] + sin * lx + cos * ly
    n = np.full(len(a), 4)
    hx, hy = a[:, 3] / 2, a[:, 4] / 2
    for axis, sign, half in ((0, 1.0, hx), (0, -1.0, hx), (1, 1.0, hy), (1, -1.0, hy)):
        x, y, n = _clip(x, y, n, axis, sign, half)
    area = 0.5 * (x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y).sum(axis=1)
    # Clipping keeps b's counter-clockwise order, so the area is >= 0 up to rounding.
    return np.clip(area, 0.0, np.minimum(a[:, 3] * a[:, 4], b[:, 3] * b[:, 4]))


def _clip(x: np.ndarray, y: np.ndarray, n: np.ndarray, axis: int, sign: float, half: np.ndarray):
    """One Sutherland-Hodgman step: keep the part of each polygon where ``sign * coord <= half``.

    A polygon is ``n`` vertices in slots ``0..n-1`` of the (K, W) arrays ``x, y``; slots ``n..W-1``
    repeat vertex ``n-1``, so every slot's successor (cyclically) is the next vertex or a
    zero-length edge, and the shoelace sum over all slots is the polygon's area.
    """
    width = x.shape[1]
    coord = x if axis == 0 else y
    d = half[:, None] - sign * coord  # >= 0 inside
    inside = d >= 0
    xn, yn, dn = np.roll(x, -1, axis=1), np.roll(y, -1, axis=1), np.roll(d, -1, axis=1)
    cross = inside != np.roll(inside, -1, axis=1)
    t = np.divide(d, d - dn, out=np.zeros_like(d), where=cross)
    ix, iy = x + t * (xn - x), y + t * (yn - y)
    # Put crossings exactly on the clipping line.
    if axis == 0:
        ix = np.broadcast_to(sign * half[:, None], ix.shape)
    else:
        iy = np.broadcast_to(sign * half[:, None], iy.shape)
    real = np.arange(width) < n[:, None]
    # Candidates in cyclic order: each vertex (if inside and not padding), then its edge's crossing.
    keep = np.stack([inside & real, cross], axis=2).reshape(len(x), 2 * width)
    cand_x = np.stack([x, ix], axis=2).reshape(len(x), 2 * width)
    cand_y = np.stack([y, iy], axis=2).reshape(len(x), 2 * width)
    n_out = keep.sum(axis=1)
    out_width = max(int(n_out.max(initial=0)), 1)
    # Compact the kept candidates to the front of each row (scatter by running count) ...
    dest = (np.cumsum(keep, axis=1) - 1 + out_width * np.arange(len(x))[:, None])[keep]
    x_out = np.zeros((len(x), out_width))
    y_out = np.zeros((len(x), out_width))
    x_out.ravel()[dest] = cand_x[keep]
    y_out.ravel()[dest] = cand_y[keep]
    # ... and pad each row with its last vertex (an empty polygon stays all zeros).
    last = np.maximum(n_out - 1, 0)
    pad = np.arange(out_width) >= n_out[:, None]
    rows = np.arange(len(x))
    x_out = np.where(pad, x_out[rows, last][:, None], x_out)
    y_out = np.where(pad, y_out[rows, last][:, None], y_out)
    return x_out, y_out, n_out

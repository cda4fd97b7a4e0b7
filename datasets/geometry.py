"""Camera and box geometry shared by every dataset reader.

Conventions are those of ``datasets/types.py``: OpenCV camera (x right, y down, z forward), ``pose``
camera-to-world, ``depth`` = camera z, pixel (row, col) centred at image coordinates (u=col, v=row);
boxes ``[cx, cy, cz, dx, dy, dz, yaw]`` with yaw counter-clockwise about +z from +x.
"""
from __future__ import annotations

import numpy as np

# Corner order of ``box_corners``: bottom face counter-clockwise (seen from above) starting at the
# box's local (-x, -y), then the top face in the same order. Drawing corners 0..3 draws the footprint.
_CORNER_SIGNS = np.array(
    [[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1], [-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]],
    dtype=np.float64,
)


def pinhole_intrinsics(image_hw: tuple[int, int], fov_deg: float) -> np.ndarray:
    """Pinhole K (3, 3) float64 with square pixels and horizontal field of view ``fov_deg``.

    The principal point is the image centre in pixel-centre coordinates, ((W-1)/2, (H-1)/2).
    """
    h, w = int(image_hw[0]), int(image_hw[1])
    if h <= 0 or w <= 0 or not 0.0 < fov_deg < 180.0:
        raise ValueError(f"need a positive image size and 0 < fov_deg < 180, got {image_hw}, {fov_deg}")
    f = (w / 2.0) / np.tan(np.deg2rad(fov_deg) / 2.0)
    return np.array([[f, 0.0, (w - 1) / 2.0], [0.0, f, (h - 1) / 2.0], [0.0, 0.0, 1.0]])


def look_at_pose(eye: np.ndarray, target: np.ndarray, up: np.ndarray = (0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world pose (4, 4) of an OpenCV camera at ``eye`` looking at ``target`` (z up world)."""
    eye, target, up = (np.asarray(a, dtype=np.float64) for a in (eye, target, up))
    forward = target - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    norm = np.linalg.norm(right)
    if norm < 1e-9:
        raise ValueError("look_at_pose: viewing direction is parallel to 'up'")
    right /= norm
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, down, forward], axis=1)
    pose[:3, 3] = eye
    return pose


def pixel_rays(image_hw: tuple[int, int], K: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """World-space ray directions (H*W, 3) through every pixel centre, row-major.

    The directions are scaled so that their camera-frame z is 1: the ray parameter t of a hit is
    then exactly its depth.
    """
    h, w = int(image_hw[0]), int(image_hw[1])
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    cam = np.stack(
        [(cols.ravel() - K[0, 2]) / K[0, 0], (rows.ravel() - K[1, 2]) / K[1, 1], np.ones(h * w)], axis=1
    )
    return cam @ pose[:3, :3].T


def backproject(depth: np.ndarray, K: np.ndarray, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points of the valid (depth > 0) pixels of a depth map.

    Returns ``xyz_world`` (N, 3) float32 and ``pix`` (N, 2) int64 as ``[row, col]``, in row-major
    pixel order.
    """
    rows, cols = np.nonzero(depth > 0)
    z = depth[rows, cols].astype(np.float64)
    cam = np.stack([(cols - K[0, 2]) / K[0, 0] * z, (rows - K[1, 2]) / K[1, 1] * z, z], axis=1)
    xyz = cam @ pose[:3, :3].T + pose[:3, 3]
    return xyz.astype(np.float32), np.stack([rows, cols], axis=1).astype(np.int64)


def project(xyz_world: np.ndarray, K: np.ndarray, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points into the image.

    Returns ``uv`` (N, 2) float64 as ``[u, v]`` = ``[col, row]`` image coordinates (note the order
    differs from ``backproject``'s ``pix``) and the camera-frame depth ``z`` (N,); points with
    z <= 0 are behind the camera and their uv is meaningless.
    """
    pts = np.asarray(xyz_world, dtype=np.float64).reshape(-1, 3)
    with np.errstate(divide="ignore", invalid="ignore"):  # NaN/inf points (and z = 0) give NaN/inf, not warnings
        cam = (pts - pose[:3, 3]) @ pose[:3, :3]  # R^T (p - t), row-vector form
        z = cam[:, 2]
        u = K[0, 0] * cam[:, 0] / z + K[0, 2]
        v = K[1, 1] * cam[:, 1] / z + K[1, 2]
    return np.stack([u, v], axis=1), z


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """Corners (B, 8, 3) of ``[cx, cy, cz, dx, dy, dz, yaw]`` boxes; order in ``_CORNER_SIGNS``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    local = 0.5 * boxes[:, None, 3:6] * _CORNER_SIGNS[None]
    c, s = np.cos(boxes[:, 6])[:, None], np.sin(boxes[:, 6])[:, None]
    x = c * local[..., 0] - s * local[..., 1]
    y = s * local[..., 0] + c * local[..., 1]
    return np.stack([x, y, local[..., 2]], axis=-1) + boxes[:, None, :3]


def aligned_box_of_oriented(boxes: np.ndarray) -> np.ndarray:
    """The axis-aligned boxes (B, 7), yaw 0, that tightly enclose the given oriented boxes."""
    boxes = np.asarray(boxes).reshape(-1, 7)
    dtype = boxes.dtype if np.issubdtype(boxes.dtype, np.floating) else np.float64
    b = boxes.astype(np.float64)
    c, s = np.abs(np.cos(b[:, 6])), np.abs(np.sin(b[:, 6]))
    out = b.copy()
    out[:, 3] = c * b[:, 3] + s * b[:, 4]
    out[:, 4] = s * b[:, 3] + c * b[:, 4]
    out[:, 6] = 0.0
    return out.astype(dtype)


def zbuffer(points: np.ndarray, K: np.ndarray, pose: np.ndarray, image_hw: tuple[int, int],
            splat_px: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Nearest point per pixel: (H, W) float32 depth (0 = empty) and (H, W) int64 point index (-1 = empty).

    Each point in front of the camera covers its nearest pixel, or a (2*splat_px+1)^2 square around
    it, so that sparse foreground points hide more of the background seen through their gaps. Points
    with a non-finite coordinate cover no pixel.
    """
    h, w = image_hw
    uv, z = project(points, K, pose)
    front = np.nonzero((z > 0) & np.isfinite(z) & np.isfinite(uv).all(axis=1))[0]
    col = np.round(uv[front, 0]).astype(np.int64)
    row = np.round(uv[front, 1]).astype(np.int64)
    offsets = np.arange(-splat_px, splat_px + 1)
    dr, dc = (a.ravel() for a in np.meshgrid(offsets, offsets, indexing="ij"))
    row = (row[:, None] + dr[None]).ravel()
    col = (col[:, None] + dc[None]).ravel()
    idx = np.repeat(front, len(dr))
    inside = (row >= 0) & (row < h) & (col >= 0) & (col < w)
    pix, idx = row[inside] * w + col[inside], idx[inside]
    order = np.lexsort((z[idx], pix))  # by pixel, then nearest first
    pix, idx = pix[order], idx[order]
    first = np.r_[True, pix[1:] != pix[:-1]]
    depth = np.zeros(h * w, dtype=np.float32)
    index = np.full(h * w, -1, dtype=np.int64)
    depth[pix[first]] = z[idx[first]]
    index[pix[first]] = idx[first]
    return depth.reshape(h, w), index.reshape(h, w)

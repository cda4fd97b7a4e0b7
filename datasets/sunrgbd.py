"""SUN RGB-D, VoteNet-style export (``sunrgbd_trainval/``): a frame's points with the pixel each came from.

Follows votenet's ``project_upright_depth_to_image`` (MANIFEST.md section 3 of the real-data excerpts):
points are in the upright depth frame (x right, y forward, z up, metres), calib holds Rtilt and K in
MATLAB column-major order, and projected pixels are 1-based (converted to 0-based here). The full
reader (labels, boxes, raw SUNRGBD layout, Frame output) is issue 5's work.
"""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import scipy.io
from PIL import Image

TRAINVAL = pathlib.Path("sunrgbd") / "mmdet3d_9e39d46" / "sunrgbd_trainval"


@dataclasses.dataclass
class SunRgbdFrame:
    """Points of one SUN RGB-D frame with the pixel each came from."""

    points: np.ndarray  # (N, 6) float32 upright x, y, z (metres, z up), r, g, b in [0, 1]
    image: np.ndarray  # (H, W, 3) uint8
    rtilt: np.ndarray  # (3, 3) float64
    intrinsics: np.ndarray  # (3, 3) float64
    pix: np.ndarray  # (N, 2) int64 0-based (row, col) of each point

    @property
    def xyz(self) -> np.ndarray:
        return self.points[:, :3]


def load_calib(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """(Rtilt, K) from a votenet calib file: two lines of 9 numbers in MATLAB column-major order."""
    rows = [np.array(line.split(), dtype=np.float64) for line in path.read_text().splitlines()[:2]]
    return rows[0].reshape(3, 3, order="F"), rows[1].reshape(3, 3, order="F")


def project_upright_depth(xyz: np.ndarray, rtilt: np.ndarray, k: np.ndarray) -> np.ndarray:
    """0-based (row, col) pixel of each upright-depth point (votenet's recipe, MATLAB 1-based -> 0-based)."""
    p = xyz.astype(np.float64) @ rtilt
    cam = np.stack([p[:, 0], -p[:, 2], p[:, 1]], axis=1)
    uvw = cam @ k.T
    col = np.round(uvw[:, 0] / uvw[:, 2]).astype(np.int64) - 1
    row = np.round(uvw[:, 1] / uvw[:, 2]).astype(np.int64) - 1
    return np.stack([row, col], axis=1)


def load_votenet_frame(
    real_root: pathlib.Path, frame: str = "000001", num_points: int | None = None, seed: int = 0
) -> SunRgbdFrame:
    """Load one frame of the VoteNet export under ``real_root / TRAINVAL``; optionally subsample
    ``num_points`` points (fixed seed)."""
    root = pathlib.Path(real_root) / TRAINVAL
    points = scipy.io.loadmat(root / "depth" / f"{frame}.mat")["instance"].astype(np.float32)
    if num_points is not None and num_points < len(points):
        keep = np.sort(np.random.default_rng(seed).choice(len(points), num_points, replace=False))
        points = points[keep]
    image = np.asarray(Image.open(root / "image" / f"{frame}.jpg").convert("RGB"))
    rtilt, k = load_calib(root / "calib" / f"{frame}.txt")
    pix = project_upright_depth(points[:, :3], rtilt, k)
    # The manifest verifies 100 % of the points land inside the image; clip only guards rounding at the border.
    pix[:, 0] = np.clip(pix[:, 0], 0, image.shape[0] - 1)
    pix[:, 1] = np.clip(pix[:, 1], 0, image.shape[1] - 1)
    return SunRgbdFrame(points=points, image=image, rtilt=rtilt, intrinsics=k, pix=pix)

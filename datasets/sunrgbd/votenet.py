"""SUN RGB-D, VoteNet/mmdet3d-v0.x export (``sunrgbd_trainval/``): points, image, calibration, boxes.

Layout (MANIFEST.md section 3 of the real-data excerpts): ``depth/NNNNNN.mat`` (variable ``instance``,
N x 6 ``x y z r g b``, upright depth frame, rgb in [0, 1]) or ``lidar/NNNNNN.npz`` (key ``pc``, a 50k
subset), ``image/NNNNNN.jpg``, ``calib/NNNNNN.txt`` (Rtilt and K, 9 numbers each, MATLAB column-major),
``label/NNNNNN.txt`` (``label_v1/`` for the v1 annotations), ``train_data_idx.txt`` / ``val_data_idx.txt``.
The camera conventions are in ``datasets/sunrgbd/camera.py``.
"""
from __future__ import annotations

import collections
import dataclasses
import pathlib
import zipfile

import numpy as np
from PIL import Image

from datasets.geometry import zbuffer
from datasets.sunrgbd.camera import SunRgbdError, upright_pose, zero_based_intrinsics
from datasets.sunrgbd.labels import read_votenet_boxes
from datasets.types import Frame

TRAINVAL = pathlib.Path("sunrgbd") / "mmdet3d_9e39d46" / "sunrgbd_trainval"
LAYOUT = ("sunrgbd_trainval/{depth/NNNNNN.mat | lidar/NNNNNN.npz, image/NNNNNN.jpg, calib/NNNNNN.txt, "
          "label/NNNNNN.txt}")


@dataclasses.dataclass
class SunRgbdFrame:
    """Points of one SUN RGB-D frame with the pixel each came from."""

    points: np.ndarray  # (N, 6) float32 upright x, y, z (metres, z up), r, g, b in [0, 1]
    image: np.ndarray  # (H, W, 3) uint8
    rtilt: np.ndarray  # (3, 3) float64
    intrinsics: np.ndarray  # (3, 3) float64, MATLAB 1-based as in the calib file
    pix: np.ndarray  # (N, 2) int64 0-based (row, col) of each point

    @property
    def xyz(self) -> np.ndarray:
        return self.points[:, :3]


def load_calib(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """(Rtilt, K) from a votenet calib file: two lines of 9 numbers in MATLAB column-major order.

    K is returned as in the file (1-based pixel coordinates); ``zero_based_intrinsics`` converts it.
    """
    path = pathlib.Path(path)
    layout = f"calib/NNNNNN.txt: line 1 Rtilt, line 2 K, 9 numbers each, column-major ({LAYOUT})"
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise SunRgbdError(f"{path}: missing calib file (expected {layout})") from None
    try:
        rows = [np.array(line.split(), dtype=np.float64) for line in lines[:2]]
    except ValueError:
        raise SunRgbdError(f"{path}: non-numeric calib text (expected {layout})") from None
    if len(rows) < 2 or any(r.size != 9 for r in rows):
        raise SunRgbdError(f"{path}: malformed calib file (expected {layout})")
    return rows[0].reshape(3, 3, order="F"), rows[1].reshape(3, 3, order="F")


def project_upright_depth(xyz: np.ndarray, rtilt: np.ndarray, k: np.ndarray) -> np.ndarray:
    """0-based (row, col) pixel of each upright-depth point (votenet's recipe, MATLAB 1-based -> 0-based)."""
    p = xyz.astype(np.float64) @ rtilt
    cam = np.stack([p[:, 0], -p[:, 2], p[:, 1]], axis=1)
    uvw = cam @ k.T
    col = np.round(uvw[:, 0] / uvw[:, 2]).astype(np.int64) - 1
    row = np.round(uvw[:, 1] / uvw[:, 2]).astype(np.int64) - 1
    return np.stack([row, col], axis=1)


def stem(index: int | str) -> str:
    """File stem of a frame: an integer index is zero-padded to 6 digits, a string is kept as is."""
    return str(index) if isinstance(index, str) else f"{int(index):06d}"


def read_votenet_points(root: pathlib.Path | str, index: int | str, source: str = "depth") -> np.ndarray:
    """(N, 6) float32 ``x y z r g b`` of a frame: ``source`` "depth" (all points) or "lidar" (50k subset)."""
    root = pathlib.Path(root)
    if source == "depth":
        path = root / "depth" / f"{stem(index)}.mat"
        import scipy.io  # here, not at import: every run imports the readers, few read .mat files

        key, load = "instance", lambda: scipy.io.loadmat(path)
    elif source == "lidar":
        path = root / "lidar" / f"{stem(index)}.npz"
        key, load = "pc", lambda: np.load(path)
    else:
        raise ValueError(f"unknown point source {source!r}; valid: 'depth', 'lidar'")
    if not path.is_file():
        raise SunRgbdError(f"{path}: missing point file (expected {LAYOUT})")
    try:
        points = np.asarray(load()[key], dtype=np.float32)
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise SunRgbdError(f"{path}: cannot read variable {key!r} ({exc}) (expected {LAYOUT})") from None
    if points.ndim != 2 or points.shape[1] != 6:
        raise SunRgbdError(f"{path}: {key!r} has shape {points.shape}, expected (N, 6) x y z r g b")
    return points


def read_image(path: pathlib.Path, layout: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file; ``SunRgbdError`` naming ``layout`` when missing/unreadable."""
    if not path.is_file():
        raise SunRgbdError(f"{path}: missing image (expected {layout})")
    try:
        return np.asarray(Image.open(path).convert("RGB"))
    except OSError as exc:
        raise SunRgbdError(f"{path}: cannot read image ({exc})") from None


def votenet_frame(root: pathlib.Path | str, index: int | str, points: np.ndarray) -> Frame:
    """The ``Frame`` of an export frame given its points: JPEG, 0-based K, upright pose, z-buffered depth."""
    root = pathlib.Path(root)
    rgb = read_image(root / "image" / f"{stem(index)}.jpg", LAYOUT)
    rtilt, k_matlab = load_calib(root / "calib" / f"{stem(index)}.txt")
    K, pose = zero_based_intrinsics(k_matlab), upright_pose(rtilt)
    depth, _ = zbuffer(points[:, :3], K, pose, rgb.shape[:2])
    return Frame(frame_id=f"sunrgbd/{stem(index)}", rgb=rgb, depth=depth, intrinsics=K, pose=pose)


def read_votenet_frame(root: pathlib.Path | str, index: int | str, labels: str = "label", source: str = "depth",
                       dropped: collections.Counter | None = None) -> tuple[Frame, np.ndarray, np.ndarray]:
    """(Frame, boxes (B, 7), labels (B,)) of frame ``index`` of a ``sunrgbd_trainval`` folder ``root``.

    ``labels`` picks the annotation folder ("label" = v2, "label_v1"); ``source`` the points the depth
    map is rendered from ("depth" = every valid pixel, "lidar" = 50k subset). Boxes are in the harness
    convention, non-benchmark classes dropped (counted in ``dropped``).
    """
    points = read_votenet_points(root, index, source)
    boxes, box_labels = read_votenet_boxes(pathlib.Path(root) / labels / f"{stem(index)}.txt", dropped)
    return votenet_frame(root, index, points), boxes, box_labels


def load_votenet_frame(
    real_root: pathlib.Path, frame: str = "000001", num_points: int | None = None, seed: int = 0
) -> SunRgbdFrame:
    """Load one frame of the VoteNet export under ``real_root / TRAINVAL``; optionally subsample
    ``num_points`` points (fixed seed)."""
    root = pathlib.Path(real_root) / TRAINVAL
    points = read_votenet_points(root, frame)
    if num_points is not None and num_points < len(points):
        keep = np.sort(np.random.default_rng(seed).choice(len(points), num_points, replace=False))
        points = points[keep]
    image = read_image(root / "image" / f"{frame}.jpg", LAYOUT)
    rtilt, k = load_calib(root / "calib" / f"{frame}.txt")
    pix = project_upright_depth(points[:, :3], rtilt, k)
    # The manifest verifies 100 % of the points land inside the image; clip only guards rounding at the border.
    pix[:, 0] = np.clip(pix[:, 0], 0, image.shape[0] - 1)
    pix[:, 1] = np.clip(pix[:, 1], 0, image.shape[1] - 1)
    return SunRgbdFrame(points=points, image=image, rtilt=rtilt, intrinsics=k, pix=pix)

"""SUN RGB-D in its native folder layout (``SUNRGBD/<sensor>/.../<seq>/``), read without any MATLAB step.

Layout of one frame folder: ``image/*.jpg``, ``depth/*.png`` (``depth_bfx/*.png`` hole-filled),
``intrinsics.txt`` (3x3 K, row-major, MATLAB 1-based pixels), ``extrinsics/*.txt`` (3x4, first three
columns the tilt). These folders carry no 3D annotations here. Conventions as SUNRGBDtoolbox's
``read3dPoints`` (MANIFEST.md section 3), mapped onto ``Frame`` by ``datasets/sunrgbd/camera.py``.
"""
from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image

from datasets.sunrgbd.camera import (
    SunRgbdError,
    read_matrix,
    rtilt_from_extrinsics,
    upright_pose,
    zero_based_intrinsics,
)
from datasets.sunrgbd.votenet import read_image
from datasets.types import Frame

RAW_LAYOUT = "<seq>/{image/*.jpg, depth/*.png, depth_bfx/*.png, intrinsics.txt, extrinsics/*.txt}"
MAX_DEPTH_M = 8.0


def decode_depth_png(raw: np.ndarray) -> np.ndarray:
    """Metres (float32) from SUN RGB-D's uint16 depth PNG values: a 16-bit rotate right by 3, in mm.

    Depths beyond ``MAX_DEPTH_M`` are clipped to it, as the toolbox does; 0 stays 0 (missing).
    """
    v = np.asarray(raw).astype(np.uint32)
    metres = (((v >> 3) | (v << 13)) & 0xFFFF).astype(np.float32) / 1000.0
    return np.minimum(metres, MAX_DEPTH_M)


def _one_file(folder: pathlib.Path, sub: str, pattern: str, last: bool = False) -> pathlib.Path:
    files = sorted((folder / sub).glob(pattern))
    if not files:
        raise SunRgbdError(f"{folder / sub}: no {pattern} file (expected layout: {RAW_LAYOUT})")
    if len(files) > 1 and not last:
        raise SunRgbdError(f"{folder / sub}: {len(files)} {pattern} files, expected one (layout: {RAW_LAYOUT})")
    return files[-1]


def read_depth_png(path: pathlib.Path) -> np.ndarray:
    """(H, W) float32 metres of a SUN RGB-D depth PNG (0 = missing)."""
    try:
        raw = np.asarray(Image.open(path))
    except OSError as exc:
        raise SunRgbdError(f"{path}: cannot read depth PNG ({exc})") from None
    if raw.ndim != 2 or raw.dtype not in (np.uint16, np.int32, np.uint32):
        raise SunRgbdError(f"{path}: depth PNG has shape {raw.shape} and dtype {raw.dtype}, expected 16-bit grey")
    return decode_depth_png(raw)


def read_raw_frame(folder: pathlib.Path | str, use_bfx: bool = False) -> Frame:
    """A ``Frame`` from one native SUN RGB-D frame folder; back-projection gives upright points (z up).

    ``use_bfx`` reads the hole-filled ``depth_bfx/`` map instead of the raw ``depth/`` one.
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise SunRgbdError(f"{folder}: frame folder not found (expected layout: {RAW_LAYOUT})")
    rgb = read_image(_one_file(folder, "image", "*.jpg"), RAW_LAYOUT)
    depth = read_depth_png(_one_file(folder, "depth_bfx" if use_bfx else "depth", "*.png"))
    if depth.shape != rgb.shape[:2]:
        raise SunRgbdError(f"{folder}: depth {depth.shape} and image {rgb.shape[:2]} sizes differ")
    k = read_matrix(folder / "intrinsics.txt", (3, 3), RAW_LAYOUT)
    # The toolbox reads the last extrinsics file in name (= time stamp) order: the latest annotation.
    extrinsics_file = _one_file(folder, "extrinsics", "*.txt", last=True)
    extrinsics = read_matrix(extrinsics_file, (3, 4), RAW_LAYOUT)
    pose = upright_pose(rtilt_from_extrinsics(extrinsics))
    return Frame(frame_id=f"sunrgbd-raw/{folder.name}", rgb=rgb, depth=depth,
                 intrinsics=zero_based_intrinsics(k), pose=pose)

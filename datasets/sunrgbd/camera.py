"""SUN RGB-D camera conventions mapped onto the harness's ``Frame`` (OpenCV camera, 0-based pixels).

SUN RGB-D (SUNRGBDtoolbox, votenet) works in two frames besides the image:
- the *tilted depth* frame of the sensor: x right, y forward (along the optical axis), z up-ish;
- the *upright depth* frame = ``Rtilt`` @ tilted: gravity-aligned, z up. Points, boxes and the harness's
  world frame are all upright.
An OpenCV camera vector ``[X, Y, Z]`` (x right, y down, z forward) is the tilted vector ``[X, Z, -Y]``,
so the camera-to-world rotation is ``Rtilt @ CV_TO_TILTED``; the camera sits at the world origin.
Its pixel coordinates are MATLAB 1-based (pixel centre of column 0 is u = 1), so the harness's K is
the file's K with the principal point moved by -1; the pose carries no pixel convention.
"""
from __future__ import annotations

import pathlib

import numpy as np

from infra.errors import DataError

# Columns: where the OpenCV camera's x, y, z axes point in the tilted depth frame.
CV_TO_TILTED = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


class SunRgbdError(DataError):
    """A SUN RGB-D file is missing or malformed; the message names the file and the expected layout."""


def upright_pose(rtilt: np.ndarray) -> np.ndarray:
    """Camera-to-world (4, 4) of the OpenCV camera in the upright depth frame (camera at the origin)."""
    pose = np.eye(4)
    pose[:3, :3] = np.asarray(rtilt, dtype=np.float64) @ CV_TO_TILTED
    return pose


def zero_based_intrinsics(k_matlab: np.ndarray) -> np.ndarray:
    """The harness's K (pixel centres at 0-based integers) from SUN RGB-D's 1-based MATLAB K."""
    k = np.array(k_matlab, dtype=np.float64)
    k[0, 2] -= 1.0
    k[1, 2] -= 1.0
    return k


def rtilt_from_extrinsics(extrinsics: np.ndarray) -> np.ndarray:
    """Rtilt (3, 3) from a raw ``extrinsics/*.txt`` matrix (3, 4) or (3, 3), as SUNRGBDtoolbox does.

    The toolbox's ``Rtilt = T @ E @ T.T`` with ``T = [[1,0,0],[0,0,1],[0,-1,0]]``: E is the same tilt
    written in camera (y down) axes, and T is exactly ``CV_TO_TILTED``.
    """
    e = np.asarray(extrinsics, dtype=np.float64)[:3, :3]
    return CV_TO_TILTED @ e @ CV_TO_TILTED.T


def read_matrix(path: pathlib.Path, shape: tuple[int, int], layout: str, order: str = "C") -> np.ndarray:
    """A whitespace-separated numeric matrix of ``shape`` from a text file; ``SunRgbdError`` otherwise."""
    try:
        values = np.array(path.read_text().split(), dtype=np.float64)
    except FileNotFoundError:
        raise SunRgbdError(f"{path}: missing file (expected layout: {layout})") from None
    except ValueError:
        raise SunRgbdError(f"{path}: non-numeric text, expected a {shape[0]}x{shape[1]} matrix ({layout})") from None
    if values.size != shape[0] * shape[1]:
        raise SunRgbdError(f"{path}: {values.size} numbers, expected a {shape[0]}x{shape[1]} matrix ({layout})")
    return values.reshape(shape, order=order)

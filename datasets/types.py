"""Frame and Scene: the two data types every dataset reader returns.

Conventions (shared by all readers, converted once at load time):
- World frame: metres, z up (upright depth frame).
- Camera frame: OpenCV (x right, y down, z forward); ``pose`` is camera-to-world (4x4).
- Pixel (row, col) has its centre at image coordinates (u=col, v=row), 0-based; ``depth`` is the
  z coordinate in the camera frame (not the ray length), 0 where there is no measurement.
- Semantic labels are benchmark class indices 0..C-1 with ``IGNORE_INDEX`` (-1) for unlabelled;
  instance ids are >0, 0 meaning no instance.
- Boxes are ``[cx, cy, cz, dx, dy, dz, yaw]``: centre, full extents along the box's own axes, yaw
  counter-clockwise about +z from +x (DESIGN.md 2.10).
"""
from __future__ import annotations

import dataclasses

import numpy as np

IGNORE_INDEX = -1


@dataclasses.dataclass
class Frame:
    """One posed RGB-D frame with optional per-pixel labels."""

    frame_id: str
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 metres, 0 = missing
    intrinsics: np.ndarray  # (3, 3) float64 pinhole K
    pose: np.ndarray  # (4, 4) float64 camera-to-world
    instance: np.ndarray | None = None  # (H, W) int32, 0 = no instance
    semantic: np.ndarray | None = None  # (H, W) int32, IGNORE_INDEX = unlabelled

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.depth.shape[0]), int(self.depth.shape[1])


@dataclasses.dataclass
class Scene:
    """A fused scene point cloud with per-point labels, 3D boxes and (optionally) its frames."""

    scene_id: str
    points: np.ndarray  # (N, 3) float32 world coordinates
    colors: np.ndarray  # (N, 3) uint8
    semantic: np.ndarray  # (N,) int32 segmentation class, IGNORE_INDEX = unlabelled
    instance: np.ndarray  # (N,) int32, 0 = no instance
    boxes: np.ndarray  # (B, 7) float32 [cx, cy, cz, dx, dy, dz, yaw]
    box_labels: np.ndarray  # (B,) int32 detection class index
    box_instance: np.ndarray  # (B,) int32 instance id of each box (0 where unknown)
    frames: list[Frame] = dataclasses.field(default_factory=list)

    @property
    def num_points(self) -> int:
        return int(self.points.shape[0])


# The Scene fields with one row per point; anything that removes points must index all of them alike.
POINT_FIELDS = ("points", "colors", "semantic", "instance")


def select_points(scene: Scene, keep: np.ndarray) -> Scene:
    """``scene`` with only the points ``keep`` (a boolean mask or indices) in every per-point field.

    Boxes, their labels and instance ids, and the frames are kept as they are.
    """
    return dataclasses.replace(scene, **{name: getattr(scene, name)[keep] for name in POINT_FIELDS})


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a metric or a head needs to know about a dataset's label space."""

    name: str
    seg_classes: tuple[str, ...]  # segmentation class names, index = semantic label
    det_classes: tuple[str, ...]  # detection class names, index = box label
    seg_to_det: tuple[int, ...]  # detection index of each segmentation class, -1 if not detected
    has_yaw: bool  # whether boxes carry a meaningful yaw (SUN RGB-D) or are axis-aligned (ScanNet)
    ignore_index: int = IGNORE_INDEX


@dataclasses.dataclass
class Detections:
    """Predicted 3D boxes of one scene, in the box convention above."""

    boxes: np.ndarray  # (P, 7) float32 [cx, cy, cz, dx, dy, dz, yaw]
    labels: np.ndarray  # (P,) int64 detection class index
    scores: np.ndarray  # (P,) float32, higher = more confident

"""``SunRgbdVotenet``: the SUN RGB-D VoteNet export as a harness dataset, one frame per scene."""
from __future__ import annotations

import collections
import pathlib

import gin
import numpy as np

from datasets.frame_sequence import LazyFrames
from datasets.scene_list import SceneListDataset, non_finite_policy
from datasets.sunrgbd.camera import SunRgbdError
from datasets.sunrgbd.labels import SUNRGBD_INFO, read_votenet_boxes
from datasets.sunrgbd.votenet import LAYOUT, read_votenet_points, votenet_frame
from datasets.types import IGNORE_INDEX, Scene

_SPLIT_FILES = {"train": "train_data_idx.txt", "val": "val_data_idx.txt"}


def read_index_list(path: pathlib.Path) -> list[int]:
    """Frame indices of a ``*_data_idx.txt`` file (one integer a line)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SunRgbdError(f"{path}: missing split file (expected {LAYOUT} with train_data_idx.txt, "
                           "val_data_idx.txt)") from None
    try:
        return [int(tok) for tok in text.split()]
    except ValueError:
        raise SunRgbdError(f"{path}: expected one integer frame index a line") from None


@gin.register
class SunRgbdVotenet(SceneListDataset):
    """SUN RGB-D frames from a votenet ``sunrgbd_trainval`` folder; each scene is one RGB-D frame.

    Scenes carry the frame's upright points (world frame = upright depth frame, z up), colours, the 10-class
    oriented boxes and ``frames=[frame]``; every point is unlabelled (SUN RGB-D has no per-point labels).

    Args:
        root: the ``sunrgbd_trainval`` folder.
        labels: annotation folder, "label" (v2, what votenet/mmdet3d train on) or "label_v1".
        source: points, "depth" (every valid pixel, depth/*.mat) or "lidar" (50k subset, lidar/*.npz).
        non_finite: points with a NaN/inf coordinate: "drop" them (default; one warning line per scene)
            or "error" (refuse the scene with a one-line DataError).
    """

    def __init__(self, root: str | pathlib.Path, labels: str = "label", source: str = "depth",
                 non_finite: str = "drop"):
        self.root = pathlib.Path(root)
        if not self.root.is_dir():
            raise SunRgbdError(f"{self.root}: SUN RGB-D root folder not found (expected {LAYOUT})")
        self.labels, self.source = labels, source
        self.non_finite = non_finite_policy(non_finite)
        self.info = SUNRGBD_INFO
        self.scene_ids = {split: [f"sunrgbd-{i:06d}" for i in read_index_list(self.root / name)]
                          for split, name in _SPLIT_FILES.items()}
        self.dropped_names: collections.Counter = collections.Counter()  # raw classes outside the 10, so far

    def read_scene(self, scene_id: str) -> Scene:
        """Load one frame (``sunrgbd-NNNNNN``) as a ``Scene``."""
        number = int(scene_id.rsplit("-", 1)[1])
        points = read_votenet_points(self.root, number, self.source)
        boxes, labels = read_votenet_boxes(self.root / self.labels / f"{number:06d}.txt", self.dropped_names)
        # Read (and z-buffered) only when used: fine-tuning and the scene cache need the points alone.
        frames = LazyFrames([f"sunrgbd/{number:06d}"], lambda index: votenet_frame(self.root, number, points))
        return frame_scene(f"sunrgbd-{number:06d}", points, boxes, labels, frames)

    def points_source(self, scene_id: str) -> str:
        number = int(scene_id.rsplit("-", 1)[1])
        return str(self.root / "depth" / f"{number:06d}.mat" if self.source == "depth"
                   else self.root / "lidar" / f"{number:06d}.npz")

    def field_source(self, scene_id: str, field: str) -> str:
        if field.startswith("box"):
            return str(self.root / self.labels / f"{int(scene_id.rsplit('-', 1)[1]):06d}.txt")
        return self.points_source(scene_id)


def frame_scene(scene_id: str, points: np.ndarray, boxes: np.ndarray, labels: np.ndarray, frames) -> Scene:
    """The ``Scene`` of one SUN RGB-D frame: upright points (N x 6, rgb in [0, 1]), all unlabelled (SUN
    RGB-D has no per-point labels), its 10-class boxes (no instance ids) and its frame(s)."""
    n = len(points)
    return Scene(
        scene_id=scene_id,
        points=np.ascontiguousarray(points[:, :3]),
        colors=np.round(np.clip(points[:, 3:6], 0.0, 1.0) * 255.0).astype(np.uint8),
        semantic=np.full(n, IGNORE_INDEX, dtype=np.int32),
        instance=np.zeros(n, dtype=np.int32),
        boxes=boxes.astype(np.float32),
        box_labels=labels,
        box_instance=np.zeros(len(labels), dtype=np.int32),
        frames=frames,
    )

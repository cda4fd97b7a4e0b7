"""``SyntheticIndoor``: the embedded, fully simulated indoor RGB-D benchmark.

Nothing here is real data: rooms, furniture, cameras and images are all procedurally simulated
(``layout.py``, ``render.py``) so that the harness runs end to end without downloads.
"""
from __future__ import annotations

from typing import Iterator

import gin
import numpy as np

from datasets.geometry import aligned_box_of_oriented, backproject, pinhole_intrinsics
from datasets.synthetic.layout import DET_CLASSES, NUM_STRUCTURAL, SEG_CLASSES, Layout, sample_layout
from datasets.synthetic.render import render_frame
from datasets.types import DatasetInfo, Frame, Scene
from infra.checks import check_integer, check_number

# Each split code seeds its own scene streams; a new split takes a new code, so existing splits keep
# their scenes.
_SPLIT_CODES = {"train": 0, "val": 1, "pretrain": 2}
UNLABELLED_SPLITS = ("pretrain",)
# Part of the cache fingerprint (public state): bump it when the same settings generate other scenes.
# 2: furniture materials from the shared palette (materials.py) instead of one colour per class.
GENERATOR_VERSION = 2


def voxel_downsample(points: np.ndarray, voxel_size: float) -> np.ndarray:
    """Indices (sorted) of one point per occupied voxel: the first one in input order."""
    if len(points) == 0:
        return np.zeros(0, dtype=np.int64)
    keys = np.floor(points / voxel_size).astype(np.int64)
    keys -= keys.min(axis=0)
    span = keys.max(axis=0) + 1
    flat = (keys[:, 0] * span[1] + keys[:, 1]) * span[2] + keys[:, 2]
    _, first = np.unique(flat, return_index=True)
    return np.sort(first)


def fuse_frames(frames: list[Frame], voxel_size: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Back-project labelled frames into one world point cloud and keep one point per voxel.

    Returns points (N, 3) float32, colours (N, 3) uint8, semantic (N,) int32, instance (N,) int32;
    each kept point carries its own pixel's colour and labels (no averaging across frames).
    """
    pts, cols, sem, inst = [], [], [], []
    for f in frames:
        xyz, pix = backproject(f.depth, f.intrinsics, f.pose)
        r, c = pix[:, 0], pix[:, 1]
        pts.append(xyz)
        cols.append(f.rgb[r, c])
        sem.append(f.semantic[r, c])
        inst.append(f.instance[r, c])
    points = np.concatenate(pts)
    keep = voxel_downsample(points, voxel_size)
    return points[keep], np.concatenate(cols)[keep], np.concatenate(sem)[keep], np.concatenate(inst)[keep]


def frames_only_scene(scene_id: str, frames: list[Frame]) -> Scene:
    """A scene that is its frames: no fused point cloud, no point labels, no boxes (pretraining reads
    ``scene.frames`` only, so fusing would be wasted work)."""
    return Scene(scene_id=scene_id, points=np.zeros((0, 3), np.float32), colors=np.zeros((0, 3), np.uint8),
                 semantic=np.zeros(0, np.int32), instance=np.zeros(0, np.int32), boxes=np.zeros((0, 7), np.float32),
                 box_labels=np.zeros(0, np.int32), box_instance=np.zeros(0, np.int32), frames=frames)


@gin.register
class SyntheticIndoor:
    """A simulated indoor RGB-D benchmark (procedural rooms, ray-cast frames), not real data.

    Each (seed, split, index) has its own random streams, so any scene can be generated alone and
    scenes do not depend on each other or on the split sizes. Segmentation classes are ``wall``,
    ``floor`` and the furniture classes; detection classes are the furniture classes (long-tailed
    frequencies, see ``datasets/synthetic/furniture.py``); furniture colours come from a palette
    shared by all classes (``materials.py``). Instance ids: 1 floor, 2-5 walls, 6+ furniture.

    Splits ``train`` and ``val`` are labelled rooms. ``pretrain`` holds other rooms (their own
    streams) for pretraining and is unlabelled: its scenes carry frames only (no fused point cloud,
    no boxes). Its frames keep the rendered instance and semantic maps because the simulated SAM
    (``RenderedMaskSource``) and the simulated teacher (``SimulatedTeacher``) read them, standing in
    for SAM and DINOv2, which compute masks and features from the image. The labels reach
    pretraining only through those simulations; no loss reads them as targets and no metric
    reads them at all.

    Args:
        seed: master seed of the simulation.
        num_train, num_val: number of labelled scenes in each split.
        num_pretrain: number of unlabelled scenes (frames only) in the ``pretrain`` split.
        frames_per_scene: simulated RGB-D frames rendered per room.
        image_hw: (height, width) of every frame in pixels.
        fov_deg: horizontal field of view of the simulated pinhole camera.
        voxel_size: voxel edge (m) of the fused point cloud's downsampling.
        min_points_per_box: an object's box is dropped (its points are kept) when fewer fused points
            see it.
        yaw_boxes: oriented boxes with yaw (True) or their enclosing axis-aligned boxes, yaw 0 (False).
    """

    splits: tuple[str, ...] = tuple(_SPLIT_CODES)
    unlabelled_splits: tuple[str, ...] = UNLABELLED_SPLITS  # scenes with frames only

    def __init__(self, seed: int = 0, num_train: int = 24, num_val: int = 8, num_pretrain: int = 0,
                 frames_per_scene: int = 4, image_hw: tuple[int, int] = (120, 160), fov_deg: float = 70.0,
                 voxel_size: float = 0.03, min_points_per_box: int = 20, yaw_boxes: bool = True):
        for name, value in (("num_train", num_train), ("num_val", num_val), ("num_pretrain", num_pretrain)):
            check_integer(f"SyntheticIndoor.{name}", value, 0)
        check_integer("SyntheticIndoor.frames_per_scene", frames_per_scene, 1)
        check_number("SyntheticIndoor.voxel_size", voxel_size, low=0.0, low_open=True)
        check_number("SyntheticIndoor.fov_deg", fov_deg, low=0.0, high=180.0, low_open=True, high_open=True)
        if not (len(image_hw) == 2 and all(isinstance(v, int) and v >= 1 for v in image_hw)):
            raise ValueError(f"SyntheticIndoor.image_hw: expected (height, width) in pixels, each >= 1, got {image_hw!r}")
        self.seed = int(seed)
        self.generator_version = GENERATOR_VERSION
        # Public, so the cache keys (the dataset's fingerprint) cover the split sizes too.
        self.num_train, self.num_val, self.num_pretrain = int(num_train), int(num_val), int(num_pretrain)
        self.frames_per_scene = int(frames_per_scene)
        self.image_hw = (int(image_hw[0]), int(image_hw[1]))
        self.intrinsics = pinhole_intrinsics(self.image_hw, fov_deg)
        self.voxel_size = float(voxel_size)
        self.min_points_per_box = int(min_points_per_box)
        self.yaw_boxes = bool(yaw_boxes)
        self.info = DatasetInfo(
            name="synthetic",
            seg_classes=SEG_CLASSES,
            det_classes=DET_CLASSES,
            seg_to_det=tuple([-1] * NUM_STRUCTURAL + list(range(len(DET_CLASSES)))),
            has_yaw=self.yaw_boxes,
        )

    def generation_memory(self) -> tuple[float, str]:
        """(bytes, what sets them): generating one scene holds a frame's ray casting (measured: 440-530 bytes a
        pixel at 320x240 and 640x480) and the scene's rendered frames (about 20 bytes a pixel each)."""
        pixels = self.image_hw[0] * self.image_hw[1]
        return (pixels * (550 + 20 * self.frames_per_scene),
                f"generating a scene of SyntheticIndoor.image_hw = {self.image_hw} x frames_per_scene = "
                f"{self.frames_per_scene}")

    def num_scenes(self, split: str) -> int:
        """Number of scenes in ``split``."""
        return getattr(self, f"num_{self._check_split(split)}")

    def _check_split(self, split: str) -> str:
        if split not in _SPLIT_CODES:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(self.splits)}")
        return split

    def _streams(self, split: str, index: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
        """Independent layout, render and material generators of one scene."""
        n = self.num_scenes(split)
        if not 0 <= index < n:
            raise IndexError(f"scene index {index} out of range for split {split!r} with {n} scenes")
        # Children of a SeedSequence are numbered, so the first two (layout, render) are the same
        # whether two or three are spawned: the material stream came last and changed no other draw.
        seqs = np.random.SeedSequence([self.seed, _SPLIT_CODES[split], index]).spawn(3)
        return tuple(np.random.default_rng(s) for s in seqs)

    def scene_id(self, split: str, index: int) -> str:
        """Identifier of a scene, e.g. ``synthetic-s0-train-0003``."""
        return f"synthetic-s{self.seed}-{self._check_split(split)}-{index:04d}"

    def layout(self, split: str, index: int) -> Layout:
        """The room, furniture and camera poses of a scene, without rendering (cheap)."""
        layout_rng, _, material_rng = self._streams(split, index)
        return sample_layout(layout_rng, self.frames_per_scene, material_rng)

    def scene(self, split: str, index: int) -> Scene:
        """Render one simulated scene (deterministic in seed, split and index) and, for the labelled
        splits, fuse it into a labelled point cloud with boxes; pretrain scenes carry frames only."""
        layout_rng, render_rng, material_rng = self._streams(split, index)
        layout = sample_layout(layout_rng, self.frames_per_scene, material_rng)
        sid = self.scene_id(split, index)
        frames = [render_frame(layout.primitives, self.intrinsics, pose, self.image_hw, render_rng, f"{sid}-f{i:02d}")
                  for i, pose in enumerate(layout.poses)]
        if split in UNLABELLED_SPLITS:
            return frames_only_scene(sid, frames)
        points, colors, semantic, instance = fuse_frames(frames, self.voxel_size)
        counts = np.bincount(instance, minlength=max([o.instance for o in layout.objects], default=0) + 1)
        kept = [o for o in layout.objects if counts[o.instance] >= self.min_points_per_box]
        boxes = np.array([o.box for o in kept], dtype=np.float64).reshape(-1, 7)
        if not self.yaw_boxes:
            boxes = aligned_box_of_oriented(boxes)
        return Scene(
            scene_id=sid,
            points=points,
            colors=colors,
            semantic=semantic,
            instance=instance,
            boxes=boxes.astype(np.float32),
            box_labels=np.array([o.det_class for o in kept], dtype=np.int32),
            box_instance=np.array([o.instance for o in kept], dtype=np.int32),
            frames=frames,
        )

    def scenes(self, split: str) -> Iterator[Scene]:
        """Lazily generate the scenes of ``split`` in index order (one in memory at a time)."""
        for index in range(self.num_scenes(split)):
            yield self.scene(split, index)

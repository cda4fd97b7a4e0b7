"""Where a ScanNet scene's frames come from, chosen in gin: ``ScanNetExport.frames = @SensFrames()``.

A frame source is called with a scene (axis-aligned points, as every ScanNet reader returns them) and
gives its frames as ``LazyFrames``, read from disk only when pretraining's preparation uses them.
Without a frame source a ScanNet scene has no frames: fine-tuning and evaluation need none, while
pretraining stops with a one-line error.
"""
from __future__ import annotations

import logging
import pathlib

import gin

from datasets.frame_sequence import LazyFrames
from datasets.safe_pickle import load_pickle
from datasets.scannet.frames import infos_by_scene, posed_frames_from_info, sens_frames
from datasets.scannet.raw import read_axis_alignment
from datasets.types import Scene

log = logging.getLogger(__name__)


@gin.register
class SensFrames:
    """RGB-D frames exported from ScanNet's ``.sens`` files with SensReader, one folder per scene.

    Args:
        root: folder holding ``<scene>/color/``, ``depth/``, ``pose/``, ``intrinsic/``.
        every: keep one frame in ``every`` [prior: 25, as Bridge3D / the paper].
        depth_scale: depth PNG units per metre (ScanNet: millimetres).
        alignment_root: folder holding ``<scene>/<scene>.txt`` with the scene's ``axisAlignment``
            (ScanNet's ``scans/`` folder); None = look in ``root``. ``.sens`` poses are in the scan's
            original frame and the readers' points are axis-aligned, so the alignment is required.
    """

    def __init__(self, root: str = gin.REQUIRED, every: int = 25, depth_scale: float = 1000.0,
                 alignment_root: str | None = None):
        if every < 1 or depth_scale <= 0:
            raise ValueError(f"SensFrames: need every >= 1 and depth_scale > 0, got {every}, {depth_scale}")
        self.root = pathlib.Path(root)
        self.every = int(every)
        self.depth_scale = float(depth_scale)
        self.alignment_root = pathlib.Path(alignment_root) if alignment_root is not None else None

    def __call__(self, scene: Scene) -> LazyFrames:
        meta = (self.alignment_root or self.root) / scene.scene_id / f"{scene.scene_id}.txt"
        if not meta.is_file():
            raise FileNotFoundError(
                f"missing {meta}: the scan's axisAlignment is needed to put .sens poses into the scene's "
                f"axis-aligned frame (set SensFrames.alignment_root to ScanNet's scans/ folder)")
        align = read_axis_alignment(meta)
        return sens_frames(self.root / scene.scene_id, self.every, self.depth_scale, align)


@gin.register
class PosedImageFrames:
    """Posed colour images listed in an mmdet3d v0.x multi-view ``scannet_infos.pkl`` (no depth):
    depth, instance and semantic per pixel come from z-buffering the scene's points.

    Args:
        infos: the infos pkl (read with the restricted unpickler); image paths are relative to its folder.
        splat_px: z-buffer splat radius in pixels (0 = one pixel per point).
        missing_ok: scenes absent from the infos get no frames (logged) instead of an error.
    """

    def __init__(self, infos: str = gin.REQUIRED, splat_px: int = 0, missing_ok: bool = True):
        self.infos = pathlib.Path(infos)
        self.splat_px = int(splat_px)
        self.missing_ok = bool(missing_ok)
        self._by_scene: dict[str, dict] | None = None

    def _infos(self) -> dict[str, dict]:
        if self._by_scene is None:  # read once per process, on first use
            self._by_scene = infos_by_scene(load_pickle(self.infos), self.infos)
        return self._by_scene

    def __call__(self, scene: Scene) -> LazyFrames:
        info = self._infos().get(scene.scene_id)
        if info is None:
            if not self.missing_ok:
                raise ValueError(f"{self.infos}: no info with point_cloud.lidar_idx == {scene.scene_id!r}")
            log.info("%s: no posed images for %s; the scene has no frames", self.infos, scene.scene_id)
            return LazyFrames([], lambda index: None)
        return posed_frames_from_info(info, self.infos, scene, self.splat_px)


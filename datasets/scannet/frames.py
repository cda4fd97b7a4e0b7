"""ScanNet posed images -> ``Frame``: RGB-D frames exported from ``.sens`` and posed colour images
without depth, whose depth and labels are rendered by z-buffering the scene points.

Conventions of ``datasets/types.py``: OpenCV camera, ``pose`` camera-to-world, depth = camera z in
metres (0 = missing), pixel (row, col) centred at (v=row, u=col).
"""
from __future__ import annotations

import logging
import pathlib
from typing import Sequence

import numpy as np
from PIL import Image

from datasets.frame_sequence import LazyFrames
from datasets.geometry import zbuffer
from datasets.safe_pickle import load_pickle
from datasets.types import IGNORE_INDEX, Frame, Scene

log = logging.getLogger(__name__)
SENS_LAYOUT = ("<scene>/color/<i>.jpg, depth/<i>.png (uint16 mm), pose/<i>.txt (4x4 camera-to-world), "
               "intrinsic/intrinsic_color.txt, intrinsic/intrinsic_depth.txt")

POSED_LAYOUT = "img_paths of the infos pkl, relative to its folder (mmdet3d: posed_images/<scene>/<i>.jpg)"


class FrameList(list):
    """A list of frames that also says how many were skipped for an invalid (inf/NaN) pose."""

    num_invalid_pose: int = 0


def _load_matrix(path: pathlib.Path, shape: tuple[int, int]) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"missing file {path} (expected layout: {SENS_LAYOUT})")
    try:
        m = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise ValueError(f"{path}: not a text matrix ({e})") from None
    if m.shape != shape:
        raise ValueError(f"{path}: shape {m.shape}, expected {shape}; layout: {SENS_LAYOUT}")
    return m


def _load_image(path: pathlib.Path, mode: str | None, layout: str = SENS_LAYOUT) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"missing image {path} (expected layout: {layout})")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode) if mode else im)
    except OSError as e:
        raise ValueError(f"{path}: unreadable image ({e})") from None


def resample_color(rgb: np.ndarray, k_color: np.ndarray, k_depth: np.ndarray, depth_hw: tuple[int, int]) -> np.ndarray:
    """Colour image resampled (nearest neighbour) onto the depth image's pixel grid.

    Assumes the two cameras share centre and orientation (the ``.sens`` export's colour and depth are
    registered), so a depth pixel maps to the colour pixel with the same normalised ray.
    """
    rows, cols = np.arange(depth_hw[0]), np.arange(depth_hw[1])
    u = (cols - k_depth[0, 2]) / k_depth[0, 0] * k_color[0, 0] + k_color[0, 2]
    v = (rows - k_depth[1, 2]) / k_depth[1, 1] * k_color[1, 1] + k_color[1, 2]
    u = np.clip(np.round(u).astype(np.int64), 0, rgb.shape[1] - 1)
    v = np.clip(np.round(v).astype(np.int64), 0, rgb.shape[0] - 1)
    return rgb[v[:, None], u[None, :]]


def sens_frames(scene_folder: str | pathlib.Path, every: int = 25, depth_scale: float = 1000.0,
                align: np.ndarray | None = None) -> LazyFrames:
    """Frames of a ``.sens`` export (SensReader layout), keeping one frame in ``every`` (sorted ids),
    read lazily: the poses are read now, each frame's images when the frame is used.

    Frames are at depth resolution with the depth intrinsics; when the colour image has another size
    it is resampled onto the depth grid (``resample_color``). Frames with a non-finite pose (ScanNet
    marks lost tracking with inf/NaN) are skipped and counted in ``num_invalid_pose``. ``align``
    (4x4, e.g. the scene's ``axisAlignment``) is applied to every pose, so frames share the frame of
    axis-aligned scene points.
    """
    folder = pathlib.Path(scene_folder)
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    color_dir = folder / "color"
    if not color_dir.is_dir():
        raise FileNotFoundError(f"missing folder {color_dir} (expected layout: {SENS_LAYOUT})")
    k_color = _load_matrix(folder / "intrinsic" / "intrinsic_color.txt", (4, 4))[:3, :3]
    k_depth = _load_matrix(folder / "intrinsic" / "intrinsic_depth.txt", (4, 4))[:3, :3]
    listed = sorted((p.stem for p in color_dir.glob("*.jpg") if p.stem.isdigit()), key=int)[::every]
    align = np.eye(4) if align is None else np.asarray(align, dtype=np.float64)
    ids, poses = [], []
    for i in listed:
        pose = _load_matrix(folder / "pose" / f"{i}.txt", (4, 4))
        if np.all(np.isfinite(pose)):
            ids.append(i)
            poses.append(align @ pose)
    num_invalid = len(listed) - len(ids)
    if num_invalid:
        log.warning("%s: skipped %d of %d frames with an invalid (inf/NaN) pose", folder, num_invalid, len(listed))

    def load(index: int) -> Frame:
        i = ids[index]
        depth_raw = _load_image(folder / "depth" / f"{i}.png", None)
        if depth_raw.ndim != 2 or depth_raw.dtype.kind not in "ui":
            raise ValueError(f"{folder / 'depth' / f'{i}.png'}: expected a 16-bit single-channel PNG, "
                             f"got {depth_raw.dtype} {depth_raw.shape}")
        rgb = _load_image(color_dir / f"{i}.jpg", "RGB")
        if rgb.shape[:2] != depth_raw.shape:
            rgb = resample_color(rgb, k_color, k_depth, depth_raw.shape)
        return Frame(frame_id=f"{folder.name}-{i}", rgb=np.ascontiguousarray(rgb),
                     depth=(depth_raw.astype(np.float32) / depth_scale), intrinsics=k_depth.copy(),
                     pose=poses[index].copy())

    frames = LazyFrames([f"{folder.name}-{i}" for i in ids], load)
    frames.num_invalid_pose = num_invalid
    return frames


def read_sens_frames(scene_folder: str | pathlib.Path, every: int = 25, depth_scale: float = 1000.0) -> FrameList:
    """All kept frames of a ``.sens`` export, read now (``sens_frames`` reads them on use)."""
    lazy = sens_frames(scene_folder, every, depth_scale)
    frames = FrameList(lazy)
    frames.num_invalid_pose = lazy.num_invalid_pose
    return frames


def frames_from_posed_images(points: np.ndarray, semantic: np.ndarray | None, instance: np.ndarray | None,
                             images: Sequence[np.ndarray], intrinsics: np.ndarray | Sequence[np.ndarray],
                             poses: Sequence[np.ndarray], frame_ids: Sequence[str] | None = None,
                             splat_px: int = 0) -> list[Frame]:
    """Frames for colour images without depth: depth, instance and semantic rendered by z-buffering.

    ``points`` must be in the frame of ``poses`` (camera-to-world). Per pixel, the nearest point that
    lands there gives depth, instance and semantic; elsewhere depth 0, instance 0 and semantic
    ``IGNORE_INDEX``. Each frame's rgb is the given image.
    """
    if not len(images) == len(poses):
        raise ValueError(f"got {len(images)} images for {len(poses)} poses")
    ks = [np.asarray(intrinsics)] * len(images) if np.ndim(intrinsics) == 2 else list(intrinsics)
    frames = []
    for i, (rgb, K, pose) in enumerate(zip(images, ks, poses)):
        K, pose = np.asarray(K, dtype=np.float64)[:3, :3], np.asarray(pose, dtype=np.float64)
        depth, index = zbuffer(points, K, pose, rgb.shape[:2], splat_px)
        hit = index >= 0
        inst = np.zeros(depth.shape, dtype=np.int32)
        sem = np.full(depth.shape, IGNORE_INDEX, dtype=np.int32)
        if instance is not None:
            inst[hit] = instance[index[hit]]
        if semantic is not None:
            sem[hit] = semantic[index[hit]]
        frames.append(Frame(frame_id=frame_ids[i] if frame_ids else f"frame{i:05d}", rgb=rgb, depth=depth,
                            intrinsics=K, pose=pose, instance=inst, semantic=sem))
    return frames


def posed_frames_from_infos(infos_path: str | pathlib.Path, scene: Scene, splat_px: int = 0,
                            info_index: int | None = None) -> list[Frame]:
    """Frames of ``scene`` from an mmdet3d v0.x multi-view ``scannet_infos.pkl`` (``posed_images/``).

    The info of ``scene.scene_id`` is used (or ``info_index``); see ``posed_frames_from_info``.
    """
    infos_path = pathlib.Path(infos_path)
    info = _pick_info(load_pickle(infos_path), infos_path, scene.scene_id, info_index)
    return list(posed_frames_from_info(info, infos_path, scene, splat_px))


def posed_frames_from_info(info: dict, infos_path: pathlib.Path, scene: Scene, splat_px: int = 0) -> LazyFrames:
    """Frames of ``scene`` from one multi-view info, each read when used (image paths are relative to
    the pkl's folder). Poses in the pkl are camera-to-world in ScanNet's original frame; ``scene`` is
    axis-aligned, so the returned poses are ``axis_align_matrix @ pose`` (projection is unchanged, and
    the frames share the scene's frame). Depth and labels come from z-buffering the scene's points.
    """
    try:
        align = np.asarray(info["annos"]["axis_align_matrix"], dtype=np.float64)
        k, paths = np.asarray(info["intrinsics"], dtype=np.float64), list(info["img_paths"])
        poses = [align @ np.asarray(p, dtype=np.float64) for p in info["extrinsics"]]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{infos_path}: info needs intrinsics, extrinsics, img_paths, annos.axis_align_matrix") from None
    if len(poses) != len(paths):
        raise ValueError(f"{infos_path}: {len(paths)} img_paths for {len(poses)} extrinsics")
    ids = [f"{scene.scene_id}-{pathlib.Path(p).stem}" for p in paths]

    def load(index: int) -> Frame:
        rgb = _load_image(pathlib.Path(infos_path).parent / paths[index], "RGB", POSED_LAYOUT)
        return frames_from_posed_images(scene.points, scene.semantic, scene.instance, [rgb], k, [poses[index]],
                                        [ids[index]], splat_px)[0]

    return LazyFrames(ids, load)


def infos_by_scene(infos: object, path: pathlib.Path) -> dict[str, dict]:
    """The infos of an mmdet3d v0.x multi-view pkl (a list) keyed by scene id (``point_cloud.lidar_idx``)."""
    if not isinstance(infos, list) or not infos:
        raise ValueError(f"{path}: expected a non-empty list of per-scene info dicts (mmdet3d v0.x)")
    by_scene = {}
    for info in infos:
        scene_id = info.get("point_cloud", {}).get("lidar_idx") if isinstance(info, dict) else None
        if not isinstance(scene_id, str):
            raise ValueError(f"{path}: every info needs point_cloud.lidar_idx (the scene id)")
        by_scene[scene_id] = info
    return by_scene


def _pick_info(infos: object, path: pathlib.Path, scene_id: str, index: int | None) -> dict:
    by_scene = infos_by_scene(infos, path)  # also checks the pkl's shape
    if index is not None:
        return infos[index]
    info = by_scene.get(scene_id)
    if info is None:
        raise ValueError(f"{path}: no info with point_cloud.lidar_idx == {scene_id!r}")
    return info

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

from datasets.geometry import project, zbuffer
from datasets.safe_pickle import load_pickle
from datasets.types import IGNORE_INDEX, Frame, Scene

log = logging.getLogger(__name__)
SENS_LAYOUT = ("<scene>/color/<i>.jpg, depth/<i>.png (uint16 mm), pose/<i>.txt (4x4 camera-to-world), "
               "intrinsic/intrinsic_color.txt, intrinsic/intrinsic_depth.txt")


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


def _load_image(path: pathlib.Path, mode: str | None) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"missing image {path} (expected layout: {SENS_LAYOUT})")
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


def read_sens_frames(scene_folder: str | pathlib.Path, every: int = 25, depth_scale: float = 1000.0) -> FrameList:
    """Frames of a ``.sens`` export (SensReader layout), keeping one frame in ``every`` (sorted ids).

    Frames are at depth resolution with the depth intrinsics; when the colour image has another size
    it is resampled onto the depth grid (``resample_color``). Frames with a non-finite pose (ScanNet
    marks lost tracking with inf/NaN) are skipped and counted in ``num_invalid_pose``.
    """
    folder = pathlib.Path(scene_folder)
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    color_dir = folder / "color"
    if not color_dir.is_dir():
        raise FileNotFoundError(f"missing folder {color_dir} (expected layout: {SENS_LAYOUT})")
    k_color = _load_matrix(folder / "intrinsic" / "intrinsic_color.txt", (4, 4))[:3, :3]
    k_depth = _load_matrix(folder / "intrinsic" / "intrinsic_depth.txt", (4, 4))[:3, :3]
    ids = sorted((p.stem for p in color_dir.glob("*.jpg") if p.stem.isdigit()), key=int)[::every]
    frames = FrameList()
    for i in ids:
        pose = _load_matrix(folder / "pose" / f"{i}.txt", (4, 4))
        if not np.all(np.isfinite(pose)):
            frames.num_invalid_pose += 1
            continue
        depth_raw = _load_image(folder / "depth" / f"{i}.png", None)
        if depth_raw.ndim != 2 or depth_raw.dtype.kind not in "ui":
            raise ValueError(f"{folder / 'depth' / f'{i}.png'}: expected a 16-bit single-channel PNG, "
                             f"got {depth_raw.dtype} {depth_raw.shape}")
        rgb = _load_image(color_dir / f"{i}.jpg", "RGB")
        if rgb.shape[:2] != depth_raw.shape:
            rgb = resample_color(rgb, k_color, k_depth, depth_raw.shape)
        frames.append(Frame(frame_id=f"{folder.name}-{i}", rgb=np.ascontiguousarray(rgb),
                            depth=(depth_raw.astype(np.float32) / depth_scale), intrinsics=k_depth.copy(), pose=pose))
    if frames.num_invalid_pose:
        log.warning("%s: skipped %d of %d frames with an invalid (inf/NaN) pose", folder, frames.num_invalid_pose, len(ids))
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

    The info of ``scene.scene_id`` is used (or ``info_index``). Poses in the pkl are camera-to-world
    in ScanNet's original frame; ``scene`` is axis-aligned, so the returned poses are
    ``axis_align_matrix @ pose`` (projection is unchanged, and the frames share the scene's frame).
    """
    infos_path = pathlib.Path(infos_path)
    infos = load_pickle(infos_path)
    info = _pick_info(infos, infos_path, scene.scene_id, info_index)
    try:
        align = np.asarray(info["annos"]["axis_align_matrix"], dtype=np.float64)
        k, poses, paths = np.asarray(info["intrinsics"], dtype=np.float64), info["extrinsics"], info["img_paths"]
    except (KeyError, TypeError):
        raise ValueError(f"{infos_path}: info needs intrinsics, extrinsics, img_paths, annos.axis_align_matrix") from None
    images = [_load_image(infos_path.parent / p, "RGB") for p in paths]
    poses = [align @ np.asarray(p, dtype=np.float64) for p in poses]
    ids = [f"{scene.scene_id}-{pathlib.Path(p).stem}" for p in paths]
    return frames_from_posed_images(scene.points, scene.semantic, scene.instance, images, k, poses, ids, splat_px)


def _pick_info(infos: object, path: pathlib.Path, scene_id: str, index: int | None) -> dict:
    if not isinstance(infos, list) or not infos:
        raise ValueError(f"{path}: expected a non-empty list of per-scene info dicts (mmdet3d v0.x)")
    if index is not None:
        return infos[index]
    for info in infos:
        lidar_idx = info.get("point_cloud", {}).get("lidar_idx") if isinstance(info, dict) else None
        if lidar_idx == scene_id:
            return info
    raise ValueError(f"{path}: no info with point_cloud.lidar_idx == {scene_id!r}")

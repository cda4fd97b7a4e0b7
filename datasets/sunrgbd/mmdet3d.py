"""SUN RGB-D in the mmdet3d v1.x layout: ``sunrgbd_infos_<split>.pkl`` + ``points/*.bin`` + images.

Each info of the pkl's ``data_list`` names its points (``lidar_points.lidar_path``, a headerless float32
N x 6 ``x y z r g b`` file in the upright depth frame, rgb in [0, 1]), its image
(``images.CAM0.img_path``) with the 3x3 ``depth2img`` = K . axis-flip . Rtilt^T (MATLAB 1-based pixels),
and its ``instances`` with ``bbox_3d`` = ``[cx, cy, cz, x_size, y_size, z_size, yaw]``: gravity centre,
sizes along the box's own axes, yaw counter-clockwise from +x, which is the harness's box convention
as it is, and ``bbox_label_3d`` in the same 10-class order. mmdet3d v0.x infos (``annos``) are read by
``SunRgbdVotenet`` from the files they point to.
"""
from __future__ import annotations

import pathlib

import gin
import numpy as np

from datasets.frame_sequence import LazyFrames
from datasets.geometry import zbuffer
from datasets.safe_pickle import load_pickle
from datasets.scene_list import SceneListDataset, non_finite_policy
from datasets.sunrgbd.camera import SunRgbdError, zero_based_intrinsics
from datasets.sunrgbd.dataset import frame_scene
from datasets.sunrgbd.labels import DET_CLASSES, SUNRGBD_INFO
from datasets.sunrgbd.votenet import read_image
from datasets.types import Frame, Scene

LAYOUT = ("mmdet3d v1.x: sunrgbd_infos_<split>.pkl {metainfo, data_list[{lidar_points.lidar_path, "
          "images.CAM0.{img_path, depth2img}, instances[{bbox_3d, bbox_label_3d}]}]}, points/NNNNNN.bin, "
          "sunrgbd_trainval/image/NNNNNN.jpg")


def camera_from_depth2img(depth2img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K with 0-based pixel centres, 4x4 camera-to-world pose) of an mmdet3d ``depth2img`` matrix.

    ``depth2img = K_matlab @ R`` with ``R`` the world-to-camera rotation (camera at the origin), so an
    RQ decomposition recovers both; signs are fixed so K has a positive diagonal and R is a rotation.
    """
    m = np.asarray(depth2img, dtype=np.float64)
    if m.shape != (3, 3) or not np.all(np.isfinite(m)):
        raise ValueError(f"depth2img must be a finite 3x3 matrix, got shape {m.shape}")
    import scipy.linalg  # here: only reading mmdet3d calibration needs it

    k, r = scipy.linalg.rq(m)
    signs = np.diag(np.sign(np.diag(k)))
    k, r = k @ signs, signs @ r
    if np.linalg.det(r) < 0:  # depth2img is only known up to scale; a negative scale flips both
        k, r = -k, -r
    pose = np.eye(4)
    pose[:3, :3] = r.T
    return zero_based_intrinsics(k / k[2, 2]), pose


def _info_fields(info: object, where: str) -> tuple[str, str, np.ndarray, np.ndarray, np.ndarray]:
    try:
        cam = info["images"]["CAM0"]
        instances = info.get("instances", [])
        boxes = np.array([inst["bbox_3d"] for inst in instances], dtype=np.float64).reshape(-1, 7)
        labels = np.array([inst["bbox_label_3d"] for inst in instances], dtype=np.int32)
        return (str(info["lidar_points"]["lidar_path"]), str(cam["img_path"]),
                np.asarray(cam["depth2img"], dtype=np.float64), boxes, labels)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise SunRgbdError(f"{where}: malformed info (expected {LAYOUT})") from None


@gin.register
class SunRgbdMmdet3d(SceneListDataset):
    """SUN RGB-D frames listed in mmdet3d v1.x info pkls; each scene is one RGB-D frame, as ``SunRgbdVotenet``.

    Args:
        root: the data root the info paths are relative to.
        infos: split -> info pkl (relative to ``root``), read with the restricted unpickler.
        points_dir: folder of the ``.bin`` points, relative to ``root`` ("" = ``root``).
        images_dir: folder of the images, relative to ``root``.
        non_finite: points with a NaN/inf coordinate: "drop" them (default; one warning line per scene)
            or "error" (refuse the scene with a one-line DataError).
    """

    def __init__(self, root: str | pathlib.Path = gin.REQUIRED,
                 infos: dict[str, str] | None = None, points_dir: str = "points",
                 images_dir: str = "sunrgbd_trainval/image", non_finite: str = "drop"):
        self.root = pathlib.Path(root)
        if not self.root.is_dir():
            raise SunRgbdError(f"{self.root}: SUN RGB-D root folder not found (expected {LAYOUT})")
        self.non_finite = non_finite_policy(non_finite)
        self.infos = dict(infos or {"train": "sunrgbd_infos_train.pkl", "val": "sunrgbd_infos_val.pkl"})
        self.points_dir, self.images_dir = points_dir, images_dir
        self.info = SUNRGBD_INFO
        self._entries: dict[str, dict] = {}
        self.scene_ids = {split: self._read_infos(self.root / name) for split, name in self.infos.items()}

    def _read_infos(self, path: pathlib.Path) -> list[str]:
        if not path.is_file():
            raise SunRgbdError(f"{path}: missing info pkl (expected {LAYOUT})")
        data = load_pickle(path)
        if not isinstance(data, dict) or not isinstance(data.get("data_list"), list):
            raise SunRgbdError(f"{path}: expected a dict with a 'data_list' list (mmdet3d v1.x infos; "
                               f"v0.x infos: use SunRgbdVotenet)")
        ids = []
        for i, info in enumerate(data["data_list"]):
            fields = _info_fields(info, f"{path}: data_list[{i}]")
            scene_id = f"sunrgbd-{pathlib.Path(fields[0]).stem}"
            if fields[4].size and (fields[4].min() < 0 or fields[4].max() >= len(DET_CLASSES)):
                raise SunRgbdError(f"{path}: data_list[{i}]: bbox_label_3d outside 0..{len(DET_CLASSES) - 1}")
            self._entries[scene_id] = dict(zip(("points", "image", "depth2img", "boxes", "labels"), fields))
            ids.append(scene_id)
        return ids

    def read_scene(self, scene_id: str) -> Scene:
        """Load one frame as a ``Scene``: upright points, boxes, and its frame (read when used)."""
        entry = self._entries[scene_id]
        path = self.root / self.points_dir / entry["points"]
        if not path.is_file():
            raise SunRgbdError(f"{path}: missing point file (expected {LAYOUT})")
        raw = np.fromfile(path, dtype="<f4")
        if raw.size == 0 or raw.size % 6:
            raise SunRgbdError(f"{path}: {raw.size} float32 values, expected N x 6 (x y z r g b)")
        points = raw.reshape(-1, 6)

        def load_frame(index: int) -> Frame:
            rgb = read_image(self.root / self.images_dir / entry["image"], LAYOUT)
            k, pose = camera_from_depth2img(entry["depth2img"])
            depth, _ = zbuffer(points[:, :3], k, pose, rgb.shape[:2])
            return Frame(frame_id=scene_id.replace("-", "/", 1), rgb=rgb, depth=depth, intrinsics=k, pose=pose)

        frames = LazyFrames([scene_id.replace("-", "/", 1)], load_frame)
        return frame_scene(scene_id, points, entry["boxes"], entry["labels"], frames)

    def points_source(self, scene_id: str) -> str:
        return str(self.root / self.points_dir / self._entries[scene_id]["points"])

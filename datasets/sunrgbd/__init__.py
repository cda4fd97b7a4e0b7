"""SUN RGB-D readers: the VoteNet export (``SunRgbdVotenet``, ``read_votenet_frame``), the mmdet3d v1.x
infos layout (``SunRgbdMmdet3d``), the native folder layout (``read_raw_frame``), the 10-class label space (``SUNRGBD_INFO``) and the camera conventions.

Every reader returns the harness's types and conventions (``datasets/types.py``): upright world frame
(z up), OpenCV camera, 0-based pixel centres, boxes ``[cx, cy, cz, dx, dy, dz, yaw]``.
"""
from datasets.sunrgbd.camera import (
    CV_TO_TILTED,
    SunRgbdError,
    rtilt_from_extrinsics,
    upright_pose,
    zero_based_intrinsics,
)
from datasets.sunrgbd.dataset import SunRgbdVotenet, read_index_list
from datasets.sunrgbd.mmdet3d import SunRgbdMmdet3d, camera_from_depth2img
from datasets.sunrgbd.labels import CLASS_INDEX, DET_CLASSES, SUNRGBD_INFO, label_box, read_votenet_boxes
from datasets.sunrgbd.raw import decode_depth_png, read_depth_png, read_raw_frame
from datasets.sunrgbd.votenet import (
    TRAINVAL,
    SunRgbdFrame,
    load_calib,
    load_votenet_frame,
    project_upright_depth,
    read_votenet_frame,
    read_votenet_points,
    votenet_frame,
)

__all__ = [
    "CLASS_INDEX", "CV_TO_TILTED", "DET_CLASSES", "SUNRGBD_INFO", "TRAINVAL", "SunRgbdError", "SunRgbdFrame",
    "SunRgbdMmdet3d", "SunRgbdVotenet", "camera_from_depth2img", "decode_depth_png", "label_box", "load_calib", "load_votenet_frame", "project_upright_depth",
    "read_depth_png", "read_index_list", "read_raw_frame", "read_votenet_boxes", "read_votenet_frame",
    "read_votenet_points", "rtilt_from_extrinsics", "upright_pose", "votenet_frame",
    "zero_based_intrinsics",
]

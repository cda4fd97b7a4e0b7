"""ScanNet v2 readers: label maps, per-layout scene readers, posed frames and gin-registered datasets.

Layouts: votenet/mmdet3d ``.npy`` export (``read_export_scene``, ``ScanNetExport``), mmdet3d v1.x
``.bin`` (``read_bin_scene``, ``ScanNetBin``), raw ``scans/`` (``read_raw_scene``, ``ScanNetRaw``),
``.sens`` RGB-D exports (``read_sens_frames``) and posed colour images without depth
(``frames_from_posed_images``, ``posed_frames_from_infos``); the gin frame sources ``SensFrames`` and
``PosedImageFrames`` attach them to a dataset's scenes. See MANIFEST.md of the real excerpts.
"""
from datasets.scannet.dataset import ScanNetBin, ScanNetExport, ScanNetRaw, read_split_list
from datasets.scannet.frame_sources import PosedImageFrames, SensFrames
from datasets.scannet.frames import (
    FrameList,
    frames_from_posed_images,
    posed_frames_from_info,
    posed_frames_from_infos,
    read_sens_frames,
    resample_color,
    sens_frames,
    zbuffer,
)
from datasets.scannet.labels import (
    DET_CLASSES,
    DET_NYU40_IDS,
    SCANNET_INFO,
    SEG_CLASSES,
    SEG_NYU40_IDS,
    nyu40_to_det,
    nyu40_to_seg,
)
from datasets.scannet.raw import read_axis_alignment, read_label_map, read_ply_vertices, read_raw_scene
from datasets.scannet.readers import boxes_from_instances, read_bin_scene, read_export_scene

__all__ = [
    "DET_CLASSES", "DET_NYU40_IDS", "FrameList", "PosedImageFrames", "SCANNET_INFO", "SEG_CLASSES", "SEG_NYU40_IDS",
    "ScanNetBin", "ScanNetExport", "ScanNetRaw", "SensFrames", "boxes_from_instances", "frames_from_posed_images",
    "nyu40_to_det", "nyu40_to_seg", "posed_frames_from_info", "posed_frames_from_infos", "read_axis_alignment",
    "read_bin_scene", "read_export_scene", "read_label_map", "read_ply_vertices", "read_raw_scene",
    "read_sens_frames", "read_split_list", "resample_color", "sens_frames", "zbuffer",
]

"""Write the simulated benchmark in the on-disk layouts of real datasets, so that the real readers are
tested end to end on complete scenes (the real excerpts are partial). Everything written is simulated:
file and scene names keep the synthetic ids, and ``synthetic_export.json`` at the top says so. Only the
labelled splits (train, val) are exported; the unlabelled pretrain split (frames only) is left out.

ScanNet v2 raw layout (``export_scannet_raw``), under ``<out>/``::

    scans/<scene>/<scene>_vh_clean_2.ply        binary little-endian PLY, vertices x y z float, red green blue
                                                alpha uchar, in the raw (unaligned) frame; ``element face 0``
                                                (the scene is a fused point cloud, there is no mesh)
    scans/<scene>/<scene>_vh_clean_2.0.010000.segs.json   segIndices: one segment id per vertex
    scans/<scene>/<scene>.aggregation.json      segGroups: objectId (= instance id - 1), raw label, segments
    scans/<scene>/<scene>.txt                   axisAlignment (aligned = A @ raw), image sizes, intrinsics, counts
    scannetv2-labels.combined.tsv               raw_category -> nyu40id for the raw names used
    meta_data/scannetv2_{train,val}.txt         scene ids per split
    sens/<scene>/color/<i>.jpg                  what ScanNet's SensReader writes: colour at twice the depth
    sens/<scene>/depth/<i>.png                  resolution (as ScanNet's 1296x968 vs 640x480), JPEG quality 95;
    sens/<scene>/pose/<i>.txt                   depth uint16 mm; camera-to-world in the raw frame;
    sens/<scene>/intrinsic/intrinsic_{color,depth}.txt   4x4 intrinsics; <i> = frame index in the scene
    synthetic_export.json                       generator settings, scene ids, alignment matrices

Read it with ``ScanNetRaw(<out>/scans, <out>/scannetv2-labels.combined.tsv, <out>/meta_data)``,
``read_sens_frames(<out>/sens/<scene>, every=1)`` (poses in the raw frame: ``A @ pose`` is the aligned one)
and ``python -m datasets verify --kind scannet --root <out>``. The axis alignment is a rotation about z plus a
translation, different per scene; points and poses are written through its inverse, so the reader's
alignment gives back the synthetic world frame. Classes map to NYU40 by ``SCANNET_CATEGORIES``; lamp is
NYU40 ``lamp`` (35), outside ScanNet-20/18: the reader ignores its points and gives it no box. A segment is
the points of one instance inside one ``_SEGMENT_CELL`` cell, so an object spans several segments.

SUN RGB-D VoteNet export (``export_sunrgbd_votenet``), one sample per synthetic frame, under
``<out>/sunrgbd_trainval/``: ``depth/NNNNNN.mat`` (``instance``: N x 6 float32 x y z r g b, every pixel with
depth, upright depth frame, rgb in [0, 1] taken from the decoded JPEG as the SUNRGBDtoolbox does),
``image/NNNNNN.jpg``, ``calib/NNNNNN.txt`` (Rtilt, then K with MATLAB 1-based pixels, column-major),
``label/NNNNNN.txt`` (``classname xmin ymin w h cx cy cz c0 c1 c2 ox oy``: 1-based 2D box of the visible
pixels, centre, half sizes with c1 along the orientation vector (ox, oy)), ``{train,val}_data_idx.txt``;
``<out>/synthetic_export.json`` maps each number to its scene and frame. The upright frame has its origin
at the camera and z up; ``Rtilt`` is the smallest rotation that levels the camera (the synthetic cameras
pitch down 12-30 degrees, so it is never the identity). Boxes are the amodal 3D boxes of the objects with
at least ``min_box_pixels`` pixels in the frame; classes map by ``SUNRGBD_NAMES`` and those outside the
10 benchmark classes (cabinet, lamp, sink, fridge) are written under their SUN RGB-D name, which the
reader drops. Read it with ``SunRgbdVotenet(<out>/sunrgbd_trainval)`` or ``verify --kind sunrgbd``.

An export is written into ``<out>.partial`` and renamed to ``<out>`` when complete, so an interrupted one
never looks finished; each file is written atomically (``infra.io``).
"""
from __future__ import annotations

import io
import json
import os
import pathlib
import shutil
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from datasets.geometry import aligned_box_of_oriented, backproject
from datasets.sunrgbd.camera import CV_TO_TILTED
from datasets.synthetic.layout import DET_CLASSES, SEG_CLASSES
from datasets.types import Frame, Scene
from infra.io import atomic_write_bytes, atomic_write_json, atomic_write_text

# Synthetic class -> (ScanNet raw category, NYU40 id, NYU40 class). Raw names as ScanNet annotators wrote them.
SCANNET_CATEGORIES: dict[str, tuple[str, int, str]] = {
    "wall": ("wall", 1, "wall"), "floor": ("floor", 2, "floor"), "chair": ("chair", 5, "chair"),
    "table": ("table", 7, "table"), "cabinet": ("cabinet", 3, "cabinet"), "sofa": ("couch", 6, "sofa"),
    "desk": ("desk", 14, "desk"), "bookshelf": ("bookshelf", 10, "bookshelf"), "bed": ("bed", 4, "bed"),
    "lamp": ("lamp", 35, "lamp"), "sink": ("sink", 34, "sink"), "toilet": ("toilet", 33, "toilet"),
    "refrigerator": ("refrigerator", 24, "refrigerator"), "bathtub": ("bathtub", 36, "bathtub"),
}
# Synthetic furniture class -> SUN RGB-D raw class name (the reader keeps bed, table, sofa, chair, toilet,
# desk, dresser, night_stand, bookshelf, bathtub and drops the others).
SUNRGBD_NAMES: dict[str, str] = {
    "chair": "chair", "table": "table", "cabinet": "cabinet", "sofa": "sofa", "desk": "desk",
    "bookshelf": "bookshelf", "bed": "bed", "lamp": "lamp", "sink": "sink", "toilet": "toilet",
    "refrigerator": "fridge", "bathtub": "bathtub",
}
LABEL_MAP_NAME = "scannetv2-labels.combined.tsv"
MANIFEST_NAME = "synthetic_export.json"
JPEG_QUALITY = 95
_SEGMENT_CELL = 0.5  # metres: edge of the cells that cut an instance into over-segments
_TSV_COLUMNS = ("id", "raw_category", "category", "count", "nyu40id", "eigen13id", "nyuClass", "nyu40class",
                "eigen13class", "ModelNet40", "ModelNet10", "ShapeNetCore55", "synsetoffset", "wnsynsetid",
                "wnsynsetkey", "mpcat40", "mpcat40index")
_PARTIAL_MARK = ".synthetic-export-in-progress"


# ---- shared ----

def _export(out_dir: str | os.PathLike, write: Callable[[pathlib.Path], dict]) -> pathlib.Path:
    """Run ``write(folder)`` into ``<out>.partial`` and rename it to ``<out>`` once it returned."""
    out = pathlib.Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"export folder {out} already exists and is not empty; choose a new --out")
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        if not (partial / _PARTIAL_MARK).is_file():
            raise FileExistsError(f"{partial} exists and is not an interrupted export; remove it or choose a new --out")
        shutil.rmtree(partial)  # an interrupted earlier export of ours: start over
    partial.mkdir(parents=True)
    atomic_write_text(partial / _PARTIAL_MARK, "")
    manifest = write(partial)
    atomic_write_json(partial / MANIFEST_NAME, manifest)
    (partial / _PARTIAL_MARK).unlink()
    if out.exists():
        out.rmdir()  # empty (checked above); rename(2) needs the target gone or empty
    os.replace(partial, out)
    return out


def _settings(dataset, layout: str, splits: Sequence[str]) -> dict:
    return {"simulated": True, "layout": layout, "generator": "datasets.synthetic.SyntheticIndoor",
            "seed": dataset.seed, "num_scenes": {s: dataset.num_scenes(s) for s in splits},
            "frames_per_scene": dataset.frames_per_scene, "image_hw": list(dataset.image_hw),
            "voxel_size": dataset.voxel_size, "min_points_per_box": dataset.min_points_per_box,
            "yaw_boxes": dataset.yaw_boxes}


def _check_splits(dataset, splits: Sequence[str]) -> None:
    """One-line error for splits that cannot be exported: unknown ones, and the unlabelled pretrain split,
    whose frames-only scenes have no point cloud or boxes to write."""
    for split in splits:
        dataset.num_scenes(split)  # raises on an unknown split
        if split in getattr(dataset, "unlabelled_splits", ()):
            raise ValueError(f"export: split {split!r} is unlabelled (frames only) and is not exported; "
                             "export train and val")


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _matrix_text(m: np.ndarray) -> str:
    return "".join(" ".join(f"{v:.9f}" for v in row) + "\n" for row in np.asarray(m, dtype=np.float64))


# ---- ScanNet raw ----

def axis_alignment(k: int) -> np.ndarray:
    """The ``axisAlignment`` (4, 4) of the k-th exported scene: a rotation about z and a translation."""
    angle = 0.35 + 0.9 * k  # radians; differs per scene so a mixed-up alignment file shows
    c, s = np.cos(angle), np.sin(angle)
    a = np.eye(4)
    a[:2, :2] = [[c, -s], [s, c]]
    a[:3, 3] = [1.5 + 0.25 * k, -2.0, 0.3]
    return a


def ply_bytes(xyz: np.ndarray, rgb: np.ndarray) -> bytes:
    """A binary little-endian PLY as ScanNet's ``_vh_clean_2.ply``: x y z float, red green blue alpha
    uchar per vertex and a (here empty) face element."""
    header = ["ply", "format binary_little_endian 1.0", "comment simulated by sam3d-bench datasets/synthetic/export.py",
              f"element vertex {len(xyz)}", "property float x", "property float y", "property float z",
              "property uchar red", "property uchar green", "property uchar blue", "property uchar alpha",
              "element face 0", "property list uchar int vertex_indices", "end_header"]
    rec = np.zeros(len(xyz), dtype=[("xyz", "<f4", 3), ("rgb", "u1", 3), ("alpha", "u1")])
    rec["xyz"], rec["rgb"], rec["alpha"] = xyz, rgb, 255
    return ("\n".join(header) + "\n").encode("ascii") + rec.tobytes()


def scannet_segments(points: np.ndarray, instance: np.ndarray) -> np.ndarray:
    """Over-segment id (int64) of every point: one segment per (instance, ``_SEGMENT_CELL`` cell)."""
    cells = np.floor(points / _SEGMENT_CELL).astype(np.int64)
    _, seg = np.unique(np.c_[instance, cells], axis=0, return_inverse=True)
    return seg.reshape(-1).astype(np.int64) * 3 + 7  # sparse, non-zero ids like ScanNet's own


def _aggregation(scene_id: str, seg: np.ndarray, instance: np.ndarray, semantic: np.ndarray) -> dict:
    groups = []
    for inst in np.unique(instance[instance > 0]):
        mask = instance == inst
        name = SEG_CLASSES[int(np.bincount(semantic[mask][semantic[mask] >= 0]).argmax())]
        groups.append({"id": int(inst) - 1, "objectId": int(inst) - 1, "label": SCANNET_CATEGORIES[name][0],
                       "segments": np.unique(seg[mask]).tolist()})
    return {"sceneId": f"scannet.{scene_id}", "appId": "Aggregator.v2", "segGroups": groups,
            "segmentsFile": f"scannet.{scene_id}_vh_clean_2.0.010000.segs.json"}


def _scene_meta(align: np.ndarray, k_depth: np.ndarray, k_color: np.ndarray, hw: tuple[int, int], n: int) -> str:
    lines = ["axisAlignment = " + " ".join(f"{v:.9f}" for v in align.ravel()), f"colorHeight = {2 * hw[0]}",
             f"colorWidth = {2 * hw[1]}", f"depthHeight = {hw[0]}", f"depthWidth = {hw[1]}"]
    for axis, (i, j) in (("fx", (0, 0)), ("fy", (1, 1)), ("mx", (0, 2)), ("my", (1, 2))):
        lines += [f"{axis}_color = {k_color[i, j]:.6f}", f"{axis}_depth = {k_depth[i, j]:.6f}"]
    lines += [f"numColorFrames = {n}", f"numDepthFrames = {n}", "numIMUmeasurements = 0", "sceneType = Simulated"]
    return "\n".join(lines) + "\n"


def color_intrinsics(k_depth: np.ndarray) -> np.ndarray:
    """K of the colour image written at twice the depth resolution (each depth pixel -> a 2x2 block).

    Pixel centres are integers, so depth pixel c covers colour pixels 2c and 2c+1, centred at 2c + 0.5.
    """
    k = np.array(k_depth, dtype=np.float64)
    k[:2, :2] *= 2.0
    k[:2, 2] = 2.0 * k[:2, 2] + 0.5
    return k


def _write_sens(folder: pathlib.Path, frames: Sequence[Frame], align: np.ndarray, every: int) -> None:
    """The SensReader output of a scene's frames, poses moved into the raw frame (``inv(A) @ pose``)."""
    k_depth = frames[0].intrinsics
    for name, k in (("intrinsic_color", color_intrinsics(k_depth)), ("intrinsic_depth", k_depth)):
        k4 = np.eye(4)
        k4[:3, :3] = k
        atomic_write_text(folder / "intrinsic" / f"{name}.txt", _matrix_text(k4))
    unalign = np.linalg.inv(align)
    for i in range(0, len(frames), every):
        f = frames[i]
        atomic_write_bytes(folder / "color" / f"{i}.jpg", _jpeg(f.rgb.repeat(2, axis=0).repeat(2, axis=1)))
        depth_mm = np.round(f.depth.astype(np.float64) * 1000.0)
        if depth_mm.max(initial=0) > np.iinfo(np.uint16).max:
            raise ValueError(f"{f.frame_id}: depth beyond 65.535 m does not fit a uint16 millimetre PNG")
        atomic_write_bytes(folder / "depth" / f"{i}.png", _png(depth_mm.astype(np.uint16)))
        atomic_write_text(folder / "pose" / f"{i}.txt", _matrix_text(unalign @ f.pose))


def _write_scannet_scene(root: pathlib.Path, scene: Scene, align: np.ndarray, every: int) -> None:
    sid = scene.scene_id
    folder = root / "scans" / sid
    p = scene.points.astype(np.float64)
    raw = (p - align[:3, 3]) @ align[:3, :3]  # inv(A) for a rigid A: R^T (p - t), row-vector form
    atomic_write_bytes(folder / f"{sid}_vh_clean_2.ply", ply_bytes(raw, scene.colors))
    seg = scannet_segments(scene.points, scene.instance)
    atomic_write_text(folder / f"{sid}_vh_clean_2.0.010000.segs.json",
                      json.dumps({"params": {"segMinVerts": 20, "sigma": 0.01}, "sceneId": sid,
                                  "segIndices": seg.tolist()}))
    atomic_write_text(folder / f"{sid}.aggregation.json",
                      json.dumps(_aggregation(sid, seg, scene.instance, scene.semantic)))
    k = scene.frames[0].intrinsics
    meta = _scene_meta(align, k, color_intrinsics(k), scene.frames[0].hw, len(scene.frames))
    atomic_write_text(folder / f"{sid}.txt", meta)
    _write_sens(root / "sens" / sid, scene.frames, align, every)


def _label_map_tsv() -> str:
    rows = ["\t".join(_TSV_COLUMNS)]
    for i, (raw, nyu40, nyu_class) in enumerate(SCANNET_CATEGORIES.values(), start=1):
        values = {"id": str(i), "raw_category": raw, "category": raw, "nyu40id": str(nyu40), "nyuClass": nyu_class,
                  "nyu40class": nyu_class}
        rows.append("\t".join(values.get(c, "") for c in _TSV_COLUMNS))
    return "\n".join(rows) + "\n"


def export_scannet_raw(dataset, out_dir: str | os.PathLike, splits: Sequence[str] = ("train", "val"),
                       frame_every: int = 1) -> pathlib.Path:
    """Write the scenes of ``splits`` of a ``SyntheticIndoor`` in ScanNet's raw layout (module docstring).

    ``frame_every`` keeps frames 0, k, 2k, ... in the ``.sens`` folders (named by their frame index, as
    SensReader's frame skip does). Returns ``out_dir``.
    """
    if frame_every < 1:
        raise ValueError(f"frame_every must be >= 1, got {frame_every}")
    _check_splits(dataset, splits)

    def write(root: pathlib.Path) -> dict:
        scenes, k = [], 0
        for split in splits:
            ids = []
            for index in range(dataset.num_scenes(split)):
                scene = dataset.scene(split, index)
                align = axis_alignment(k)
                _write_scannet_scene(root, scene, align, frame_every)
                scenes.append({"split": split, "index": index, "scene_id": scene.scene_id,
                               "axis_alignment": align.tolist()})
                ids.append(scene.scene_id)
                k += 1
            atomic_write_text(root / "meta_data" / f"scannetv2_{split}.txt", "".join(f"{s}\n" for s in ids))
        for split in ("train", "val"):  # the readers always load both lists
            if split not in splits:
                atomic_write_text(root / "meta_data" / f"scannetv2_{split}.txt", "")
        atomic_write_text(root / LABEL_MAP_NAME, _label_map_tsv())
        return {**_settings(dataset, "scannet-raw", splits), "frame_every": frame_every, "scenes": scenes}

    return _export(out_dir, write)


# ---- SUN RGB-D VoteNet export ----

def level_rotation(pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Rtilt, R_yaw) of an OpenCV camera-to-world pose in a z-up world.

    ``Rtilt`` is the smallest rotation taking the world's up vector, seen in the tilted depth frame
    (x right, y forward, z up-ish), to +z; ``R_yaw`` (a rotation about z) is what is left:
    world = ``R_yaw @ upright + eye``, upright = ``Rtilt @ tilted``.
    """
    m = pose[:3, :3] @ CV_TO_TILTED.T  # tilted -> world
    g = m.T @ np.array([0.0, 0.0, 1.0])
    v, c = np.cross(g, [0.0, 0.0, 1.0]), float(g[2])
    vx = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    rtilt = np.eye(3) + vx + vx @ vx / (1.0 + c)  # Rodrigues for unit vectors; c > -1 (camera not upside down)
    return rtilt, m @ rtilt.T


def upright_boxes(boxes: np.ndarray, pose: np.ndarray, r_yaw: np.ndarray) -> np.ndarray:
    """World boxes (B, 7) in the upright frame of a camera (origin at the camera, rotated by ``R_yaw``)."""
    out = np.array(boxes, dtype=np.float64).reshape(-1, 7)
    out[:, :3] = (out[:, :3] - pose[:3, 3]) @ r_yaw
    yaw = out[:, 6] - np.arctan2(r_yaw[1, 0], r_yaw[0, 0])
    out[:, 6] = np.arctan2(np.sin(yaw), np.cos(yaw))
    return out


def _label_lines(frame: Frame, objects, pose: np.ndarray, r_yaw: np.ndarray, yaw_boxes: bool,
                 min_pixels: int) -> str:
    """votenet label lines of the objects with at least ``min_pixels`` pixels in ``frame``."""
    counts = np.bincount(frame.instance.ravel(), minlength=max([o.instance for o in objects], default=0) + 1)
    lines = []
    for o in objects:
        if counts[o.instance] < min_pixels:
            continue
        world = o.box[None] if yaw_boxes else aligned_box_of_oriented(o.box[None])
        cx, cy, cz, dx, dy, dz, yaw = upright_boxes(world, pose, r_yaw)[0]
        rows, cols = np.nonzero(frame.instance == o.instance)
        x0, y0 = cols.min() + 1, rows.min() + 1  # MATLAB 1-based pixels
        lines.append(f"{SUNRGBD_NAMES[DET_CLASSES[o.det_class]]} {x0} {y0} {cols.max() - cols.min()} "
                     f"{rows.max() - rows.min()} {cx:.6f} {cy:.6f} {cz:.6f} {dy / 2:.6f} {dx / 2:.6f} {dz / 2:.6f} "
                     f"{np.cos(yaw):.6f} {np.sin(yaw):.6f}")
    return "".join(line + "\n" for line in lines)


def _write_sunrgbd_sample(root: pathlib.Path, number: int, frame: Frame, objects, yaw_boxes: bool,
                          min_pixels: int) -> None:
    name = f"{number:06d}"
    jpeg = _jpeg(frame.rgb)
    atomic_write_bytes(root / "image" / f"{name}.jpg", jpeg)
    decoded = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    # Points come from millimetre depth, as from a SUN RGB-D depth PNG, at each pixel's centre.
    depth = np.round(frame.depth.astype(np.float64) * 1000.0) / 1000.0
    cam, pix = backproject(depth, frame.intrinsics, np.eye(4))
    rtilt, r_yaw = level_rotation(frame.pose)
    upright = cam.astype(np.float64) @ (rtilt @ CV_TO_TILTED).T
    rgb = decoded[pix[:, 0], pix[:, 1]].astype(np.float64) / 255.0
    buf = io.BytesIO()
    # Compressed MATLAB 5 (what MATLAB's default v7 ``save`` writes, as the real export's files are).
    import scipy.io  # here: only the export command writes .mat files

    scipy.io.savemat(buf, {"instance": np.c_[upright, rgb].astype(np.float32)}, do_compression=True)
    atomic_write_bytes(root / "depth" / f"{name}.mat", buf.getvalue())
    k_matlab = np.array(frame.intrinsics, dtype=np.float64)
    k_matlab[:2, 2] += 1.0  # SUN RGB-D's K puts the centre of pixel (0, 0) at (1, 1)
    calib = [" ".join(f"{v:.9f}" for v in m.ravel(order="F")) for m in (rtilt, k_matlab)]
    atomic_write_text(root / "calib" / f"{name}.txt", "\n".join(calib) + "\n")
    atomic_write_text(root / "label" / f"{name}.txt",
                      _label_lines(frame, objects, frame.pose, r_yaw, yaw_boxes, min_pixels))


def export_sunrgbd_votenet(dataset, out_dir: str | os.PathLike, splits: Sequence[str] = ("train", "val"),
                           frame_every: int = 1, min_box_pixels: int | None = None) -> pathlib.Path:
    """Write frames 0, k, 2k, ... (``frame_every``) of every scene of ``splits`` of a ``SyntheticIndoor`` as
    SUN RGB-D VoteNet samples (module docstring), numbered from 1 in split order. An object gets a box in
    a sample when it covers at least ``min_box_pixels`` pixels (default: the dataset's
    ``min_points_per_box``). Returns ``out_dir``; the samples are in ``out_dir/sunrgbd_trainval``.
    """
    if frame_every < 1:
        raise ValueError(f"frame_every must be >= 1, got {frame_every}")
    min_pixels = dataset.min_points_per_box if min_box_pixels is None else int(min_box_pixels)
    _check_splits(dataset, splits)

    def write(out: pathlib.Path) -> dict:
        root, samples, number = out / "sunrgbd_trainval", [], 0
        numbers: dict[str, list[int]] = {"train": [], "val": []}
        for split in splits:
            for index in range(dataset.num_scenes(split)):
                scene, objects = dataset.scene(split, index), dataset.layout(split, index).objects
                for i in range(0, len(scene.frames), frame_every):
                    number += 1
                    frame = scene.frames[i]
                    _write_sunrgbd_sample(root, number, frame, objects, dataset.yaw_boxes, min_pixels)
                    rtilt, r_yaw = level_rotation(frame.pose)
                    samples.append({"number": number, "split": split, "index": index, "scene_id": scene.scene_id,
                                    "frame": i, "camera_pose": frame.pose.tolist(), "rtilt": rtilt.tolist(),
                                    "r_yaw": r_yaw.tolist()})
                    numbers[split].append(number)
        for split in ("train", "val"):  # SunRgbdVotenet reads both files
            atomic_write_text(root / f"{split}_data_idx.txt", "".join(f"{n}\n" for n in numbers[split]))
        return {**_settings(dataset, "sunrgbd-votenet", splits), "frame_every": frame_every,
                "min_box_pixels": min_pixels, "samples": samples}

    return _export(out_dir, write)

"""ScanNet v2 point-cloud exports -> ``Scene``: the votenet/mmdet3d ``.npy`` export and mmdet3d ``.bin``.

Both exports hold the ``_vh_clean_2`` mesh vertices with NYU40 semantic ids and instance ids per point
(MANIFEST.md sections 4-6), read into the axis-aligned frame (z up, metres): VoteNet's and mmdet3d's 2020
exports store them aligned; mmdet3d's current export stores them in the scan's own frame with
``<scene>_axis_align_matrix.npy`` beside them, which is applied here. Boxes are axis-aligned (yaw 0) and
have full extents; the ``_bbox.npy`` (``_aligned_bbox.npy``) of the export is the exact min/max of each
detection-class instance, which is also how ``boxes_from_instances`` derives them.
"""
from __future__ import annotations

import pathlib

import numpy as np

from datasets.scannet.labels import NUM_NYU40, nyu40_to_det, nyu40_to_seg
from datasets.scene_checks import box_problems
from datasets.types import Scene

EXPORT_LAYOUT = ("<scene>_vert[_all].npy (N,6) xyz+rgb, _sem_label[_all].npy (N,) NYU40, _ins_label[_all].npy (N,), "
                 "optional _axis_align_matrix.npy (4,4)")
NYU40 = "NYU40 class ids (0 = unannotated), as every ScanNet export writes them"
INSTANCE = "instance ids (0 = none)"
BIN_LAYOUT = "points/<scene>.bin float32 (N,6), semantic_mask/<scene>.bin int64 (N,), instance_mask/<scene>.bin int64"


def _require(path: pathlib.Path, layout: str) -> pathlib.Path:
    if not path.is_file():
        raise FileNotFoundError(f"missing file {path} (expected layout: {layout})")
    return path


def load_npy(path: pathlib.Path, layout: str, ndim: int, cols: int | None = None, rows: int | None = None,
             integral: bool = False) -> np.ndarray:
    """``np.load`` of a numeric array with its shape (and integer values when ``integral``) checked;
    one-line errors naming the file."""
    _require(path, layout)
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # numpy raises ValueError/EOFError/OSError depending on how it is damaged
        raise ValueError(f"unreadable .npy {path} ({type(e).__name__}: {e}); expected layout: {layout}") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise ValueError(f"{path}: expected a numeric array, got dtype {getattr(arr, 'dtype', type(arr))}; layout: {layout}")
    if arr.ndim != ndim or (cols is not None and arr.shape[1] != cols) or (rows is not None and arr.shape[0] != rows):
        want = f"({rows if rows is not None else 'N'}" + (f", {cols})" if ndim == 2 else ",)")
        raise ValueError(f"{path}: shape {arr.shape}, expected {want}; layout: {layout}")
    if integral and arr.dtype.kind == "f" and not (np.isfinite(arr).all() and np.array_equal(arr, np.round(arr))):
        raise ValueError(f"{path}: expected integer labels, got non-integral {arr.dtype} values; layout: {layout}")
    return arr


def check_range(values: np.ndarray, path: pathlib.Path, low: int, high: int | None, what: str) -> np.ndarray:
    """``values`` if all lie in ``low..high`` (``high`` None: no upper bound); else a one-line ValueError naming
    the file and what the values should be."""
    values = np.asarray(values)
    if values.size and (values.min() < low or (high is not None and values.max() > high)):
        outside = values[(values < low) | (values > high if high is not None else False)]
        span = f"{outside.min():g}" if outside.min() == outside.max() else f"{outside.min():g}..{outside.max():g}"
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{path}: {outside.size} values {span} outside {bound}; expected {what}")
    return values


def load_bin(path: pathlib.Path, dtype: np.dtype, cols: int, layout: str, rows: int | None = None) -> np.ndarray:
    """Headerless little-endian array file reshaped to (-1, cols) (or (-1,) when cols == 1), checked."""
    _require(path, layout)
    dtype = np.dtype(dtype).newbyteorder("<")
    size = path.stat().st_size
    if size % (dtype.itemsize * cols):
        raise ValueError(f"{path}: {size} bytes is not a whole number of {cols} x {dtype.name} rows; layout: {layout}")
    arr = np.fromfile(path, dtype=dtype)
    arr = arr.reshape(-1, cols) if cols > 1 else arr
    if rows is not None and len(arr) != rows:
        raise ValueError(f"{path}: {len(arr)} rows, expected {rows} (one per point); layout: {layout}")
    return arr


def instance_nyu40(nyu40: np.ndarray, instance: np.ndarray) -> dict[int, int]:
    """Majority NYU40 id of each instance id > 0 (exports give all points of an instance one label)."""
    out = {}
    for inst in np.unique(instance[instance > 0]):
        ids, counts = np.unique(nyu40[instance == inst], return_counts=True)
        out[int(inst)] = int(ids[np.argmax(counts)])
    return out


def boxes_from_instances(xyz: np.ndarray, nyu40: np.ndarray, instance: np.ndarray) -> tuple[np.ndarray, ...]:
    """Axis-aligned min/max boxes of the instances whose NYU40 id is a detection class.

    Points with a non-finite coordinate are left out (so a box is the same whether or not the reader
    later drops them); an instance with no finite point has no box. Returns boxes (B, 7) float32 with
    yaw 0, detection labels (B,) int32 and instance ids (B,) int32, in increasing instance id order.
    """
    finite = np.isfinite(xyz).all(axis=1)
    boxes, labels, ids = [], [], []
    for inst, nyu in instance_nyu40(nyu40, instance).items():
        det = int(nyu40_to_det(np.array([nyu]))[0])
        member = (instance == inst) & finite
        if det < 0 or not member.any():
            continue
        p = xyz[member].astype(np.float64)
        lo, hi = p.min(axis=0), p.max(axis=0)
        boxes.append(np.r_[(lo + hi) / 2, hi - lo, 0.0])
        labels.append(det)
        ids.append(inst)
    return (np.array(boxes, dtype=np.float32).reshape(-1, 7), np.array(labels, dtype=np.int32),
            np.array(ids, dtype=np.int32))


def boxes_from_bbox_file(bbox: np.ndarray, bbox_instance: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """Boxes from a votenet ``_bbox.npy`` (B, 7) = [cx, cy, cz, dx, dy, dz, nyu40 id], full extents.

    Rows whose NYU40 id is not a detection class are dropped (votenet writes none).
    """
    labels = nyu40_to_det(np.round(bbox[:, 6]))
    keep = labels >= 0
    boxes = np.zeros((int(keep.sum()), 7), dtype=np.float32)
    boxes[:, :6] = bbox[keep, :6]
    inst = np.zeros(len(boxes), dtype=np.int32) if bbox_instance is None else bbox_instance[keep].astype(np.int32)
    return boxes, labels[keep], inst


def scene_from_arrays(scene_id: str, xyzrgb: np.ndarray, nyu40: np.ndarray, instance: np.ndarray,
                      boxes: tuple[np.ndarray, ...] | None = None) -> Scene:
    """Assemble a ``Scene`` from (N, 6) xyz+rgb (0-255), NYU40 ids and instance ids (0 = none).

    ``boxes`` = (boxes, labels, instance ids); derived from the instances when None.
    """
    xyz = np.ascontiguousarray(xyzrgb[:, :3], dtype=np.float32)
    nyu40 = nyu40.astype(np.int64)
    instance = instance.astype(np.int32)
    if boxes is None:
        boxes = boxes_from_instances(xyz, nyu40, instance)
    return Scene(
        scene_id=scene_id,
        points=xyz,
        colors=np.clip(np.round(xyzrgb[:, 3:6]), 0, 255).astype(np.uint8),
        semantic=nyu40_to_seg(nyu40),
        instance=instance,
        boxes=boxes[0],
        box_labels=boxes[1],
        box_instance=boxes[2],
    )


def export_path(folder: pathlib.Path, scene_id: str, key: str) -> pathlib.Path:
    """The ``<scene>_<key>[_all].npy`` file of an export folder (``_all`` preferred)."""
    # The "_all" files hold every mesh vertex; the plain ones are votenet's 50k subsample. Prefer "_all".
    full = folder / f"{scene_id}_{key}_all.npy"
    return full if full.is_file() else folder / f"{scene_id}_{key}.npy"


def export_scene_present(folder: str | pathlib.Path, scene_id: str) -> bool:
    """Whether the points file of ``scene_id`` exists in a votenet/mmdet3d export folder."""
    return export_path(pathlib.Path(folder), scene_id, "vert").is_file()


def read_export_scene(folder: str | pathlib.Path, scene_id: str, use_bbox_file: bool = True) -> Scene:
    """Read one scene of a votenet/mmdet3d export folder into the axis-aligned frame.

    Points are moved by ``<scene>_axis_align_matrix.npy`` when present (mmdet3d's current export).
    Uses ``<scene>_bbox.npy`` or ``_aligned_bbox.npy`` (and ``_bbox_idx.npy`` for box instance ids) when
    present and ``use_bbox_file``; otherwise boxes are the min/max of each detection-class instance.
    """
    folder = pathlib.Path(folder)
    vert = load_npy(export_path(folder, scene_id, "vert"), EXPORT_LAYOUT, 2, cols=6)
    n = len(vert)
    sem_path, ins_path = export_path(folder, scene_id, "sem_label"), export_path(folder, scene_id, "ins_label")
    sem = check_range(load_npy(sem_path, EXPORT_LAYOUT, 1, rows=n, integral=True), sem_path, 0, NUM_NYU40, NYU40)
    ins = check_range(load_npy(ins_path, EXPORT_LAYOUT, 1, rows=n, integral=True), ins_path, 0, None, INSTANCE)
    align_path = folder / f"{scene_id}_axis_align_matrix.npy"
    if align_path.is_file():
        align = load_npy(align_path, EXPORT_LAYOUT, 2, rows=4, cols=4)
        if not np.isfinite(align).all():
            raise ValueError(f"{align_path}: expected a finite 4x4 axis alignment matrix")
        vert = np.c_[vert[:, :3].astype(np.float64) @ align[:3, :3].T + align[:3, 3], vert[:, 3:6]]
    boxes = None
    bbox_path = next((p for p in (folder / f"{scene_id}_bbox.npy", folder / f"{scene_id}_aligned_bbox.npy")
                      if p.is_file()), None)
    if use_bbox_file and bbox_path is not None:
        layout = "<scene>_bbox.npy or _aligned_bbox.npy (B,7) [cx,cy,cz,dx,dy,dz,nyu40 id], optional _bbox_idx.npy (B,)"
        bbox = load_npy(bbox_path, layout, 2, cols=7)
        problems = box_problems(np.c_[bbox[:, :6], np.zeros(len(bbox))])
        if problems:
            raise ValueError(f"{bbox_path}: {problems[0]}")
        check_range(np.round(bbox[:, 6]), bbox_path, 0, NUM_NYU40, f"NYU40 class ids in column 6; layout: {layout}")
        idx_path = folder / f"{scene_id}_bbox_idx.npy"
        idx = load_npy(idx_path, layout, 1, rows=len(bbox)) if idx_path.is_file() else None
        boxes = boxes_from_bbox_file(bbox, idx)
    return scene_from_arrays(scene_id, vert, sem, ins, boxes)


def bin_scene_present(root: str | pathlib.Path, scene_id: str) -> bool:
    """Whether ``points/<scene>.bin`` exists under an mmdet3d v1.x ScanNet root."""
    return (pathlib.Path(root) / "points" / f"{scene_id}.bin").is_file()


def read_bin_scene(root: str | pathlib.Path, scene_id: str) -> Scene:
    """Read one scene of the mmdet3d v1.x layout (``points/``, ``semantic_mask/``, ``instance_mask/``).

    Points are float32 (N, 6) in the axis-aligned frame; masks are int64 NYU40 ids and instance ids
    (mmdet3d maps the ids at load time, so the files keep NYU40). Boxes come from the instances.
    """
    root = pathlib.Path(root)
    points = load_bin(root / "points" / f"{scene_id}.bin", np.float32, 6, BIN_LAYOUT)
    sem_path, ins_path = root / "semantic_mask" / f"{scene_id}.bin", root / "instance_mask" / f"{scene_id}.bin"
    sem = check_range(load_bin(sem_path, np.int64, 1, BIN_LAYOUT, rows=len(points)), sem_path, 0, NUM_NYU40, NYU40)
    ins = check_range(load_bin(ins_path, np.int64, 1, BIN_LAYOUT, rows=len(points)), ins_path, 0, None, INSTANCE)
    return scene_from_arrays(scene_id, points, sem, ins)

"""S3DIS (Stanford 2D-3D-S, "Stanford3dDataset_v1.2_Aligned_Version") room readers.

Two on-disk layouts are read into ``Scene`` (conventions of ``datasets/types.py``):

- raw: ``Area_N/<room>/Annotations/<class>_<i>.txt``, one file per object, each line ``x y z r g b``;
  ``read_raw_room`` and ``S3DISRaw``.
- mmdet3d export: ``points/<room>.bin`` (float32 N x 6, rgb 0-255), ``semantic_mask/<room>.bin`` and
  ``instance_mask/<room>.bin`` (int64 N); ``read_bin_room`` and ``S3DISBin``. Room names are
  ``Area_N_<room>`` (e.g. ``Area_1_office_2``).

The 13 segmentation classes are those of the dataset; detection uses mmdet3d's five furniture classes
(following GSDN). Boxes are axis-aligned (S3DIS rooms are aligned to the walls), computed as the
min/max extent of each detection-class instance's points, yaw 0, as mmdet3d does. Splits follow the
usual protocol: one area (Area 5 by default) is val, the other five are train.
"""
from __future__ import annotations

import pathlib
import re
import warnings

import gin
import numpy as np

from datasets.scene_list import SceneListDataset, non_finite_policy
from datasets.types import DatasetInfo, Scene
from infra.errors import DataError

SEG_CLASSES = ("ceiling", "floor", "wall", "beam", "column", "window", "door", "table", "chair", "sofa",
               "bookcase", "board", "clutter")
DET_CLASSES = ("table", "chair", "sofa", "bookcase", "board")

S3DIS_INFO = DatasetInfo(
    name="s3dis",
    seg_classes=SEG_CLASSES,
    det_classes=DET_CLASSES,
    seg_to_det=tuple(DET_CLASSES.index(c) if c in DET_CLASSES else -1 for c in SEG_CLASSES),
    has_yaw=False,
)

# A few raw rooms hold a ``stairs_<i>.txt`` object, which is not one of the 13 classes; the common
# practice (mmdet3d's and PointNet's ``indoor3d_util``) counts it as clutter.
RAW_CLASS_ALIASES = {"stairs": "clutter"}

# mmdet3d .bin files: (dtype, values per point); headerless little-endian records.
BIN_FILES = {"points": (np.dtype("<f4"), 6), "semantic_mask": (np.dtype("<i8"), 1),
             "instance_mask": (np.dtype("<i8"), 1)}

_AREA = re.compile(r"^Area_(\d+)(?:_|$)")


class S3DISError(DataError):
    """A problem with S3DIS files; the message is one line naming the file."""


def area_of(room: str) -> int:
    """The area number of a room name such as ``Area_5_office_1``."""
    match = _AREA.match(room)
    if match is None:
        raise S3DISError(f"room name {room!r} does not start with Area_N")
    return int(match.group(1))


def boxes_from_instances(points: np.ndarray, semantic: np.ndarray,
                         instance: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Axis-aligned boxes of the instances (id > 0) whose class is a detection class.

    An instance's class is the most common semantic label among its points (in S3DIS every point of
    an object carries the object's class). Points with a non-finite coordinate are left out, so a box is
    the same whether or not the reader later drops them. Returns boxes (B, 7) float32
    ``[cx, cy, cz, dx, dy, dz, 0]``, labels (B,) int32 detection index and the instance id (B,) int32 of
    each box, in instance id order.
    """
    seg_to_det = np.asarray(S3DIS_INFO.seg_to_det)
    finite = np.isfinite(points).all(axis=1)
    boxes, labels, ids = [], [], []
    for inst in np.unique(instance[instance > 0]):
        member = (instance == inst) & finite
        classes = semantic[member]
        seg = int(np.bincount(classes[classes >= 0], minlength=1).argmax()) if (classes >= 0).any() else -1
        if seg < 0 or seg >= len(seg_to_det) or seg_to_det[seg] < 0:
            continue
        xyz = points[member].astype(np.float64)
        lo, hi = xyz.min(axis=0), xyz.max(axis=0)
        boxes.append(np.r_[(lo + hi) / 2, hi - lo, 0.0])
        labels.append(seg_to_det[seg])
        ids.append(inst)
    return (np.array(boxes, dtype=np.float32).reshape(-1, 7), np.array(labels, dtype=np.int32),
            np.array(ids, dtype=np.int32))


def scene_from_arrays(scene_id: str, xyzrgb: np.ndarray, semantic: np.ndarray, instance: np.ndarray) -> Scene:
    """A ``Scene`` from N x 6 ``x y z r g b`` (rgb 0-255), semantic 0..12 and instance ids (0 = none)."""
    boxes, labels, box_instance = boxes_from_instances(xyzrgb[:, :3], semantic, instance)
    return Scene(
        scene_id=scene_id,
        points=np.ascontiguousarray(xyzrgb[:, :3], dtype=np.float32),
        colors=np.clip(np.rint(xyzrgb[:, 3:6]), 0, 255).astype(np.uint8),
        semantic=semantic.astype(np.int32),
        instance=instance.astype(np.int32),
        boxes=boxes,
        box_labels=labels,
        box_instance=box_instance,
    )


# ---- raw layout: Area_N/<room>/Annotations/<class>_<i>.txt ----

def _first_bad_line(path: pathlib.Path) -> str:
    """Locate the line that made the fast parser fail (only run once a file is known to be bad)."""
    with open(path, "r", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            try:  # non-finite x y z are the readers' non_finite policy's to handle, not a malformed line
                ok = len(fields) == 6 and all(np.isfinite([float(v) for v in fields])[3:])
            except ValueError:
                ok = False
            if not ok:
                return f"{path}: line {number}: expected 6 numbers 'x y z r g b', got {line.strip()[:60]!r}"
    return f"{path}: unreadable"


def read_annotation(path: pathlib.Path) -> np.ndarray:
    """The (n, 6) float64 ``x y z r g b`` rows of one annotation file; one-line S3DISError if malformed.

    Coordinates may be NaN/inf (the dataset's ``non_finite`` policy handles them); colours may not.
    """
    try:
        with warnings.catch_warnings():  # an empty file is reported below, not as a numpy warning
            warnings.simplefilter("ignore", UserWarning)
            rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError:
        raise S3DISError(_first_bad_line(path)) from None
    except OSError as exc:
        raise S3DISError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if rows.shape[0] == 0:
        raise S3DISError(f"{path}: empty annotation file")
    if rows.shape[1] != 6 or not np.isfinite(rows[:, 3:]).all():
        raise S3DISError(_first_bad_line(path))
    bad = np.nonzero(((rows[:, 3:] < 0) | (rows[:, 3:] > 255)).any(axis=1))[0]
    if len(bad):
        raise S3DISError(f"{path}: line {bad[0] + 1}: colour outside 0..255")
    return rows


def raw_class_of(path: pathlib.Path) -> int:
    """Segmentation class index from an annotation file name ``<class>_<i>.txt``."""
    name = path.stem.split("_")[0]
    name = RAW_CLASS_ALIASES.get(name, name)
    if name not in SEG_CLASSES:
        raise S3DISError(f"{path}: unknown class {name!r} (known: {', '.join(SEG_CLASSES)}, stairs)")
    return SEG_CLASSES.index(name)


def read_raw_room(room_folder: pathlib.Path | str, scene_id: str | None = None) -> Scene:
    """Read one raw room ``Area_N/<room>/`` (its ``Annotations/*.txt``) into a ``Scene``.

    Each annotation file is one instance; instance ids are 1, 2, ... in sorted file-name order (so they
    do not depend on the file system's listing order). Coordinates are kept as stored (metres; mmdet3d's
    export additionally shifts each room so its minimum corner is the origin). ``scene_id`` defaults to
    ``Area_N_<room>``, the mmdet3d name of the room.
    """
    room = pathlib.Path(room_folder)
    folder = room / "Annotations"
    if not folder.is_dir():
        raise S3DISError(f"{folder}: missing annotation folder")
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise S3DISError(f"{folder}: no <class>_<i>.txt annotation files")
    rows, semantic, instance = [], [], []
    for inst, path in enumerate(files, start=1):
        seg = raw_class_of(path)
        data = read_annotation(path)
        rows.append(data)
        semantic.append(np.full(len(data), seg, dtype=np.int32))
        instance.append(np.full(len(data), inst, dtype=np.int32))
    sid = scene_id or f"{room.parent.name}_{room.name}"
    return scene_from_arrays(sid, np.concatenate(rows), np.concatenate(semantic), np.concatenate(instance))


# ---- mmdet3d layout: points/ semantic_mask/ instance_mask/ <room>.bin ----

def read_records(path: pathlib.Path, dtype: np.dtype, width: int) -> np.ndarray:
    """A headerless binary file as (n, width) (or (n,) for width 1); one-line S3DISError on problems."""
    if not path.is_file():
        raise S3DISError(f"{path}: missing file")
    record = np.dtype(dtype).itemsize * width
    size = path.stat().st_size
    if size % record:
        raise S3DISError(f"{path}: truncated: {size} bytes is not a multiple of the {record}-byte record "
                         f"({width} x {np.dtype(dtype).name})")
    try:
        data = np.fromfile(path, dtype=dtype)
    except OSError as exc:
        raise S3DISError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return data.reshape(-1, width) if width > 1 else data


def bin_room_problems(root: pathlib.Path | str, room: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """Load a room's three .bin files and list every problem found instead of stopping at the first.

    Checks: each file present and a whole number of records, mask lengths equal the point count, at
    least one point, finite colours in 0..255, semantic ids in 0..12, instance ids >= 0. Non-finite
    coordinates are left to the readers' ``non_finite`` policy (and ``verify``'s scene checks).
    Returns the arrays that could be read and the problems (one line each).
    """
    root = pathlib.Path(root)
    arrays, problems = {}, []
    for kind, (dtype, width) in BIN_FILES.items():
        try:
            arrays[kind] = read_records(root / kind / f"{room}.bin", dtype, width)
        except S3DISError as exc:
            problems.append(str(exc))
    points = arrays.get("points")
    if points is not None:
        if len(points) == 0:
            problems.append(f"{root / 'points' / room}.bin: empty (0 points)")
        elif not np.isfinite(points[:, 3:]).all():
            problems.append(f"{root / 'points' / room}.bin: non-finite colours")
        elif points[:, 3:].min() < 0 or points[:, 3:].max() > 255:
            problems.append(f"{root / 'points' / room}.bin: colours outside 0..255")
        for kind in ("semantic_mask", "instance_mask"):
            if kind in arrays and len(arrays[kind]) != len(points):
                problems.append(f"{root / kind / room}.bin: {len(arrays[kind])} labels for {len(points)} points")
    sem = arrays.get("semantic_mask")
    if sem is not None and len(sem) and (sem.min() < 0 or sem.max() >= len(SEG_CLASSES)):
        problems.append(f"{root / 'semantic_mask' / room}.bin: ids {sem.min()}..{sem.max()} outside "
                        f"0..{len(SEG_CLASSES) - 1}")
    inst = arrays.get("instance_mask")
    if inst is not None and len(inst) and inst.min() < 0:
        problems.append(f"{root / 'instance_mask' / room}.bin: negative instance ids")
    return arrays, problems


def read_bin_room(root: pathlib.Path | str, room: str) -> Scene:
    """Read room ``room`` (e.g. ``Area_1_office_2``) of an mmdet3d S3DIS export under ``root``.

    Raises a one-line S3DISError naming the file on the first problem ``bin_room_problems`` finds.
    """
    arrays, problems = bin_room_problems(root, room)
    if problems:
        raise S3DISError(problems[0] + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""))
    return scene_from_arrays(room, arrays["points"], arrays["semantic_mask"], arrays["instance_mask"])


# ---- datasets ----

class _S3DISRooms(SceneListDataset):
    """Rooms of Area ``val_area`` are val, the others train; subclasses list rooms and read one."""

    info: DatasetInfo = S3DIS_INFO

    def __init__(self, root: pathlib.Path | str, val_area: int = 5, non_finite: str = "drop"):
        self.root = pathlib.Path(root)
        self.val_area = int(val_area)
        self.non_finite = non_finite_policy(non_finite)
        if not self.root.is_dir():
            raise S3DISError(f"{self.root}: S3DIS root folder not found")
        rooms = sorted(self._list_rooms())
        self.scene_ids = {"train": [r for r in rooms if area_of(r) != self.val_area],
                          "val": [r for r in rooms if area_of(r) == self.val_area]}

    def _list_rooms(self) -> list[str]:
        raise NotImplementedError


@gin.register
class S3DISBin(_S3DISRooms):
    """S3DIS as exported by mmdet3d (``points/``, ``semantic_mask/``, ``instance_mask/`` .bin files).

    Args:
        root: the folder holding ``points/`` (e.g. mmdet3d's ``data/s3dis``).
        val_area: the area whose rooms form the val split; the other areas are train.
        non_finite: points with a NaN/inf coordinate: "drop" them (default; one warning line per scene)
            or "error" (refuse the scene with a one-line DataError).
    """

    def _list_rooms(self) -> list[str]:
        folder = self.root / "points"
        if not folder.is_dir():
            raise S3DISError(f"{folder}: missing points folder (expected mmdet3d's points/<room>.bin)")
        return [p.stem for p in folder.glob("*.bin")]

    def read_scene(self, room: str) -> Scene:
        return read_bin_room(self.root, room)

    def points_source(self, room: str) -> str:
        return str(self.root / "points" / f"{room}.bin")


@gin.register
class S3DISRaw(_S3DISRooms):
    """S3DIS in the Stanford layout ``Area_N/<room>/Annotations/*.txt``.

    Args:
        root: the folder holding ``Area_1`` ... ``Area_6`` (``Stanford3dDataset_v1.2_Aligned_Version``).
        val_area: the area whose rooms form the val split; the other areas are train.
        non_finite: as for ``S3DISBin``.
    """

    def _list_rooms(self) -> list[str]:
        areas = [a for a in self.root.glob("Area_*") if a.is_dir() and _AREA.match(a.name)]
        if not areas:
            raise S3DISError(f"{self.root}: no Area_N folders")
        return [f"{a.name}_{room.name}" for a in areas for room in a.iterdir() if room.is_dir()]

    def room_folder(self, room: str) -> pathlib.Path:
        """The folder of room ``Area_N_<name>``."""
        area = f"Area_{area_of(room)}"
        return self.root / area / room[len(area) + 1:]

    def read_scene(self, room: str) -> Scene:
        return read_raw_room(self.room_folder(room), scene_id=room)

    def points_source(self, room: str) -> str:
        return str(self.room_folder(room) / "Annotations" / "*.txt")

"""Dataset root checks behind ``python -m datasets verify``.

A verifier takes a dataset root and returns a report dict (JSON-able)::

    {"kind": "s3dis", "root": "...", "layout": "bin", "found": null, "ok": false,
     "scenes": [{"split": "train", "scene_id": "Area_1_office_2", "points": 100, "boxes": 5,
                 "classes": ["ceiling", ...], "box_classes": {"table": 2, ...}, "problems": []}, ...],
     "splits": {"train": {"scenes": 1, "points": 100, "boxes": 5, "problems": 0}, ...},
     "problems": [{"split": "train", "scene_id": "Area_1_office_2", "message": "..."}, ...]}

Every scene is checked inside its own ``try``: a problem is recorded and the next scene is checked, so
one bad file never hides the others; a root where no scene is found is a problem too. ``found`` says
which layout and folder a verifier read where it looks under the root (ScanNet:
``datasets/scannet/roots.py``). Readers of other datasets add a verifier to ``VERIFIERS``; a verifier is
``fn(root, *, layout="auto", limit=None) -> report`` and usually just lists its scenes and calls
``check_scene`` on each (or ``verify_dataset`` for anything with the dataset protocol).
"""
from __future__ import annotations

import pathlib
from typing import Callable

import numpy as np

from datasets.scene_checks import field_problems
from datasets.types import DatasetInfo, Scene


def one_line(exc: BaseException) -> str:
    """An exception as one line; the type name is kept for errors that are not the readers' own."""
    text = " ".join(str(exc).split()) or "(no message)"
    return text if isinstance(exc, (OSError, ValueError)) else f"{type(exc).__name__}: {text}"


def new_report(kind: str, root: pathlib.Path | str | None, layout: str) -> dict:
    """An empty report; fill ``scenes`` (and root-level ``problems``), then call ``finish_report``."""
    return {"kind": kind, "root": None if root is None else str(root), "layout": layout, "found": None, "ok": True,
            "scenes": [], "splits": {}, "problems": []}


def add_problem(report: dict, message: str, split: str | None = None, scene_id: str | None = None) -> None:
    """Record a problem that belongs to no scene entry (missing root, unknown layout, ...)."""
    report["problems"].append({"split": split, "scene_id": scene_id, "message": message})


def scene_problems(scene: Scene, info: DatasetInfo) -> list[str]:
    """What is wrong with a loaded scene (``datasets.scene_checks``: every field's dtype, shape and range)."""
    return [message for _, message in field_problems(scene, info)]


def scene_entry(split: str, scene_id: str, scene: Scene | None, info: DatasetInfo) -> dict:
    """A report row: what was found in one scene (``scene=None`` when it could not be loaded)."""
    entry = {"split": split, "scene_id": scene_id, "points": None, "boxes": None, "frames": None, "classes": [],
             "box_classes": {}, "problems": []}
    if scene is None:
        return entry
    entry["points"], entry["boxes"], entry["frames"] = scene.num_points, int(len(scene.boxes)), len(scene.frames)
    seg = np.unique(scene.semantic)
    entry["classes"] = [info.seg_classes[i] for i in seg if 0 <= i < len(info.seg_classes)]
    labels, counts = np.unique(scene.box_labels, return_counts=True)
    entry["box_classes"] = {info.det_classes[i]: int(c) for i, c in zip(labels, counts) if 0 <= i < len(info.det_classes)}
    return entry


def check_scene(split: str, scene_id: str, load: Callable[[], Scene], info: DatasetInfo,
                frames_only: bool = False) -> dict:
    """Load one scene with ``load()`` and check it; any exception becomes a problem of the row.

    ``frames_only``: the scene of an unlabelled split is its frames (no point cloud, no boxes), so
    only its frames are checked, and it must have some."""
    try:
        scene = load()
    except Exception as exc:  # noqa: BLE001 - a verifier reports every failure and goes on
        entry = scene_entry(split, scene_id, None, info)
        entry["problems"].append(one_line(exc))
        return entry
    entry = scene_entry(split, scene_id, scene, info)
    if frames_only:
        entry["problems"] += frame_problems(scene) if scene.frames else ["no frames in a frames-only scene"]
    else:
        entry["problems"] += scene_problems(scene, info) + frame_problems(scene)
    return entry


def frame_problems(scene: Scene) -> list[str]:
    """Load every frame of ``scene`` (frames are read lazily, so this is what pretraining will read)
    and check its arrays; a frame that fails to load is a problem, and the others are still checked."""
    problems = []
    for index in range(len(scene.frames)):
        try:
            frame = scene.frames[index]
        except Exception as exc:  # noqa: BLE001 - a verifier reports every failure and goes on
            problems.append(one_line(exc))
            continue
        h, w = frame.depth.shape[:2] if frame.depth.ndim == 2 else (-1, -1)
        if frame.rgb.shape != (h, w, 3) or frame.rgb.dtype != np.uint8:
            problems.append(f"frame {frame.frame_id}: rgb {frame.rgb.dtype} {frame.rgb.shape} does not match "
                            f"depth {frame.depth.shape} (expected uint8 (H, W, 3))")
        if not np.all(np.isfinite(frame.pose)) or not np.all(np.isfinite(frame.intrinsics)):
            problems.append(f"frame {frame.frame_id}: non-finite pose or intrinsics")
    return problems


def verify_dataset(report: dict, dataset, limit: int | None = None) -> dict:
    """Check the first ``limit`` scenes (all when None) of every split of a protocol dataset; the
    scenes of its ``unlabelled_splits`` (if it has any) are checked as frames only."""
    unlabelled = getattr(dataset, "unlabelled_splits", ())
    for split in dataset.splits:
        count = dataset.num_scenes(split)
        for index in range(count if limit is None else min(count, limit)):
            sid = dataset.scene_id(split, index)
            report["scenes"].append(check_scene(split, sid, lambda: dataset.scene(split, index), dataset.info,
                                                frames_only=split in unlabelled))
    return finish_report(report)


def finish_report(report: dict) -> dict:
    """Fill the per-split counts, gather scene problems into ``problems`` and set ``ok``."""
    splits: dict[str, dict] = {}
    scene_problems_ = []
    for entry in report["scenes"]:
        s = splits.setdefault(entry["split"], {"scenes": 0, "points": 0, "boxes": 0, "problems": 0})
        s["scenes"] += 1
        s["points"] += entry["points"] or 0
        s["boxes"] += entry["boxes"] or 0
        s["problems"] += len(entry["problems"])
        scene_problems_ += [{"split": entry["split"], "scene_id": entry["scene_id"], "message": m}
                            for m in entry["problems"]]
    report["splits"] = splits
    report["problems"] = [p for p in report["problems"] if p["scene_id"] is None] + scene_problems_
    if not report["scenes"] and not report["problems"]:  # an empty or unrelated folder is not a clean dataset
        where = report["found"] or report["root"]
        report["problems"].append({"split": None, "scene_id": None, "message": f"{where}: no scenes found"})
    report["ok"] = not report["problems"]
    return report


_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def npy_problems(path: pathlib.Path, dtype: np.dtype | None = None, ndim: int | None = None) -> list[str]:
    """Problems of one ``.npy`` file without loading its data: missing, bad header, truncated, dtype, ndim."""
    if not path.is_file():
        return [f"{path}: missing file"]
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = _NPY_HEADER_READERS.get(version)
            if read_header is None:
                return [f"{path}: unsupported .npy format version {version}"]
            shape, _, file_dtype = read_header(f)
            offset = f.tell()
    except (OSError, ValueError) as exc:
        return [f"{path}: unreadable .npy header ({one_line(exc)})"]
    problems = []
    expected = offset + int(np.prod(shape)) * file_dtype.itemsize
    if path.stat().st_size < expected:
        problems.append(f"{path}: truncated: {path.stat().st_size} bytes, header says {expected}")
    if dtype is not None and file_dtype != np.dtype(dtype):
        problems.append(f"{path}: dtype {file_dtype}, expected {np.dtype(dtype)}")
    if ndim is not None and len(shape) != ndim:
        problems.append(f"{path}: shape {shape}, expected {ndim} dims")
    return problems


# ---- verifiers ----

def verify_synthetic(root: pathlib.Path | None = None, *, layout: str = "auto", limit: int | None = None) -> dict:
    """Generate and check the simulated benchmark at its default settings, plus 8 scenes of its unlabelled
    pretrain split (empty by default), checked as frames only. It has no files; root is unused."""
    from datasets.synthetic import SyntheticIndoor

    return verify_dataset(new_report("synthetic", None, "generated"), SyntheticIndoor(num_pretrain=8), limit)


def _s3dis_layout(root: pathlib.Path) -> str | None:
    from datasets.s3dis import BIN_FILES

    if any((root / kind).is_dir() for kind in BIN_FILES):
        return "bin"
    if any(p.is_dir() for p in root.glob("Area_*")):
        return "raw"
    return None


def _s3dis_bin_rows(report: dict, root: pathlib.Path, val_area: int, limit: int | None) -> None:
    from datasets.s3dis import BIN_FILES, S3DIS_INFO, area_of, bin_room_problems, scene_from_arrays

    # A room is any name seen in one of the three folders, so a room missing one file is still checked.
    rooms = sorted({p.stem for kind in BIN_FILES for p in (root / kind).glob("*.bin")})
    if not rooms:
        add_problem(report, f"{root}: no <room>.bin files in {', '.join(BIN_FILES)}")
    seen: dict[str, int] = {}
    for room in rooms:
        try:
            split = "val" if area_of(room) == val_area else "train"
        except ValueError as exc:
            add_problem(report, one_line(exc), split="unknown", scene_id=None)
            continue
        if limit is not None and seen.get(split, 0) >= limit:
            continue
        seen[split] = seen.get(split, 0) + 1

        try:
            arrays, problems = bin_room_problems(root, room)
        except Exception as exc:  # noqa: BLE001 - report and go on to the next room
            arrays, problems = {}, [one_line(exc)]
        if problems:  # every file-level problem of the room is listed, not only the first
            entry = scene_entry(split, room, None, S3DIS_INFO)
            entry["problems"] = problems
            if "points" in arrays:
                entry["points"] = len(arrays["points"])
        else:
            entry = check_scene(split, room, lambda: scene_from_arrays(
                room, arrays["points"], arrays["semantic_mask"], arrays["instance_mask"]), S3DIS_INFO)
        report["scenes"].append(entry)


def verify_s3dis(root: pathlib.Path | None, *, layout: str = "auto", limit: int | None = None,
                 val_area: int = 5) -> dict:
    """Check an S3DIS root in the mmdet3d ``bin`` layout or the Stanford ``raw`` layout (``auto``: detect)."""
    from datasets.s3dis import S3DIS_INFO, S3DISRaw, read_raw_room

    report = new_report("s3dis", root, layout)
    if root is None or not pathlib.Path(root).is_dir():
        add_problem(report, f"{root}: S3DIS root folder not found (give --root)")
        return finish_report(report)
    root = pathlib.Path(root)
    if layout == "auto":
        report["layout"] = layout = _s3dis_layout(root) or "unknown"
    if layout == "bin":
        _s3dis_bin_rows(report, root, val_area, limit)
    elif layout == "raw":
        try:
            ds = S3DISRaw(root, val_area=val_area)
        except (OSError, ValueError) as exc:
            add_problem(report, one_line(exc))
            return finish_report(report)
        for split in ds.splits:
            for room in ds.scene_ids[split][:limit]:
                report["scenes"].append(check_scene(
                    split, room, lambda room=room: read_raw_room(ds.room_folder(room), room), S3DIS_INFO))
    elif layout == "unknown":
        add_problem(report, f"{root}: neither the mmdet3d layout (points/ semantic_mask/ instance_mask/) "
                            f"nor the raw layout (Area_N/<room>/Annotations/) was found")
    else:
        add_problem(report, f"unknown s3dis layout {layout!r}; use auto, bin or raw")
    return finish_report(report)


def verify_sunrgbd(root: pathlib.Path | None, *, layout: str = "auto", limit: int | None = None) -> dict:
    """Check a SUN RGB-D root: a VoteNet export (``sunrgbd_trainval``: split files, then every frame's
    points, image, calib and labels) or an mmdet3d v1.x root (``sunrgbd_infos_<split>.pkl``, ``points/``,
    images); ``auto`` picks mmdet3d when the root has no ``calib/`` but has the info pkls. Every scene
    must load into a valid scene with its frame."""
    from datasets.sunrgbd import SunRgbdMmdet3d, SunRgbdVotenet

    if layout == "auto":
        mmdet3d = root is not None and not (pathlib.Path(root) / "calib").is_dir() and any(
            pathlib.Path(root).glob("sunrgbd_infos_*.pkl"))
        layout = "mmdet3d" if mmdet3d else "votenet"
    report = new_report("sunrgbd", root, layout)
    readers = {"votenet": SunRgbdVotenet, "mmdet3d": SunRgbdMmdet3d}
    if layout not in readers:
        add_problem(report, f"unknown sunrgbd layout {layout!r}; use auto, votenet or mmdet3d")
        return finish_report(report)
    try:
        # "error": a NaN point is a problem to report here, not something to drop quietly.
        dataset = readers[layout](root, non_finite="error")
    except (OSError, ValueError) as exc:
        add_problem(report, one_line(exc))
        return finish_report(report)
    return verify_dataset(report, dataset, limit)


def _scannet_splits(found) -> dict[str, list[str]]:
    """Scene ids per split from the ``scannetv2_<split>.txt`` lists found with the root; without split
    lists, every scene on disk under the split name "all"."""
    from datasets.scannet import read_split_list

    if found.meta_dir is not None:
        return {split: read_split_list(found.meta_dir, split) for split in ("train", "val")}
    return {"all": found.scene_ids_on_disk()}


def _scannet_loader(found, frames):
    """``load(scene_id) -> Scene`` for the layout ``found``; a one-line error where the layout cannot be read
    at all (raw scans without their label map)."""
    from datasets.scannet import read_bin_scene, read_export_scene, read_label_map, read_raw_scene
    from datasets.scannet.dataset import with_frames

    if found.layout == "export":
        return lambda s: with_frames(read_export_scene(found.folder, s), frames)
    if found.layout == "bin":
        return lambda s: with_frames(read_bin_scene(found.folder, s), frames)
    if found.label_map is None:
        raise FileNotFoundError(f"{found.folder}: no scannetv2-labels.combined.tsv beside it or in meta_data/ "
                                "(the raw layout needs it)")
    read_label_map(found.label_map)
    return lambda s: with_frames(read_raw_scene(found.folder, s, found.label_map), frames)


def verify_scannet(root: pathlib.Path | None, *, layout: str = "auto", limit: int | None = None,
                   meta_dir: pathlib.Path | None = None, frames=None) -> dict:
    """Check a ScanNet root: a VoteNet/mmdet3d ``export``, the ``raw`` download (``scans/``) or mmdet3d's
    ``bin`` files, in the layout's own folder or the dataset root holding it (``auto``: the first found
    of export, raw, bin; ``datasets/scannet/roots.py``). Every scene of the split lists loads into a
    valid ``Scene`` (a scene missing from disk is a problem); export scenes have their ``.npy`` files
    with sound headers. With a frame source (e.g. ``SensFrames``), every frame of every scene is loaded
    and checked too."""
    from datasets.scannet import SCANNET_INFO
    from datasets.scannet.readers import export_path
    from datasets.scannet.roots import resolve_scannet_root

    report = new_report("scannet", root, layout)
    if root is None:
        add_problem(report, "no ScanNet root given (give --root)")
        return finish_report(report)
    try:
        found = resolve_scannet_root(root, layout, meta_dir)
        report["layout"], report["found"] = found.layout, found.summary()
        load = _scannet_loader(found, frames)
        splits = _scannet_splits(found)
    except (OSError, ValueError) as exc:
        add_problem(report, one_line(exc))
        return finish_report(report)
    for split, scene_ids in splits.items():
        for scene_id in scene_ids[:limit]:
            if found.layout == "export":
                files = [export_path(found.folder, scene_id, key) for key in ("vert", "sem_label", "ins_label")]
                header = [m for path in files for m in npy_problems(path)]
                if header:
                    report["scenes"].append({**scene_entry(split, scene_id, None, SCANNET_INFO), "problems": header})
                    continue
            report["scenes"].append(check_scene(split, scene_id, lambda s=scene_id: load(s), SCANNET_INFO))
    return finish_report(report)


VERIFIERS: dict[str, Callable[..., dict]] = {"synthetic": verify_synthetic, "s3dis": verify_s3dis,
                                             "scannet": verify_scannet, "sunrgbd": verify_sunrgbd}


def format_report(report: dict) -> str:
    """The report as text: one line per scene, the per-split counts, then every problem."""
    lines = [f"{report['kind']} ({report['layout']} layout) at {report['root'] or '(no files)'}"]
    if report.get("found"):
        lines.append(f"found: {report['found']}")
    for e in report["scenes"]:
        points = "?" if e["points"] is None else e["points"]
        found = f"{points:>9} points {'?' if e['boxes'] is None else e['boxes']:>4} boxes"
        found += f" {e['frames']:>4} frames" if e.get("frames") else ""
        boxes = ", ".join(f"{k} {v}" for k, v in e["box_classes"].items())
        lines.append(f"  {e['split']:<5} {e['scene_id']:<24} {found}  classes: {', '.join(e['classes']) or '-'}"
                     + (f"  boxes: {boxes}" if boxes else "") + (f"  [{len(e['problems'])} problems]" if e["problems"] else ""))
    for split, s in report["splits"].items():
        lines.append(f"{split}: {s['scenes']} scenes, {s['points']} points, {s['boxes']} boxes, {s['problems']} problems")
    if not report["problems"]:
        lines.append("no problems found")
    else:
        lines.append(f"{len(report['problems'])} problems:")
        lines += [f"  - {p['scene_id'] + ': ' if p['scene_id'] else ''}{p['message']}" for p in report["problems"]]
    return "\n".join(lines)

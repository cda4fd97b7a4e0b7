"""Raw ScanNet v2 scans (``scans/<scene>/``) -> ``Scene``, as votenet's ``export_one_scan`` does it.

Files used: ``<scene>_vh_clean_2.ply`` (mesh vertices), ``<scene>_vh_clean_2.0.010000.segs.json``
(over-segment id per vertex), ``<scene>.aggregation.json`` (objects = lists of segments with a raw
category name), ``<scene>.txt`` (``axisAlignment``) and ``scannetv2-labels.combined.tsv`` (raw
category -> NYU40 id). Instance id = aggregation ``objectId + 1`` (0 = no object), as votenet.
"""
from __future__ import annotations

import csv
import json
import pathlib

import numpy as np

from datasets.scannet.readers import scene_from_arrays
from datasets.types import Scene

RAW_LAYOUT = ("scans/<scene>/<scene>_vh_clean_2.ply, <scene>_vh_clean_2.0.010000.segs.json, "
              "<scene>.aggregation.json, <scene>.txt")
_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2", "ushort": "u2",
    "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4", "float": "f4", "float32": "f4",
    "double": "f8", "float64": "f8",
}
_PLY_FORMATS = {"binary_little_endian": "<", "binary_big_endian": ">", "ascii": ""}


def _ply_header(data: bytes, path: pathlib.Path) -> tuple[str, int, list[tuple[str, str]], int]:
    """(format, vertex count, vertex properties, header length) of a PLY whose first element is ``vertex``."""
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise ValueError(f"{path}: not a PLY file (no 'ply' magic or 'end_header')")
    header_len = data.index(b"\n", end) + 1
    fmt, count, props, element = None, None, [], None
    for line in data[:end].decode("ascii", "replace").splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "format":
            fmt = words[1]
        elif words[0] == "element":
            element = words[1]
            if element == "vertex":
                count = int(words[2])
            elif count is None:
                raise ValueError(f"{path}: element {element!r} precedes 'vertex'; only vertex-first PLYs are supported")
        elif words[0] == "property" and element == "vertex":
            if words[1] == "list" or words[1] not in _PLY_TYPES:
                raise ValueError(f"{path}: unsupported vertex property {' '.join(words[1:])!r}")
            props.append((words[2], _PLY_TYPES[words[1]]))
    if fmt not in _PLY_FORMATS or count is None:
        raise ValueError(f"{path}: PLY header needs a known 'format' and an 'element vertex' line, got format {fmt!r}")
    return fmt, count, props, header_len


def read_ply_vertices(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Vertex properties of a PLY file (binary little/big endian or ASCII) as ``{name: (N,) array}``.

    Faces and other elements after the vertices are ignored.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing PLY file {path} (expected layout: {RAW_LAYOUT})")
    data = path.read_bytes()
    fmt, count, props, start = _ply_header(data, path)
    if fmt == "ascii":
        lines = data[start:].decode("ascii", "replace").splitlines()[:count]
        try:
            table = np.array([line.split()[: len(props)] for line in lines], dtype=np.float64).reshape(-1, len(props))
        except ValueError:
            table = np.zeros((0, len(props)))
        if len(table) != count:
            raise ValueError(f"{path}: ASCII PLY has {len(table)} readable vertex rows, header says {count}")
        return {name: table[:, i].astype(t) for i, (name, t) in enumerate(props)}
    dtype = np.dtype([(name, _PLY_FORMATS[fmt] + t) for name, t in props])
    if len(data) - start < count * dtype.itemsize:
        raise ValueError(f"{path}: truncated PLY, {len(data) - start} bytes after the header for {count} vertices "
                         f"of {dtype.itemsize} bytes")
    rec = np.frombuffer(data, dtype=dtype, count=count, offset=start)
    return {name: rec[name].astype(rec[name].dtype.newbyteorder("=")) for name in rec.dtype.names}


def read_label_map(tsv_path: str | pathlib.Path, key: str = "raw_category", value: str = "nyu40id") -> dict[str, int]:
    """``{raw category name: NYU40 id}`` from ScanNet's ``scannetv2-labels.combined.tsv``."""
    tsv_path = pathlib.Path(tsv_path)
    if not tsv_path.is_file():
        raise FileNotFoundError(f"missing label map {tsv_path} (ScanNet's scannetv2-labels.combined.tsv)")
    with open(tsv_path, newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        if not reader.fieldnames or key not in reader.fieldnames or value not in reader.fieldnames:
            raise ValueError(f"{tsv_path}: needs tab-separated columns {key!r} and {value!r}, got {reader.fieldnames}")
        return {row[key]: int(row[value]) for row in reader if row[value] and row[value].strip().isdigit()}


def _read_json(path: pathlib.Path, key: str) -> list:
    if not path.is_file():
        raise FileNotFoundError(f"missing file {path} (expected layout: {RAW_LAYOUT})")
    try:
        return json.loads(path.read_text())[key]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: malformed JSON or no {key!r} entry ({type(e).__name__})") from None


def read_axis_alignment(meta_path: pathlib.Path) -> np.ndarray:
    """4x4 ``axisAlignment`` (row-major) of a ``<scene>.txt``; identity when the file or line is absent."""
    if not meta_path.is_file():
        return np.eye(4)
    for line in meta_path.read_text().splitlines():
        if line.strip().startswith("axisAlignment"):
            values = line.split("=", 1)[1].split()
            if len(values) != 16:
                raise ValueError(f"{meta_path}: axisAlignment needs 16 numbers, got {len(values)}")
            return np.array(values, dtype=np.float64).reshape(4, 4)
    return np.eye(4)


def raw_scene_present(scans_root: str | pathlib.Path, scene_id: str) -> bool:
    """Whether ``scans/<scene>/<scene>_vh_clean_2.ply`` exists."""
    return (pathlib.Path(scans_root) / scene_id / f"{scene_id}_vh_clean_2.ply").is_file()


def read_raw_scene(scans_root: str | pathlib.Path, scene_id: str, label_map_tsv: str | pathlib.Path,
                   align: bool = True) -> Scene:
    """Read a raw ScanNet scan into a ``Scene`` (axis-aligned with ``<scene>.txt`` when ``align``).

    Raw category names missing from the label map get NYU40 id 0 (unannotated).
    """
    label_map = read_label_map(label_map_tsv)
    folder = pathlib.Path(scans_root) / scene_id
    ply = read_ply_vertices(folder / f"{scene_id}_vh_clean_2.ply")
    if not {"x", "y", "z", "red", "green", "blue"} <= set(ply):
        raise ValueError(f"{folder / f'{scene_id}_vh_clean_2.ply'}: vertices need x, y, z, red, green, blue; "
                         f"got {sorted(ply)}")
    xyz = np.stack([ply["x"], ply["y"], ply["z"]], axis=1).astype(np.float64)
    rgb = np.stack([ply["red"], ply["green"], ply["blue"]], axis=1).astype(np.float64)
    seg_path = folder / f"{scene_id}_vh_clean_2.0.010000.segs.json"
    seg = np.asarray(_read_json(seg_path, "segIndices"), dtype=np.int64)
    if len(seg) != len(xyz):
        raise ValueError(f"{seg_path}: {len(seg)} segIndices for {len(xyz)} PLY vertices")
    nyu40, instance = _labels_from_aggregation(folder / f"{scene_id}.aggregation.json", seg, label_map)
    if align:
        a = read_axis_alignment(folder / f"{scene_id}.txt")
        xyz = xyz @ a[:3, :3].T + a[:3, 3]
    return scene_from_arrays(scene_id, np.c_[xyz, rgb], nyu40, instance)


def _labels_from_aggregation(path: pathlib.Path, seg: np.ndarray, label_map: dict[str, int]) -> tuple[np.ndarray, ...]:
    """Per-vertex NYU40 ids and instance ids from the aggregation's segment groups."""
    groups = _read_json(path, "segGroups")
    nyu40 = np.zeros(len(seg), dtype=np.int64)
    instance = np.zeros(len(seg), dtype=np.int64)
    for g in groups:
        try:
            mask = np.isin(seg, np.asarray(g["segments"], dtype=np.int64))
            nyu40[mask] = label_map.get(g["label"], 0)
            instance[mask] = int(g["objectId"]) + 1
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: segGroups entries need 'objectId', 'label' and 'segments'") from None
    return nyu40, instance

"""How prepared frames are stored: every frame of a scene packed in one file, only what pretraining reads.

A scene's file (``<prepare folder>/scenes/<scene id>.npz``, uncompressed, written atomically with its
checksum record, ``infra.cached_step``) holds its frames one after the other:

    frame_ids (F,)           point_offsets (F+1,)  region_offsets (F+1,)
    xyz (P, 3) float32       rgb (P, 3) uint8      region (P,) uint16: 0 = no region, k = the frame's k-th region
    region_ids (R,) int32    region_features (R, C) float16
    label_maps (sum H*W,) int32, label_shapes (F, 2), pixel (P, 2) int32   only with ``keep_label_maps``

Two files a scene (its data and its record), whatever its frame count: ScanNet's 78,000 frames in 1,201 scenes
are about 2,400 files, not 156,000. At the paper's shape (20,000 points, ~100 regions of 768-d features) a
frame takes about 0.49 MB: points 240 KB, colours 60 KB, regions 40 KB, features 154 KB. The label map
(1.2 MB at 640 x 480) and the pixels are left out unless an option needs them. The scene's manifest (its
frames, the points each kept, the frames skipped and why) rides in the record, so a restart lists what is
done without reading the data.
"""
from __future__ import annotations

import dataclasses
import io
import zipfile
import zlib

import numpy as np

from infra.cached_step import UnusableCacheFile

FORMAT = 2  # part of the prepare folder's key: files of another layout are never read
_REGION_INDEX = np.uint16


@dataclasses.dataclass
class PreparedFrame:
    """One frame as pretraining reads it."""

    frame_id: str
    xyz: np.ndarray  # (N, 3) float32 world coordinates
    rgb: np.ndarray  # (N, 3) uint8
    region: np.ndarray  # (N,) int32 mask label at the point's pixel, 0 = no region
    region_ids: np.ndarray  # (R,) int32 labels of the regions that have features
    region_features: np.ndarray  # (R, C) float16 teacher feature per region
    label_map: np.ndarray | None = None  # (H, W) int32, kept with ``keep_label_maps`` only
    pixel: np.ndarray | None = None  # (N, 2) int32 [row, col], kept with ``keep_label_maps`` only
    region_groups: np.ndarray | None = None  # (R,) int64 group of each region, set by PreparedSplit


def pack_scene(frames: list[PreparedFrame], keep_label_maps: bool) -> bytes:
    """The file of a scene's prepared frames (module docstring)."""
    points = np.cumsum([0] + [len(f.xyz) for f in frames])
    regions = np.cumsum([0] + [len(f.region_ids) for f in frames])
    channels = frames[0].region_features.shape[1] if frames else 0
    arrays = {
        "frame_ids": np.array([f.frame_id for f in frames], dtype=str),
        "point_offsets": points.astype(np.int64), "region_offsets": regions.astype(np.int64),
        "xyz": _concat([f.xyz for f in frames], np.float32, (0, 3)),
        "rgb": _concat([f.rgb for f in frames], np.uint8, (0, 3)),
        "region": _concat([_region_index(f) for f in frames], _REGION_INDEX, (0,)),
        "region_ids": _concat([f.region_ids for f in frames], np.int32, (0,)),
        "region_features": _concat([f.region_features for f in frames], np.float16, (0, channels)),
    }
    if keep_label_maps:
        arrays["label_maps"] = _concat([f.label_map.reshape(-1) for f in frames], np.int32, (0,))
        arrays["label_shapes"] = np.array([f.label_map.shape for f in frames], np.int64).reshape(-1, 2)
        arrays["pixel"] = _concat([f.pixel for f in frames], np.int32, (0, 2))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def unpack_scene(data: bytes, frame_ids: list[str] | None = None) -> list[PreparedFrame]:
    """A scene file's frames, validated (reading each zip member checks its CRC); ``UnusableCacheFile`` when a
    field is missing, of the wrong type or length, or the frames are not ``frame_ids``."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise UnusableCacheFile(f"unreadable ({type(e).__name__}: {e})") from None
    expected = {"point_offsets": (np.int64, 1), "region_offsets": (np.int64, 1), "xyz": (np.float32, 2),
                "rgb": (np.uint8, 2), "region": (_REGION_INDEX, 1), "region_ids": (np.int32, 1),
                "region_features": (np.float16, 2)}
    for name, (dtype, ndim) in expected.items():
        if name not in arrays or arrays[name].dtype != dtype or arrays[name].ndim != ndim:
            got = f"{arrays[name].dtype} {arrays[name].shape}" if name in arrays else "missing"
            raise UnusableCacheFile(f"field {name!r} is {got}, expected {np.dtype(dtype)} with {ndim} dims")
    if "frame_ids" not in arrays or arrays["frame_ids"].dtype.kind != "U" or arrays["frame_ids"].ndim != 1:
        raise UnusableCacheFile("field 'frame_ids' is missing or not a list of names")
    ids, points, regions = [str(f) for f in arrays["frame_ids"]], arrays["point_offsets"], arrays["region_offsets"]
    if frame_ids is not None and ids != list(frame_ids):
        raise UnusableCacheFile(f"holds frames {ids[:3]}..., expected {list(frame_ids)[:3]}...")
    if not (len(points) == len(regions) == len(ids) + 1 and points[-1] == len(arrays["xyz"]) == len(arrays["rgb"])
            == len(arrays["region"]) and regions[-1] == len(arrays["region_ids"]) == len(arrays["region_features"])):
        raise UnusableCacheFile("per-point or per-region fields have inconsistent lengths")
    maps = _label_maps(arrays, len(ids))
    frames = []
    for i, frame_id in enumerate(ids):
        p, r = slice(points[i], points[i + 1]), slice(regions[i], regions[i + 1])
        region_ids = arrays["region_ids"][r]
        index = arrays["region"][p].astype(np.int64)
        if index.size and index.max() > len(region_ids):
            raise UnusableCacheFile(f"frame {frame_id!r}: a point names region {index.max()} of {len(region_ids)}")
        labels = np.concatenate([[0], region_ids]).astype(np.int32)[index]
        frames.append(PreparedFrame(frame_id, arrays["xyz"][p], arrays["rgb"][p], labels, region_ids,
                                    arrays["region_features"][r], maps[i] if maps else None,
                                    arrays["pixel"][p] if maps else None))
    return frames


def _region_index(frame: PreparedFrame) -> np.ndarray:
    """Each point's region as its position among the frame's regions plus one (0 = none): small integers."""
    if len(frame.region_ids) >= np.iinfo(_REGION_INDEX).max:
        raise ValueError(f"frame {frame.frame_id!r}: {len(frame.region_ids)} regions, more than a scene file holds "
                         f"({np.iinfo(_REGION_INDEX).max - 1}); lower the mask source's region count")
    if not len(frame.region_ids):
        return np.zeros(len(frame.region), _REGION_INDEX)
    position = np.minimum(np.searchsorted(frame.region_ids, frame.region), len(frame.region_ids) - 1)
    found = frame.region_ids[position] == frame.region  # a label past the last id lands on it and differs
    return np.where(found, position + 1, 0).astype(_REGION_INDEX)


def _label_maps(arrays: dict, count: int) -> list[np.ndarray] | None:
    if "label_maps" not in arrays:
        return None
    shapes = arrays["label_shapes"]
    ends = np.cumsum([0] + [int(h) * int(w) for h, w in shapes])
    if len(shapes) != count or ends[-1] != len(arrays["label_maps"]) or len(arrays["pixel"]) != len(arrays["xyz"]):
        raise UnusableCacheFile("label maps or pixels have inconsistent lengths")
    return [arrays["label_maps"][ends[i]:ends[i + 1]].reshape(shapes[i]) for i in range(count)]


def _concat(parts: list[np.ndarray], dtype, empty_shape: tuple[int, ...]) -> np.ndarray:
    return np.concatenate([np.asarray(p, dtype) for p in parts]) if parts else np.zeros(empty_shape, dtype)

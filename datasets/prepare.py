"""Offline preparation cache (DESIGN 2.2): per frame masks, region features, points with pixel and region.

``FramePreparation.prepare(dataset, split, cache_root)`` computes, once, for every frame of a split:
the mask label map (int32), the teacher's region features (float16, mean of the upsampled patch features
inside each region), and a fixed-size sample of the frame's back-projected points with their pixel and
region id (int32). It then clusters all region features of the split into groups and counts regions per
group, for the group-balanced re-weighting (DESIGN 2.6).

The cache folder is keyed by the content fingerprint of the dataset, the mask source, the teacher and
the sampling parameters, so a changed configuration never reads stale files. Work is resumable: every
frame file and every scene manifest is written atomically, a restarted run skips scenes whose manifest
and frame files are complete, and a frame file that fails validation on load (truncated, corrupt,
wrong fields) is recomputed, never used.
"""
from __future__ import annotations

import dataclasses
import io
import json
import pathlib
import zipfile
import zlib

import gin
import numpy as np
import torch

from bench import progress, timing
from bench.errors import DataError
from bench.fingerprint import fingerprint
from bench.io import atomic_write_bytes, atomic_write_text
from bench.locks import step_lock, try_step_lock
from datasets.geometry import backproject
from datasets.memory_cache import ByteBudgetCache, array_bytes, file_key, freeze_arrays
from datasets.types import Frame
from methods.regions import region_features
from methods.reweighting import assign_groups, cluster_region_features, group_counts, group_weights

_FIELDS = {"xyz": (np.float32, 2), "rgb": (np.uint8, 2), "pixel": (np.int32, 2), "region": (np.int32, 1),
           "region_ids": (np.int32, 1), "region_features": (np.float16, 2), "label_map": (np.int32, 2)}


_LOADED = ByteBudgetCache()  # prepared frames this process has read (with their groups)


class CacheError(Exception):
    """A cache file is missing, truncated, corrupt or inconsistent."""


@dataclasses.dataclass
class PreparedFrame:
    """One frame as pretraining reads it."""

    frame_id: str
    xyz: np.ndarray  # (N, 3) float32 world coordinates
    rgb: np.ndarray  # (N, 3) uint8
    pixel: np.ndarray  # (N, 2) int32 [row, col]
    region: np.ndarray  # (N,) int32 mask label at the point's pixel, 0 = no region
    region_ids: np.ndarray  # (R,) int32 labels of the regions that have features
    region_features: np.ndarray  # (R, C) float16 teacher feature per region
    label_map: np.ndarray  # (H, W) int32
    region_groups: np.ndarray | None = None  # (R,) int64 group of each region, set by PreparedSplit


def frame_to_bytes(prepared: PreparedFrame) -> bytes:
    """Serialise a prepared frame as an uncompressed npz (zip members carry CRC-32 checks)."""
    buffer = io.BytesIO()
    arrays = {name: getattr(prepared, name) for name in _FIELDS}
    np.savez(buffer, frame_id=np.array(prepared.frame_id), **arrays)
    return buffer.getvalue()


def load_frame(path: pathlib.Path) -> PreparedFrame:
    """Read and validate a prepared frame file; CacheError if anything is wrong with it."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in (*_FIELDS, "frame_id")}  # reading checks each CRC
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise CacheError(f"{path}: unreadable cache file ({type(e).__name__}: {e})") from None
    for name, (dtype, ndim) in _FIELDS.items():
        if arrays[name].dtype != dtype or arrays[name].ndim != ndim:
            raise CacheError(f"{path}: field {name!r} is {arrays[name].dtype} {arrays[name].shape}, "
                             f"expected {np.dtype(dtype)} with {ndim} dims")
    n, r = len(arrays["xyz"]), len(arrays["region_ids"])
    if not (len(arrays["rgb"]) == len(arrays["pixel"]) == len(arrays["region"]) == n
            and len(arrays["region_features"]) == r):
        raise CacheError(f"{path}: per-point or per-region fields have inconsistent lengths")
    return PreparedFrame(frame_id=str(arrays.pop("frame_id")), **arrays)


@gin.register
class FramePreparation:
    """The prepare step: mask source + 2D teacher + point sampling, cached on disk.

    Args:
      mask_source: called as ``mask_source(frame)`` -> (H, W) int32 labels (e.g. ``@SamMaskSource()``).
      teacher: called as ``teacher(frame)`` -> (C, h, w) patch features (e.g. ``@Dinov2Teacher()``).
      points_per_frame: points sampled per frame without replacement (all of them when fewer) [prior: 20,000].
      num_groups: k-means groups over the split's region features for re-weighting [choice: 32].
      seed: seed of the point sampling and of k-means.
      max_kmeans_regions: at most this many region features (a seeded sample) fit the k-means; all
        regions are then assigned to their nearest centroid for the counts.
    """

    def __init__(self, mask_source=gin.REQUIRED, teacher=gin.REQUIRED, points_per_frame: int = 20_000,
                 num_groups: int = 32, seed: int = 0, max_kmeans_regions: int = 200_000):
        if points_per_frame < 1 or num_groups < 1:
            raise ValueError("FramePreparation: points_per_frame and num_groups must be >= 1")
        self.mask_source = mask_source
        self.teacher = teacher
        self.points_per_frame = int(points_per_frame)
        self.num_groups = int(num_groups)
        self.seed = int(seed)
        self.max_kmeans_regions = int(max_kmeans_regions)

    def cache_dir(self, dataset, split: str, cache_root: pathlib.Path) -> pathlib.Path:
        """The folder of this configuration's cache for one split."""
        key = fingerprint(dataset, self.mask_source, self.teacher, self.points_per_frame, self.seed)
        return pathlib.Path(cache_root) / "prepare" / f"{dataset.info.name}-{split}-{key}"

    def prepare_frame(self, frame: Frame) -> PreparedFrame | None:
        """Masks, region features and sampled points of one frame; None if it has no valid depth."""
        label_map = self.mask_source(frame)
        xyz, pix = backproject(frame.depth, frame.intrinsics, frame.pose)
        if len(xyz) == 0:
            return None
        rng = np.random.default_rng([self.seed, zlib.crc32(frame.frame_id.encode())])
        if len(xyz) > self.points_per_frame:
            keep = np.sort(rng.choice(len(xyz), self.points_per_frame, replace=False))
            xyz, pix = xyz[keep], pix[keep]
        region_ids, features = region_features(self.teacher(frame), label_map)
        return PreparedFrame(
            frame_id=frame.frame_id, xyz=xyz.astype(np.float32), rgb=frame.rgb[pix[:, 0], pix[:, 1]],
            pixel=pix.astype(np.int32), region=label_map[pix[:, 0], pix[:, 1]].astype(np.int32),
            region_ids=np.asarray(region_ids, np.int32),
            region_features=np.asarray(features, np.float32).astype(np.float16), label_map=label_map)

    def prepare(self, dataset, split: str, cache_root: pathlib.Path) -> PreparedSplit:
        """Prepare every frame of ``split`` (resuming earlier work), then the re-weighting groups.

        Concurrent processes split the scenes between them: a scene another process is preparing is
        skipped and waited for at the end (``bench.locks``).
        """
        folder = self.cache_dir(dataset, split, cache_root)
        (folder / "frames").mkdir(parents=True, exist_ok=True)
        (folder / "scenes").mkdir(exist_ok=True)
        clock, prepared = timing.Stopwatch(), 0
        frames: dict[int, list[str]] = {}
        with timing.span("preparation"):
            deferred = []
            for index in progress.bar(range(dataset.num_scenes(split)), desc=f"prepare {dataset.info.name}/{split}"):
                done = self._finished_scene(dataset, split, index, folder)
                if done is not None:
                    frames[index] = done
                    continue
                with try_step_lock(self._lock(dataset, split, index, folder)) as held:
                    if held:
                        frames[index] = self._prepare_scene(dataset, split, index, folder)
                        prepared += 1
                    else:
                        deferred.append(index)
            for index in deferred:
                with step_lock(self._lock(dataset, split, index, folder)):
                    done = self._finished_scene(dataset, split, index, folder)
                    frames[index] = done if done is not None else self._prepare_scene(dataset, split, index, folder)
            frame_ids = [f for index in sorted(frames) for f in frames[index]]
            if not frame_ids:
                raise DataError(f"prepare: no frame of {dataset.info.name}/{split} has valid depth points "
                                "(pretraining needs RGB-D frames attached to the scenes)")
            with step_lock(folder / "locks" / "groups.lock"):
                groups = self._groups(folder, frame_ids)
        if prepared or deferred:
            progress.step(f"preparation {dataset.info.name}/{split}",
                          f"{prepared} of {len(frames)} scenes prepared in {progress.duration(clock.seconds)}"
                          + (f" ({len(deferred)} by another process)" if deferred else ""))
        return PreparedSplit(folder, frame_ids, groups, self, dataset, split)

    @staticmethod
    def _manifest(dataset, split: str, index: int, folder: pathlib.Path) -> pathlib.Path:
        return folder / "scenes" / f"{dataset.scene_id(split, index)}.json"

    @staticmethod
    def _lock(dataset, split: str, index: int, folder: pathlib.Path) -> pathlib.Path:
        return folder / "locks" / f"{dataset.scene_id(split, index)}.lock"

    def _finished_scene(self, dataset, split: str, index: int, folder: pathlib.Path) -> list[str] | None:
        """The frame ids of a scene whose manifest and frame files are complete, else None."""
        manifest = self._manifest(dataset, split, index, folder)
        if not manifest.is_file():
            return None
        done = json.loads(manifest.read_text())
        files = [folder / "frames" / f"{f}.npz" for f in done["frames"]]
        if all(p.is_file() and p.stat().st_size == s for p, s in zip(files, done["sizes"])):
            return done["frames"]
        return None

    def _prepare_scene(self, dataset, split: str, index: int, folder: pathlib.Path) -> list[str]:
        done = self._finished_scene(dataset, split, index, folder)
        if done is not None:
            return done
        manifest = self._manifest(dataset, split, index, folder)
        with timing.span("scene generation"):
            scene = dataset.scene(split, index)
        frames, sizes, skipped = [], [], []
        for frame in scene.frames:
            prepared = self.prepare_frame(frame)
            if prepared is None:
                skipped.append(frame.frame_id)
                continue
            data = frame_to_bytes(prepared)
            atomic_write_bytes(folder / "frames" / f"{frame.frame_id}.npz", data)
            frames.append(frame.frame_id)
            sizes.append(len(data))
        atomic_write_text(manifest, json.dumps({"frames": frames, "sizes": sizes, "skipped_no_depth": skipped}))
        return frames

    def recompute_frame(self, dataset, split: str, frame_id: str, folder: pathlib.Path) -> None:
        """Rebuild the scene that holds ``frame_id`` (after its file failed validation)."""
        for index in range(dataset.num_scenes(split)):
            manifest = folder / "scenes" / f"{dataset.scene_id(split, index)}.json"
            if manifest.is_file() and frame_id in json.loads(manifest.read_text())["frames"]:
                manifest.unlink()
                self._prepare_scene(dataset, split, index, folder)
                return
        raise CacheError(f"{folder}: no scene manifest lists frame {frame_id!r}")

    def _groups(self, folder: pathlib.Path, frame_ids: list[str]) -> dict[str, np.ndarray]:
        path = folder / f"groups-k{self.num_groups}-s{self.seed}.npz"
        if path.is_file():
            try:
                with np.load(path) as data:
                    return {k: data[k] for k in ("centroids", "counts", "weights")}
            except (OSError, ValueError, KeyError, zipfile.BadZipFile, zlib.error):
                pass  # recompute below
        features = [load_frame(folder / "frames" / f"{f}.npz").region_features for f in frame_ids]
        all_features = np.concatenate(features).astype(np.float32)
        if len(all_features) == 0:
            raise ValueError(f"prepare: the mask source found no region in any frame of {folder.name}")
        rng = np.random.default_rng(self.seed)
        sample = all_features
        if len(all_features) > self.max_kmeans_regions:
            sample = all_features[rng.choice(len(all_features), self.max_kmeans_regions, replace=False)]
        centroids, _ = cluster_region_features(sample, self.num_groups, self.seed)
        counts = group_counts(assign_groups(torch.from_numpy(all_features), centroids).numpy(), len(centroids))
        groups = {"centroids": centroids.astype(np.float32), "counts": counts, "weights": group_weights(counts)}
        buffer = io.BytesIO()
        np.savez(buffer, **groups)
        atomic_write_bytes(path, buffer.getvalue())
        return groups


class PreparedSplit:
    """The prepared frames of a split, read lazily from the cache, with the re-weighting groups."""

    def __init__(self, folder, frame_ids, groups, preparation, dataset, split):
        self.folder = pathlib.Path(folder)
        self.frame_ids = list(frame_ids)
        self.groups = groups
        self._preparation, self._dataset, self._split = preparation, dataset, split
        # A frame's region groups depend on the centroids, so the memory key names them too.
        self._groups_key = fingerprint(np.asarray(groups["centroids"]))

    def __len__(self) -> int:
        return len(self.frame_ids)

    def __getitem__(self, i: int) -> PreparedFrame:
        """The ``i``-th prepared frame with its regions' groups; frames read once stay in this process's
        memory (read-only, within a byte budget, see ``datasets.memory_cache``)."""
        frame_id = self.frame_ids[i]
        path = self.folder / "frames" / f"{frame_id}.npz"
        key = file_key(path, self._groups_key)
        frame = _LOADED.get(key)
        if frame is not None:
            return frame
        try:
            frame = load_frame(path)
        except CacheError as e:
            print(f"warning: {e}; recomputing")
            self._preparation.recompute_frame(self._dataset, self._split, frame_id, self.folder)
            frame = load_frame(path)
            key = file_key(path, self._groups_key)
        if frame.frame_id != frame_id:
            raise CacheError(f"{path}: holds frame {frame.frame_id!r}, expected {frame_id!r}")
        features = torch.from_numpy(frame.region_features.astype(np.float32))
        frame.region_groups = assign_groups(features, self.groups["centroids"]).numpy()
        return _LOADED.put(key, freeze_arrays(frame), array_bytes(frame))

"""Offline preparation cache (DESIGN 2.2): per frame masks, region features, points with pixel and region.

``FramePreparation.prepare(dataset, split, cache_root)`` computes, once, for every frame of a split:
the mask label map (int32), the teacher's region features (float16, mean of the upsampled patch features
inside each region), and a fixed-size sample of the frame's back-projected points with their pixel and
region id (int32). It then clusters all region features of the split into groups and counts regions per
group, for the group-balanced re-weighting (DESIGN 2.6).

The frames folder is keyed by the content fingerprint of the dataset and of the whole preparation but
``GROUPS_ONLY`` (the parameters of the k-means groups alone, so a K ablation reuses the frames); the
groups file and ``data_key`` (what pretraining stages are keyed by) cover the whole preparation, so a
changed configuration never reads stale files. Work is resumable: every frame file, scene manifest
and groups file is written atomically with a checksum (``infra.io``), a restarted run skips scenes whose
manifest and frame files are complete, and a file that fails its checksum or validation on load
(truncated, changed, wrong fields) is recomputed with a warning, never used.
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

from datasets.geometry import backproject
from datasets.types import Frame
from infra import progress, timing
from infra.cached_step import CachedStep, UnusableCacheFile, make_missing
from infra.checks import check_integer
from infra.errors import DataError, HarnessError
from infra.fingerprint import fingerprint
from infra.io import write_cache_file
from infra.machine import available_memory_bytes
from infra.memory_cache import ByteBudgetCache, array_bytes, file_key, freeze_arrays
from methods.regions import region_features
from methods.reweighting import assign_groups, cluster_region_features, group_counts, group_weights

_FIELDS = {"xyz": (np.float32, 2), "rgb": (np.uint8, 2), "pixel": (np.int32, 2), "region": (np.int32, 1),
           "region_ids": (np.int32, 1), "region_features": (np.float16, 2), "label_map": (np.int32, 2)}


_LOADED = ByteBudgetCache()  # prepared frames this process has read (with their groups)


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


def decode_frame(data: bytes, frame_id: str | None = None) -> PreparedFrame:
    """A prepared frame file's bytes, validated (reading each zip member checks its CRC); UnusableCacheFile
    if a field is missing, of the wrong type or length, or the file holds another frame than ``frame_id``."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in (*_FIELDS, "frame_id")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise UnusableCacheFile(f"unreadable ({type(e).__name__}: {e})") from None
    for name, (dtype, ndim) in _FIELDS.items():
        if arrays[name].dtype != dtype or arrays[name].ndim != ndim:
            raise UnusableCacheFile(f"field {name!r} is {arrays[name].dtype} {arrays[name].shape}, "
                                    f"expected {np.dtype(dtype)} with {ndim} dims")
    n, r = len(arrays["xyz"]), len(arrays["region_ids"])
    if not (len(arrays["rgb"]) == len(arrays["pixel"]) == len(arrays["region"]) == n
            and len(arrays["region_features"]) == r):
        raise UnusableCacheFile("per-point or per-region fields have inconsistent lengths")
    if frame_id is not None and str(arrays["frame_id"]) != frame_id:
        raise UnusableCacheFile(f"holds frame {str(arrays['frame_id'])!r}, expected {frame_id!r}")
    return PreparedFrame(frame_id=str(arrays.pop("frame_id")), **arrays)


def frame_step(folder: pathlib.Path, frame_id: str) -> CachedStep:
    """The file of one prepared frame (part of its scene's step, which reports the compute)."""
    return CachedStep(folder / "frames" / f"{frame_id}.npz", what="prepared frame", redo="preparing its scene again")


def _decode_manifest(data: bytes) -> dict:
    done = json.loads(data)
    if not (isinstance(done, dict) and isinstance(done.get("frames"), list)
            and isinstance(done.get("sizes"), list) and len(done["frames"]) == len(done["sizes"])):
        raise UnusableCacheFile("malformed (expected frames and sizes)")
    return done


def _decode_groups(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data)) as npz:
        return {k: npz[k] for k in ("centroids", "counts", "weights")}


def _groups_bytes(groups: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **groups)
    return buffer.getvalue()


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

    # Parameters that change the re-weighting groups only, not the prepared frames.
    GROUPS_ONLY = ("num_groups", "max_kmeans_regions")

    def __init__(self, mask_source=gin.REQUIRED, teacher=gin.REQUIRED, points_per_frame: int = 20_000,
                 num_groups: int = 32, seed: int = 0, max_kmeans_regions: int = 200_000):
        check_integer("FramePreparation.points_per_frame", points_per_frame, 1)
        check_integer("FramePreparation.num_groups", num_groups, 1)
        check_integer("FramePreparation.seed", seed)
        check_integer("FramePreparation.max_kmeans_regions", max_kmeans_regions, 1)
        self.mask_source = mask_source
        self.teacher = teacher
        self.points_per_frame = int(points_per_frame)
        self.num_groups = int(num_groups)
        self.seed = int(seed)
        self.max_kmeans_regions = int(max_kmeans_regions)
        self._checked_sizes: set[tuple[int, int]] = set()  # frame sizes whose memory was checked here

    def frame_memory(self, image_hw: tuple[int, int]) -> dict[str, tuple[float, str]]:
        """Device -> (bytes, what sets them) of preparing one frame of ``image_hw`` pixels: the mask source's
        and the teacher's where they can say (each on its own device), the label map and the back-projected
        points (about 60 bytes a pixel, CPU)."""
        needs = {"cpu": [60.0 * image_hw[0] * image_hw[1], []]}
        for part in (self.mask_source, self.teacher):
            if hasattr(part, "frame_memory"):
                needed, what = part.frame_memory(image_hw)
                entry = needs.setdefault(getattr(part, "device", "cpu"), [0.0, []])
                entry[0] += needed
                entry[1].append(what)
        return {device: (needed, f"preparing a frame of {image_hw[0]} x {image_hw[1]} pixels"
                                 + (f" with {' and '.join(whats)}" if whats else ""))
                for device, (needed, whats) in needs.items()}

    def check_frame_memory(self, image_hw: tuple[int, int]) -> None:
        """A one-line HarnessError when preparing a frame of ``image_hw`` would need more memory than is free
        now on a device it uses (``infra.machine``): checked on the first frame of each size a process
        prepares, before the frame's masks and features are made."""
        if tuple(image_hw) in self._checked_sizes:
            return
        for device, (needed, what) in self.frame_memory(image_hw).items():
            free = available_memory_bytes(device)
            if free is not None and needed > free:
                raise HarnessError(f"{what} would hold about {needed / 2**30:.1f} GiB on {device}, more than the "
                                   f"{free / 2**30:.1f} GiB free there; lower it")
        self._checked_sizes.add(tuple(image_hw))

    def cache_dir(self, dataset, split: str, cache_root: pathlib.Path) -> pathlib.Path:
        """The folder of this configuration's cache for one split: keyed by the dataset and every
        parameter but ``GROUPS_ONLY``."""
        frames_config = {k: v for k, v in vars(self).items() if k not in self.GROUPS_ONLY}
        key = fingerprint(dataset, type(self).__name__, frames_config)
        return pathlib.Path(cache_root) / "prepare" / f"{dataset.info.name}-{split}-{key}"

    def data_key(self, dataset, split: str, cache_root: pathlib.Path) -> str:
        """The content key of the prepared split and its groups (the whole preparation), which the
        pretraining stages on it are keyed by."""
        return f"{self.cache_dir(dataset, split, cache_root).name}-{self._groups_key()}"

    def _groups_key(self) -> str:
        return fingerprint(self, length=12)

    def prepare_frame(self, frame: Frame) -> PreparedFrame | None:
        """Masks, region features and sampled points of one frame; None if it has no valid depth."""
        self.check_frame_memory(frame.hw)
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
        skipped and waited for at the end (``infra.cached_step.make_missing``).
        """
        folder = self.cache_dir(dataset, split, cache_root)
        (folder / "frames").mkdir(parents=True, exist_ok=True)
        (folder / "scenes").mkdir(exist_ok=True)
        clock = timing.Stopwatch()
        with timing.span("preparation"):
            scenes = range(dataset.num_scenes(split))
            manifests = {i: done for i in scenes if (done := self._finished_scene(dataset, split, i, folder))}
            todo = [i for i in scenes if i not in manifests]
            made, by_others = make_missing(
                progress.bar(todo, desc=f"prepare {dataset.info.name}/{split}"),
                lambda i: self._scene_step(dataset, split, i, folder),
                lambda i: self._finished_scene(dataset, split, i, folder, quiet=True),
                lambda i: self._prepare_scene(dataset, split, i, folder))
            manifests.update(made)
            frame_ids = [f for index in sorted(manifests) for f in manifests[index]["frames"]]
            if not frame_ids:
                raise DataError(f"prepare: no frame of {dataset.info.name}/{split} has valid depth points "
                                "(pretraining needs RGB-D frames attached to the scenes)")
            groups = self._groups_step(folder).get(lambda: self._groups(dataset, split, folder, frame_ids),
                                                   _groups_bytes, _decode_groups)
        if todo:
            progress.step(f"preparation {dataset.info.name}/{split}",
                          f"{len(made) - by_others} of {len(manifests)} scenes prepared in "
                          f"{progress.duration(clock.seconds)}"
                          + (f" ({by_others} by another process)" if by_others else ""))
        counts = [n for done in manifests.values() for n in done.get("points", [None] * len(done["frames"]))]
        most = max(counts) if counts and None not in counts else None  # manifests written before 2026-12 lack it
        return PreparedSplit(folder, frame_ids, groups, self, dataset, split,
                             key=self.data_key(dataset, split, cache_root), most_points=most)

    @staticmethod
    def _scene_step(dataset, split: str, index: int, folder: pathlib.Path) -> CachedStep:
        """A scene's manifest (its frames, their sizes, the seconds they took): the step of its frames."""
        scene_id = dataset.scene_id(split, index)
        return CachedStep(folder / "scenes" / f"{scene_id}.json", name=f"prepare/{folder.name}/{scene_id}",
                          lock=folder / "locks" / f"{scene_id}.lock", what="preparation manifest",
                          redo="preparing the scene again")

    def _groups_step(self, folder: pathlib.Path) -> CachedStep:
        path = folder / f"groups-k{self.num_groups}-{self._groups_key()}.npz"
        return CachedStep(path, name=f"prepare/{folder.name}/{path.stem}", lock=folder / "locks" / "groups.lock",
                          what="groups file", redo="recomputing")

    def _finished_scene(self, dataset, split: str, index: int, folder: pathlib.Path,
                        quiet: bool = False) -> dict | None:
        """The manifest (``frames``, ``sizes``, ``points`` kept per frame, ...) of a scene whose frame files are
        complete, else None (a manifest that fails its checksum or is malformed is reported and the scene
        prepared again)."""
        done = self._scene_step(dataset, split, index, folder).load(_decode_manifest, quiet)
        if done is None:
            return None
        files = [folder / "frames" / f"{f}.npz" for f in done["frames"]]
        if all(p.is_file() and p.stat().st_size == s for p, s in zip(files, done["sizes"])):
            return done
        return None

    def _prepare_scene(self, dataset, split: str, index: int, folder: pathlib.Path) -> dict:
        clock = timing.Stopwatch()
        with timing.span("scene generation"):
            scene = dataset.scene(split, index)
        frames, sizes, points, skipped = [], [], [], []
        for frame in scene.frames:
            prepared = self.prepare_frame(frame)
            if prepared is None:
                skipped.append(frame.frame_id)
                continue
            data = frame_to_bytes(prepared)
            write_cache_file(frame_step(folder, frame.frame_id).path, data)
            frames.append(frame.frame_id)
            sizes.append(len(data))
            points.append(len(prepared.xyz))
        seconds = clock.seconds
        record = {"frames": frames, "sizes": sizes, "points": points, "skipped_no_depth": skipped, "seconds": seconds}
        self._scene_step(dataset, split, index, folder).save(json.dumps(record).encode("utf-8"), seconds)
        return record

    def load_or_recompute(self, dataset, split: str, frame_id: str, folder: pathlib.Path) -> PreparedFrame:
        """The prepared frame ``frame_id``; a file that fails its checksum or validation is reported and
        its scene prepared again."""
        step = frame_step(folder, frame_id)
        frame = step.load(lambda data: decode_frame(data, frame_id))
        if frame is None:
            self._prepare_scene_of(dataset, split, frame_id, folder)
            frame = step.load(lambda data: decode_frame(data, frame_id))
            if frame is None:
                raise DataError(f"{step.path}: prepared again, still unreadable (is the disk failing?)")
        return frame

    def _prepare_scene_of(self, dataset, split: str, frame_id: str, folder: pathlib.Path) -> None:
        """Prepare again the scene that holds ``frame_id`` (after its file failed validation)."""
        for index in range(dataset.num_scenes(split)):
            step = self._scene_step(dataset, split, index, folder)
            done = step.load(_decode_manifest, quiet=True)
            if done is not None and frame_id in done["frames"]:
                with step.claim():
                    self._prepare_scene(dataset, split, index, folder)
                return
        raise DataError(f"{folder}: no scene manifest lists frame {frame_id!r}; delete the folder to prepare "
                        "the split again")

    def _groups(self, dataset, split: str, folder: pathlib.Path, frame_ids: list[str]) -> dict[str, np.ndarray]:
        """The k-means groups of the split's region features (the groups step's computation)."""
        features = [self.load_or_recompute(dataset, split, f, folder).region_features for f in frame_ids]
        all_features = np.concatenate(features).astype(np.float32)
        if len(all_features) == 0:
            raise DataError(f"prepare: the mask source found no region in any frame of {folder.name} "
                            "(pretraining needs regions to distil)")
        rng = np.random.default_rng(self.seed)
        sample = all_features
        if len(all_features) > self.max_kmeans_regions:
            sample = all_features[rng.choice(len(all_features), self.max_kmeans_regions, replace=False)]
        centroids, _ = cluster_region_features(sample, self.num_groups, self.seed)
        counts = group_counts(assign_groups(torch.from_numpy(all_features), centroids).numpy(), len(centroids))
        return {"centroids": centroids.astype(np.float32), "counts": counts, "weights": group_weights(counts)}


class PreparedSplit:
    """The prepared frames of a split, read lazily from the cache, with the re-weighting groups."""

    def __init__(self, folder, frame_ids, groups, preparation, dataset, split, key: str = "",
                 most_points: int | None = None):
        self.folder = pathlib.Path(folder)
        self.most_points = most_points  # the most points any frame kept (None: not recorded)
        self.key = key or self.folder.name  # the content key of the frames and groups (data_key)
        self.frame_ids = list(frame_ids)
        self.groups = groups
        self._preparation, self._dataset, self._split = preparation, dataset, split
        # A frame's region groups depend on the centroids, so the memory key names them too.
        self._groups_key = fingerprint(np.asarray(groups["centroids"]))

    def __len__(self) -> int:
        return len(self.frame_ids)

    def __getitem__(self, i: int) -> PreparedFrame:
        """The ``i``-th prepared frame with its regions' groups; frames read once stay in this process's
        memory (read-only, within a byte budget, see ``infra.memory_cache``)."""
        frame_id = self.frame_ids[i]
        path = self.folder / "frames" / f"{frame_id}.npz"
        key = file_key(path, self._groups_key)
        frame = _LOADED.get(key)
        if frame is not None:
            return frame
        frame = self._preparation.load_or_recompute(self._dataset, self._split, frame_id, self.folder)
        key = file_key(path, self._groups_key)
        features = torch.from_numpy(frame.region_features.astype(np.float32))
        frame.region_groups = assign_groups(features, self.groups["centroids"]).numpy()
        return _LOADED.put(key, freeze_arrays(frame), array_bytes(frame))

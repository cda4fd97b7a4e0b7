"""Offline preparation (DESIGN 2.2), a method step: per frame the masks' regions, the teacher's region features
and a sample of the frame's points; per split the re-weighting groups.

``FramePreparation.prepare(dataset, split, cache_root)`` computes, once, for every frame of a split: the mask
label map, the teacher's region features (the mean of the upsampled patch features inside each region,
stored float16) and a fixed-size sample of the frame's back-projected points with their colour and region.
A scene's frames are stored together in one file (``methods.prepared_scenes``). It then clusters the
split's region features into groups and counts regions per group, for the group-balanced re-weighting
(``methods.region_groups``, DESIGN 2.6), in memory that does not grow with the split.

Every process that runs a table prepares: scenes are claimed one at a time by file locks
(``infra.cached_step.make_missing``), so processes of one machine, torchrun ranks and machines sharing a
results folder split them, and a process that finds a scene claimed waits on its file, never on a
collective. ``shard=(i, n)`` prepares only the scenes whose index is i modulo n and no groups (array jobs);
the shards' union is a single run's files, and a later ``prepare`` without a shard finishes the groups.

The frames folder is keyed by the content fingerprint of the dataset and of the whole preparation but
``GROUPS_ONLY`` (so a K ablation reuses the frames); the groups file and ``data_key`` (what pretraining
stages are keyed by) cover the whole preparation. Weights count by their content, not their path, and
speed-only settings not at all (``infra.fingerprint``). Work is resumable scene by scene: every scene file
and groups file is written atomically with a checksum; a file that fails its checksum or validation on
load is prepared again with a warning, never used. A frame that cannot be prepared (an unreadable image, no
valid depth, no region) is skipped with one line naming it, counted and listed (``skipped_frames.txt``).
"""
from __future__ import annotations

import io
import pathlib
import zlib

import gin
import numpy as np
import torch

from datasets.geometry import backproject
from datasets.types import Frame
from infra import progress, timing
from infra.cached_step import CachedStep, make_missing
from infra.checks import check_choice, check_integer
from infra.errors import DataError, HarnessError
from infra.fingerprint import fingerprint
from infra.io import read_cache_meta
from infra.machine import available_memory_bytes
from infra.memory_cache import ByteBudgetCache, array_bytes, file_key, freeze_arrays
from methods.frame_pipeline import prepare_frames
from methods.preparation_progress import PHASES, PreparationProgress, preparation_cost, write_skipped
from methods.prepared_scenes import FORMAT, PreparedFrame, pack_scene, unpack_scene
from methods.region_groups import RegionSample, cluster_region_features
from methods.regions import region_features
from methods.reweighting import assign_groups, group_counts, group_weights

GROUPS_FIT = "sklearn-kmeans-lloyd"  # part of the groups' key: another fit is another file
_SKIPPABLE = (DataError, OSError, ValueError, EOFError)  # a broken frame's errors; the others are bugs
_LOADED = ByteBudgetCache()  # prepared scenes this process has read (with their groups)


@gin.register
class FramePreparation:
    """The prepare step: mask source + 2D teacher + point sampling, cached on disk.

    Args:
      mask_source: called as ``mask_source(frame)`` -> (H, W) int32 labels (e.g. ``@SamMaskSource()``).
      teacher: called as ``teacher(frame)`` -> (C, h, w) patch features (e.g. ``@Dinov2Teacher()``).
      points_per_frame: points sampled per frame without replacement (all of them when fewer) [prior: 20,000].
      num_groups: k-means groups over the split's region features for re-weighting [choice: 32].
      seed: seed of the point sampling and of k-means.
      max_kmeans_regions: the k-means is fitted on a seeded sample of at most this many region features; all
        regions are then assigned to their nearest centroid for the counts.
      keep_label_maps: store each frame's label map and its points' pixels too [choice: off; nothing
        pretraining reads needs them, and they are most of a frame's bytes].
      overlap: read the next frame and make a frame's points and teacher features in a worker thread while
        the next frame's masks are made (``methods.frame_pipeline``) [choice: on; the same bytes either way].
    """

    # Parameters that change the re-weighting groups only, not the prepared frames.
    GROUPS_ONLY = ("num_groups", "max_kmeans_regions")
    # Parameters that change only how fast the same files are made: in no key.
    SPEED_ONLY = ("overlap",)

    def __init__(self, mask_source=gin.REQUIRED, teacher=gin.REQUIRED, points_per_frame: int = 20_000,
                 num_groups: int = 32, seed: int = 0, max_kmeans_regions: int = 200_000,
                 keep_label_maps: bool = False, overlap: bool = True):
        check_integer("FramePreparation.points_per_frame", points_per_frame, 1)
        check_integer("FramePreparation.num_groups", num_groups, 1)
        check_integer("FramePreparation.seed", seed)
        check_integer("FramePreparation.max_kmeans_regions", max_kmeans_regions, 1)
        check_choice("FramePreparation.keep_label_maps", keep_label_maps, (True, False))
        check_choice("FramePreparation.overlap", overlap, (True, False))
        self.mask_source = mask_source
        self.teacher = teacher
        self.points_per_frame = int(points_per_frame)
        self.num_groups = int(num_groups)
        self.seed = int(seed)
        self.max_kmeans_regions = int(max_kmeans_regions)
        self.keep_label_maps = keep_label_maps
        self.overlap = overlap
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
        """The folder of this configuration's cache for one split: keyed by the dataset, every parameter but
        ``GROUPS_ONLY`` and the storage format."""
        frames_config = {k: v for k, v in vars(self).items() if k not in self.GROUPS_ONLY + self.SPEED_ONLY}
        key = fingerprint(dataset, type(self).__name__, frames_config, FORMAT)
        return pathlib.Path(cache_root) / "prepare" / f"{dataset.info.name}-{split}-{key}"

    def data_key(self, dataset, split: str, cache_root: pathlib.Path) -> str:
        """The content key of the prepared split and its groups (the whole preparation), which the
        pretraining stages on it are keyed by."""
        return f"{self.cache_dir(dataset, split, cache_root).name}-{self._groups_key()}"

    def cache_state(self) -> dict:
        """What the prepared files depend on (``infra.fingerprint``): every public parameter but ``SPEED_ONLY``."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and k not in self.SPEED_ONLY}

    def _groups_key(self) -> str:
        return fingerprint(self, GROUPS_FIT, length=12)

    def prepare_frame(self, frame: Frame, phases: dict[str, float] | None = None) -> PreparedFrame:
        """Masks, region features and sampled points of one frame; ``DataError`` when it has no valid depth or
        no region. ``phases`` (if given) gets the seconds of each phase added."""
        phases = {} if phases is None else phases
        return self._finish_frame(frame, self._frame_masks(frame, phases), phases)

    def _frame_masks(self, frame: Frame, phases: dict[str, float]) -> np.ndarray:
        self.check_frame_memory(frame.hw)
        clock = timing.Stopwatch()
        label_map = self.mask_source(frame)
        phases["masks"] = phases.get("masks", 0.0) + clock.lap()
        for part, seconds in (self.mask_source.frame_phases() if hasattr(self.mask_source, "frame_phases")
                              else {}).items():
            phases[part] = phases.get(part, 0.0) + seconds
        return label_map

    def _finish_frame(self, frame: Frame, label_map: np.ndarray, phases: dict[str, float]) -> PreparedFrame:
        clock = timing.Stopwatch()
        xyz, pix = backproject(frame.depth, frame.intrinsics, frame.pose)
        if len(xyz) == 0:
            raise DataError("no valid depth")
        rng = np.random.default_rng([self.seed, zlib.crc32(frame.frame_id.encode())])
        if len(xyz) > self.points_per_frame:
            keep = np.sort(rng.choice(len(xyz), self.points_per_frame, replace=False))
            xyz, pix = xyz[keep], pix[keep]
        phases["points"] = phases.get("points", 0.0) + clock.lap()
        region_ids, features = region_features(self.teacher(frame), label_map)
        phases["teacher"] = phases.get("teacher", 0.0) + clock.lap()
        if len(region_ids) == 0:
            raise DataError("the mask source found no region")
        return PreparedFrame(
            frame_id=frame.frame_id, xyz=xyz.astype(np.float32), rgb=frame.rgb[pix[:, 0], pix[:, 1]],
            region=label_map[pix[:, 0], pix[:, 1]].astype(np.int32), region_ids=np.asarray(region_ids, np.int32),
            region_features=np.asarray(features, np.float32).astype(np.float16),
            label_map=label_map if self.keep_label_maps else None,
            pixel=pix.astype(np.int32) if self.keep_label_maps else None)

    def prepare(self, dataset, split: str, cache_root: pathlib.Path,
                shard: tuple[int, int] | None = None) -> PreparedSplit | None:
        """Prepare every frame of ``split`` (resuming earlier work), then the re-weighting groups; with
        ``shard = (i, n)`` only the scenes of index i modulo n, and nothing more (returns None)."""
        folder = self.cache_dir(dataset, split, cache_root)
        (folder / "scenes").mkdir(parents=True, exist_ok=True)
        scenes = range(dataset.num_scenes(split))
        if shard is not None:
            scenes = [i for i in scenes if i % shard[1] == shard[0]]
        with timing.span("preparation"):
            manifests = {i: done for i in scenes if (done := self._finished_scene(dataset, split, i, folder))}
            todo = [i for i in scenes if i not in manifests]
            meter = PreparationProgress(f"{dataset.info.name}/{split}", len(todo))
            made, by_others = make_missing(
                progress.bar(todo, desc=f"prepare {dataset.info.name}/{split}"),
                lambda i: self._scene_step(dataset, split, i, folder),
                lambda i: self._finished_scene(dataset, split, i, folder, quiet=True),
                lambda i: meter.done(self._prepare_scene(dataset, split, i, folder)))
            manifests.update(made)
        if todo:
            meter.summary(by_others)
        if shard is not None:
            return None
        ordered = [(dataset.scene_id(split, i), manifests[i]) for i in sorted(manifests)]
        write_skipped(folder, ordered)
        if not any(done["frames"] for _, done in ordered):
            raise DataError(f"prepare: no frame of {dataset.info.name}/{split} could be prepared (see "
                            f"{folder / 'skipped_frames.txt'}; pretraining needs RGB-D frames with regions)")
        split_files = PreparedSplit(folder, ordered, None, self, dataset, split,
                                    key=self.data_key(dataset, split, cache_root))
        with timing.span("preparation"):
            split_files.groups = self._groups_step(folder).get(lambda: self._groups(split_files), _groups_bytes,
                                                               _decode_groups)
        return split_files

    def _scene_step(self, dataset, split: str, index: int, folder: pathlib.Path) -> CachedStep:
        """A scene's file of prepared frames, its record holding its manifest: the step of its frames."""
        scene_id = dataset.scene_id(split, index)
        return CachedStep(folder / "scenes" / f"{scene_id}.npz", name=f"prepare/{folder.name}/{scene_id}",
                          lock=folder / "locks" / f"{scene_id}.lock", what="prepared scene",
                          redo="preparing it again")

    def _groups_step(self, folder: pathlib.Path) -> CachedStep:
        path = folder / f"groups-k{self.num_groups}-{self._groups_key()}.npz"
        return CachedStep(path, name=f"prepare/{folder.name}/{path.stem}", lock=folder / "locks" / "groups.lock",
                          what="groups file", redo="recomputing")

    def _finished_scene(self, dataset, split: str, index: int, folder: pathlib.Path,
                        quiet: bool = False) -> dict | None:
        """The manifest (``frames``, ``points`` each kept, ``skipped``, ``phases``) of a scene whose file is
        complete (its size is the one recorded; its checksum is checked when it is first read), else None."""
        step = self._scene_step(dataset, split, index, folder)
        record = read_cache_meta(step.path)
        if record is None or not isinstance(record.get("frames"), list):
            return None
        try:
            complete = step.path.stat().st_size == record.get("bytes")
        except FileNotFoundError:
            complete = False
        if not complete:
            if not quiet:
                print(f"warning: prepared scene {step.path}: missing or not of its recorded size; preparing it again")
            return None
        step.report(record.get("seconds"))
        return record

    def _prepare_scene(self, dataset, split: str, index: int, folder: pathlib.Path) -> dict:
        clock, phases = timing.Stopwatch(), dict.fromkeys(PHASES, 0.0)
        with timing.span("scene generation"):
            scene = dataset.scene(split, index)
        phases["read"] += clock.lap()
        frames, skipped = prepare_frames(scene.frames, scene.scene_id, self._frame_masks, self._finish_frame,
                                         _SKIPPABLE, self.overlap, phases)
        data = pack_scene(frames, self.keep_label_maps)
        manifest = {"frames": [f.frame_id for f in frames], "points": [len(f.xyz) for f in frames],
                    "skipped": skipped, "phases": phases}
        self._scene_step(dataset, split, index, folder).save(data, clock.seconds, extra=manifest)
        return {**manifest, "bytes": len(data)}

    def _groups(self, split: PreparedSplit) -> dict[str, np.ndarray]:
        """The k-means groups of the split's region features (``methods.region_groups``), scenes streamed."""
        sample = RegionSample(self.max_kmeans_regions, self.seed)
        for frames in split.scene_frames():
            for frame in frames:
                sample.add(frame.region_features)
        rows = sample.rows()
        if len(rows) == 0:
            raise DataError(f"prepare: the mask source found no region in any frame of {split.folder.name} "
                            "(pretraining needs regions to distil)")
        fit = cluster_region_features(rows, self.num_groups, self.seed)
        counts = np.zeros(len(fit.centroids), np.int64)
        for frames in split.scene_frames():  # every region, one scene at a time
            features = [f.region_features for f in frames if len(f.region_features)]
            if features:
                chunk = torch.from_numpy(np.concatenate(features).astype(np.float32))
                counts += group_counts(assign_groups(chunk, fit.centroids).numpy(), len(fit.centroids))
        progress.step(f"groups {split.folder.name[:40]}",
                      f"k-means of {len(rows)} of {sample.seen} regions into {len(fit.centroids)} groups: "
                      f"{fit.iterations} iterations, inertia {fit.inertia:.4g}")
        return {"centroids": fit.centroids.astype(np.float32), "counts": counts, "weights": group_weights(counts),
                "iterations": np.array(fit.iterations), "inertia": np.array(fit.inertia),
                "regions": np.array(sample.seen)}


def _decode_groups(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data)) as npz:
        return {k: npz[k] for k in npz.files}


def _groups_bytes(groups: dict[str, np.ndarray]) -> bytes:
    np.savez(buffer := io.BytesIO(), **groups)
    return buffer.getvalue()


class PreparedSplit:
    """The prepared frames of a split, read lazily scene by scene from the cache, with the re-weighting
    groups (``groups`` is None until ``FramePreparation.prepare`` sets it)."""

    def __init__(self, folder, manifests: list[tuple[str, dict]], groups, preparation, dataset, split, key: str = ""):
        self.folder = pathlib.Path(folder)
        self.key = key or self.folder.name  # the content key of the frames and groups (data_key)
        self.groups = groups
        self.manifests = manifests  # (scene id, manifest) of every scene, in order
        self.frame_ids = [f for _, done in manifests for f in done["frames"]]
        self._where = [(s, k) for s, (_, done) in enumerate(manifests) for k in range(len(done["frames"]))]
        self._preparation, self._dataset, self._split = preparation, dataset, split
        counts = [n for _, done in manifests for n in done.get("points", [])]
        self.most_points = max(counts) if counts else None  # the most points any frame kept

    @property
    def groups(self) -> dict[str, np.ndarray] | None:
        return self._groups

    @groups.setter
    def groups(self, groups: dict[str, np.ndarray] | None) -> None:
        # The centroids' fingerprint keys the grouped scenes in memory: computed once here, not per frame read.
        self._groups = groups
        self._centroids_key = None if groups is None else fingerprint(np.asarray(groups["centroids"]))

    def cost(self) -> dict[str, float]:
        """Seconds a frame per phase, bytes a frame and frames skipped, whichever process prepared them."""
        return preparation_cost(self.manifests)

    def __len__(self) -> int:
        return len(self.frame_ids)

    def __getitem__(self, i: int) -> PreparedFrame:
        """The ``i``-th prepared frame with its regions' groups; scenes read once stay in this process's memory
        (read-only, within a byte budget, see ``infra.memory_cache``)."""
        scene, position = self._where[i]
        return self._grouped_scene(scene)[position]

    def scene_frames(self):
        """Every scene's frames in order, without groups (what the groups are computed from), read one at a
        time and not kept: the groups step's memory does not grow with the split."""
        for scene in range(len(self.manifests)):
            yield self._read_scene(scene)

    def _grouped_scene(self, scene: int) -> list[PreparedFrame]:
        path = self._step(scene).path
        frames = _LOADED.get(file_key(path, self._centroids_key))
        if frames is None:
            frames = self._read_scene(scene)
            for frame in frames:
                features = torch.from_numpy(frame.region_features.astype(np.float32))
                frame.region_groups = assign_groups(features, self.groups["centroids"]).numpy()
            # keyed as the file is after the read (prepared again if it was damaged)
            frames = _LOADED.put(file_key(path, self._centroids_key), [freeze_arrays(f) for f in frames],
                                 sum(array_bytes(f) for f in frames))
        return frames

    def _read_scene(self, scene: int) -> list[PreparedFrame]:
        """A scene's frames from its file; a file changed since written or unreadable is prepared again."""
        done, step = self.manifests[scene][1], self._step(scene)
        frames = step.load(lambda data: unpack_scene(data, done["frames"]))
        if frames is None:  # changed since written, or unreadable (said by load): prepared again, then read
            with step.claim():
                self._preparation._prepare_scene(self._dataset, self._split, self._index(scene), self.folder)
            frames = step.load(lambda data: unpack_scene(data, done["frames"]))
            if frames is None:
                raise DataError(f"{step.path}: prepared again, still unreadable (is the disk failing?)")
        return frames

    def _index(self, scene: int) -> int:
        if not hasattr(self, "_indices"):  # the dataset's index of each prepared scene
            dataset, split = self._dataset, self._split
            self._indices = {dataset.scene_id(split, i): i for i in range(dataset.num_scenes(split))}
        return self._indices[self.manifests[scene][0]]

    def _step(self, scene: int) -> CachedStep:
        return self._preparation._scene_step(self._dataset, self._split, self._index(scene), self.folder)

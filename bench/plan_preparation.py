"""What a plan measures of the offline preparation: seconds, bytes and regions a frame, on the real code path.

The pretraining split's first scene is read (generated, for the synthetic benchmark), then
``FramePreparation.prepare_frame`` runs on its frames (masks, teacher, points; ``time_preparation`` says which
and at what size); the prepared frames are packed as a scene file (bytes a frame) and read back (seconds a
frame, what the groups step streams twice). Where scene files are prepared already (``--prepare``), their
records and frames are used instead and nothing is prepared (``prepared_timing``).
"""
from __future__ import annotations

import dataclasses
import math
import pathlib
import statistics

import numpy as np

from bench.plan_timing import Busy, one_cpu_thread
from infra.errors import DataError
from infra.io import read_cache_file, read_cache_meta
from infra.timing import Stopwatch
from methods.prepared_scenes import pack_scene, unpack_scene


@dataclasses.dataclass
class PreparationTiming:
    """Seconds and bytes of preparing the pretraining frames, measured on the split's first scene."""

    read_seconds: float  # reading (or generating) one scene
    frame_seconds: float  # masks, teacher features and points of one full-size frame
    first_frame_extra: float  # what the first frame of a process costs more (loading the models)
    timed: list[tuple[int, float]]  # (pixels, seconds) of the first frame at each size, the warm-up first
    full_frames: int  # frames prepared at full size (the figure is their mean)
    frames_skipped: int
    bytes_per_frame: float
    decode_seconds_per_frame: float  # reading a prepared frame back (the groups step streams them twice)
    regions_per_frame: float
    feature_dim: int
    frames_per_scene: float
    phases: dict[str, float]  # of the largest timed frame
    frames: list  # the prepared frames of the largest timed size, what the stages' steps are timed on
    from_files: int = 0  # scene files already prepared that the figures come from (then nothing was timed)

    @property
    def how(self) -> str:
        if self.from_files:
            return f"from the {self.from_files} scenes prepared already"
        sizes = ", ".join(f"{p:,} px {t:.3g} s" for p, t in self.timed)
        more = f"; {self.full_frames} full frames" if self.full_frames > 1 else \
            ("" if self.full_frames else "; extrapolated to full size")
        return f"first frame at {sizes}{more}"


WARM_UP_PIXELS = 1_024  # the first frame a process prepares pays the models' loading: timed on a small one
SMALL_PIXELS = 4_096
MORE_FRAMES = 16  # full-size frames prepared, time allowing: the stages' batches are made of them


def time_preparation(preparation, dataset, split: str, budget: float) -> PreparationTiming:
    """Time ``preparation`` on the frames of ``split``, writing nothing.

    The first frame of the first scene is prepared three times: a warm-up at about ``WARM_UP_PIXELS`` (the
    models load), at about ``SMALL_PIXELS``, then at full size when a full frame would fit ``budget`` at the
    small frame's seconds a pixel, else at the largest size that would. Without a full-size frame, its seconds
    are the line through the two later sizes' (pixels, seconds), extrapolated: SAM's image encoder and prompt
    decoder and the teacher's network run at a fixed input size, its masks' upscaling and post-processing,
    the label map, the region features and the points grow with the pixels. With one, more frames follow (the
    scene's next frames, then the next scenes') while ``budget`` lasts, up to ``MORE_FRAMES``: their mean is
    the figure and they make the stages' batches. ``DataError`` when no frame can be prepared."""
    clock = Stopwatch()
    scene = dataset.scene(split, 0)
    reads, counts = [clock.seconds], [len(scene.frames)]
    if not scene.frames:
        raise DataError(f"plan: scene {scene.scene_id} of {dataset.info.name}/{split} has no frame; expected the "
                        "pretraining split's first scene to have one to time the preparation on")
    frame = scene.frames[0]
    full = frame.hw[0] * frame.hw[1]
    timed, skipped, prepared, phases = [], 0, [], {}
    on_cpu = all(one_cpu_thread(str(getattr(part, "device", "cpu")))
                 for part in (preparation.mask_source, preparation.teacher))
    for target in (WARM_UP_PIXELS, SMALL_PIXELS, None):
        if target is None:  # the largest size the budget allows at the small frame's seconds a pixel
            pixels, seconds = timed[-1]
            target = full if seconds * full / pixels <= budget else max(2 * pixels, int(budget * pixels / seconds))
        stride = max(1, math.ceil(math.sqrt(full / target)))
        phases = {}
        lap = Busy(cpu=on_cpu)
        try:
            prepared = [preparation.prepare_frame(_downscaled(frame, stride), phases)] or prepared
        except DataError:  # a frame the run skips costs its masks all the same
            skipped += 1
        timed.append((math.ceil(frame.hw[0] / stride) * math.ceil(frame.hw[1] / stride), lap.lap()))
        if stride == 1 and target is not WARM_UP_PIXELS:
            break
    (p1, t1), (p2, t2) = timed[-2], timed[-1]
    slope = max(0.0, (t2 - t1) / (p2 - p1)) if p2 > p1 else 0.0
    at_warm_up = max(0.0, t2 + slope * (timed[0][0] - p2))
    full_size = [t2] if p2 == full else []
    scenes, index, position = dataset.num_scenes(split), 0, 1
    while full_size and len(full_size) < MORE_FRAMES and clock.seconds < budget:
        if position >= len(scene.frames):
            index, position = index + 1, 0
            if index >= scenes:
                break
            lap = Stopwatch()
            scene = dataset.scene(split, index)
            reads.append(lap.seconds)
            counts.append(len(scene.frames))
            continue
        lap = Busy(cpu=on_cpu)
        try:
            prepared.append(preparation.prepare_frame(scene.frames[position], {}))
        except DataError:
            skipped += 1
        full_size.append(lap.lap())
        position += 1
    if not prepared:
        raise DataError(f"plan: no frame of {dataset.info.name}/{split} could be prepared ({skipped} tried); "
                        "expected one to time the pretraining steps on")
    per_frame = statistics.mean(full_size) if full_size else max(t2, t2 + slope * (full - p2))
    data = pack_scene(prepared, preparation.keep_label_maps)
    unpack_scene(data)  # the first read pays numpy's and zipfile's one-off costs
    lap = Stopwatch()
    unpack_scene(data)
    decode = lap.seconds
    kept = statistics.mean(len(f.xyz) for f in prepared)
    # A frame timed small keeps fewer points than a full one: its bytes and reading scale to those a full one keeps.
    points = 1.0 if full_size else min(preparation.points_per_frame, kept * full / p2) / max(1.0, kept)
    return PreparationTiming(
        read_seconds=statistics.mean(reads), frame_seconds=per_frame,
        first_frame_extra=max(0.0, timed[0][1] - at_warm_up), timed=timed, full_frames=len(full_size),
        frames_skipped=skipped, bytes_per_frame=len(data) / len(prepared) * points,
        decode_seconds_per_frame=decode / len(prepared) * points,
        regions_per_frame=statistics.mean(len(f.region_ids) for f in prepared),
        feature_dim=int(prepared[0].region_features.shape[1]), frames_per_scene=statistics.mean(counts),
        phases=phases, frames=prepared)


def prepared_timing(files: list[pathlib.Path], preparation) -> PreparationTiming:
    """The preparation's figures from scene files already prepared (``files``, complete): seconds and bytes a
    frame from their records (whichever process made them, the scene reads included), their frames (up to
    ``MORE_FRAMES``, read back and timed) for the stages' batches; nothing is prepared."""
    records = [read_cache_meta(path) for path in files]
    frames = sum(len(r["frames"]) + len(r.get("skipped") or {}) for r in records)
    prepared, lap = [], Stopwatch()
    for path, record in zip(files, records):
        if len(prepared) >= MORE_FRAMES:
            break
        prepared += unpack_scene(read_cache_file(path)[0], record["frames"])
    if not prepared:
        raise DataError(f"plan: the prepared scenes under {files[0].parent} hold no frame; expected one to time "
                        "the pretraining steps on")
    return PreparationTiming(
        read_seconds=0.0, frame_seconds=sum(r.get("seconds") or 0.0 for r in records) / max(1, frames),
        first_frame_extra=0.0, timed=[], full_frames=0, frames_skipped=0,
        bytes_per_frame=sum(r["bytes"] for r in records) / max(1, frames),
        decode_seconds_per_frame=lap.seconds / len(prepared),
        regions_per_frame=statistics.mean(len(f.region_ids) for f in prepared),
        feature_dim=int(prepared[0].region_features.shape[1]), frames_per_scene=frames / len(records),
        phases={}, frames=prepared, from_files=len(files))


def _downscaled(frame, stride: int):
    """``frame`` at one pixel in ``stride`` along each axis, its intrinsics scaled to match (pixel centres at
    integer coordinates: (u, v) of the small image is (stride u, stride v) of the frame)."""
    if stride == 1:
        return frame
    scale = np.diag([1.0 / stride, 1.0 / stride, 1.0])
    return dataclasses.replace(
        frame, rgb=np.ascontiguousarray(frame.rgb[::stride, ::stride]),
        depth=np.ascontiguousarray(frame.depth[::stride, ::stride]),
        intrinsics=scale @ np.asarray(frame.intrinsics, np.float64),
        instance=None if frame.instance is None else np.ascontiguousarray(frame.instance[::stride, ::stride]),
        semantic=None if frame.semantic is None else np.ascontiguousarray(frame.semantic[::stride, ::stride]))


def read_scene(dataset, split: str) -> tuple[object, float]:
    """The first scene of ``split`` and the seconds it took to read (or generate), nothing cached."""
    clock = Stopwatch()
    scene = dataset.scene(split, 0)
    return scene, clock.seconds


def frames_in_split(dataset, split: str, timed: PreparationTiming) -> tuple[int, str]:
    """Frames ``split`` holds and how that is known: the dataset's own count, else the first scene's times
    the number of scenes (an estimate)."""
    scenes = dataset.num_scenes(split)
    per_scene = getattr(dataset, "frames_per_scene", None)
    if isinstance(per_scene, int):
        return scenes * per_scene, f"{scenes} scenes x {per_scene} frames"
    return int(math.ceil(scenes * timed.frames_per_scene)), \
        f"{scenes} scenes x {timed.frames_per_scene:g} frames (the mean of the scenes read)"

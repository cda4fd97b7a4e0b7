"""Prepared frames at the paper's scale: bytes a frame, files per thousand frames, the groups step's memory."""
from __future__ import annotations

import io
import tracemalloc

import numpy as np

from methods.prepared_scenes import PreparedFrame, pack_scene, unpack_scene
from tests.methods.test_preparation import _dataset, _preparation

# The paper's shape (Bridge3D's preparation, DESIGN 2.2): 640 x 480 frames, 20,000 points a frame, about 100
# regions of 768-d features. ScanNet's 78,000 frames come from its 1,201 training scans: 65 a scan.
HEIGHT, WIDTH, POINTS, REGIONS, CHANNELS, FRAMES_PER_SCAN = 480, 640, 20_000, 100, 768, 65


def _paper_frame(rng: np.random.Generator, k: int) -> PreparedFrame:
    """A stand-in frame of the paper's shape: random content, the shapes and dtypes the preparation writes."""
    label_map = rng.integers(0, REGIONS + 1, (HEIGHT, WIDTH)).astype(np.int32)
    pixel = np.stack([rng.integers(0, HEIGHT, POINTS), rng.integers(0, WIDTH, POINTS)], 1).astype(np.int32)
    return PreparedFrame(
        frame_id=f"scene0000_00-{k:06d}", xyz=rng.normal(size=(POINTS, 3)).astype(np.float32),
        rgb=rng.integers(0, 256, (POINTS, 3)).astype(np.uint8), region=label_map[pixel[:, 0], pixel[:, 1]],
        region_ids=np.arange(1, REGIONS + 1, dtype=np.int32),
        region_features=rng.normal(size=(REGIONS, CHANNELS)).astype(np.float16), label_map=label_map, pixel=pixel)


def _layout_of_27f2a10(frame: PreparedFrame) -> int:
    """Bytes of one frame as the harness stored it before (27f2a10): an uncompressed .npz a frame with the
    label map and every point's pixel, the region index in int32."""
    buffer = io.BytesIO()
    np.savez(buffer, frame_id=np.array(frame.frame_id), xyz=frame.xyz, rgb=frame.rgb, pixel=frame.pixel,
             region=frame.region, region_ids=frame.region_ids, region_features=frame.region_features,
             label_map=frame.label_map)
    return len(buffer.getvalue())


def test_a_frame_of_the_papers_shape_takes_under_half_a_megabyte_and_a_third_of_the_old_layout():
    rng = np.random.default_rng(0)
    frames = [_paper_frame(rng, k) for k in range(4)]
    packed = pack_scene(frames, keep_label_maps=False)
    per_frame = len(packed) / len(frames)
    old = _layout_of_27f2a10(frames[0])
    assert per_frame <= 0.5e6, per_frame
    assert per_frame <= old / 3, (per_frame, old)
    assert 1.9e6 < old < 2.0e6  # the 1.96 MB a frame the issue measured
    read = unpack_scene(packed, [f.frame_id for f in frames])
    for ours, theirs in zip(read, frames):
        for field in ("xyz", "rgb", "region", "region_ids", "region_features"):
            assert np.array_equal(getattr(ours, field), getattr(theirs, field)), field
        assert ours.label_map is None and ours.pixel is None


def test_scannet_sized_scenes_need_at_most_50_files_per_1000_frames(tmp_path):
    dataset = _dataset(num_train=4, frames_per_scene=FRAMES_PER_SCAN, image_hw=(16, 24))
    split = _preparation(points_per_frame=64).prepare(dataset, "train", tmp_path)
    files = [p for p in split.folder.rglob("*") if p.is_file()]
    assert len(split) == 4 * FRAMES_PER_SCAN
    # two a scene (its frames, its record) and three a split (the groups, their record, the groups' lock): the
    # scenes' locks are removed once their files are written
    assert len(files) == 2 * 4 + 3, sorted(p.name for p in files)
    assert len(files) / len(split) * 1000 <= 50


def _groups_peak(tmp_path, scenes: int) -> tuple[int, int]:
    """The groups step's peak of traced (numpy and Python) memory over ``scenes`` prepared scenes, and the
    regions it saw."""
    dataset = _dataset(num_train=scenes, frames_per_scene=4, image_hw=(48, 64))
    preparation = _preparation(max_kmeans_regions=60)
    split = preparation.prepare(dataset, "train", tmp_path)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        groups = preparation._groups(split)
        return tracemalloc.get_traced_memory()[1], int(groups["regions"])
    finally:
        tracemalloc.stop()


def test_the_groups_steps_memory_does_not_grow_with_the_frames(tmp_path):
    one, regions_one = _groups_peak(tmp_path / "1x", 6)
    four, regions_four = _groups_peak(tmp_path / "4x", 24)
    assert regions_one > 60 and regions_four > 3 * regions_one  # both sampled: 4x the regions streamed
    assert four <= 1.2 * one, (one, four)

"""Preparation with the work around the masks overlapped (methods/frame_pipeline.py): the same files, the same
frames skipped in the same order, the worker really used, and the option out of every key."""
from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest

from datasets.synthetic import SyntheticIndoor
from infra.errors import DataError
from infra.io import read_cache_meta
from methods.frame_pipeline import prepare_frames
from methods.mask_sources import RenderedMaskSource
from methods.preparation import FramePreparation
from methods.teachers import SimulatedTeacher


class _BrokenFrames:
    """A scene's frames read lazily, some of which fail: unreadable (OSError) at ``unreadable``, no depth at
    ``no_depth``; frames are read from other threads than the caller's when overlapped."""

    def __init__(self, frames, unreadable=(), no_depth=()):
        self.frames, self.unreadable, self.no_depth = frames, set(unreadable), set(no_depth)
        self.readers: set[str] = set()

    def __len__(self):
        return len(self.frames)

    def __getitem__(self, index):
        self.readers.add(threading.current_thread().name)
        if index in self.unreadable:
            raise OSError(f"frame {index}: truncated JPEG")
        frame = self.frames[index]
        if index in self.no_depth:
            frame = dataclasses.replace(frame, depth=np.zeros_like(frame.depth))
        return frame


def _setup(overlap: bool, **broken):
    dataset = SyntheticIndoor(num_train=1, num_val=1, frames_per_scene=6, image_hw=(48, 64))
    preparation = FramePreparation(RenderedMaskSource(split_prob=0.3, seed=2), SimulatedTeacher(dim=16, patch_size=8),
                                   points_per_frame=300, num_groups=3, overlap=overlap)
    original = dataset.scene
    frames = _BrokenFrames(original("train", 0).frames, **broken)
    dataset.scene = lambda split, index: dataclasses.replace(original(split, index), frames=frames)
    return dataset, preparation, frames


@pytest.mark.parametrize("broken", [{}, {"unreadable": (1,), "no_depth": (3, 5)}, {"unreadable": (0, 5)}])
def test_overlapped_preparation_writes_the_same_bytes_and_skips_the_same_frames(tmp_path, broken, capsys):
    runs = {}
    for overlap in (False, True):
        dataset, preparation, frames = _setup(overlap, **broken)
        split = preparation.prepare(dataset, "train", tmp_path / str(overlap))
        scene = split.folder / "scenes" / f"{dataset.scene_id('train', 0)}.npz"
        runs[overlap] = (scene.read_bytes(), read_cache_meta(scene), split.groups, frames.readers,
                         capsys.readouterr().out)
    (plain, plain_record, plain_groups, plain_readers, plain_out), (over, record, groups, readers, out) = (
        runs[False], runs[True])
    assert over == plain
    assert record["frames"] == plain_record["frames"] and record["points"] == plain_record["points"]
    assert list(record["skipped"].items()) == list(plain_record["skipped"].items())  # same frames, same order
    assert len(record["skipped"]) == len(broken.get("unreadable", ())) + len(broken.get("no_depth", ()))
    for name in plain_groups:
        np.testing.assert_array_equal(groups[name], plain_groups[name])
    assert [x for x in out.splitlines() if x.startswith("warning: frame")] == [
        x for x in plain_out.splitlines() if x.startswith("warning: frame")]
    assert plain_readers == {threading.current_thread().name}
    assert any(name.startswith("prepare-frames") for name in readers)  # the worker read ahead


def test_the_overlap_is_in_no_key(tmp_path):
    dataset = SyntheticIndoor(num_train=1, num_val=1, frames_per_scene=2, image_hw=(48, 64))
    on, off = (FramePreparation(RenderedMaskSource(), SimulatedTeacher(dim=8), overlap=o) for o in (True, False))
    assert on.cache_dir(dataset, "train", tmp_path) == off.cache_dir(dataset, "train", tmp_path)
    assert on.data_key(dataset, "train", tmp_path) == off.data_key(dataset, "train", tmp_path)
    with pytest.raises(ValueError, match="FramePreparation.overlap"):
        FramePreparation(RenderedMaskSource(), SimulatedTeacher(dim=8), overlap="yes")


@dataclasses.dataclass(frozen=True)
class _Frame:
    frame_id: int


def test_a_bug_in_the_worker_stops_the_scene_and_leaves_no_thread():
    def finish(frame, label_map, phases):
        raise KeyError("a bug, not a broken frame")

    before = threading.active_count()
    with pytest.raises(KeyError, match="a bug"):
        prepare_frames([_Frame(i) for i in range(5)], "s", lambda frame, phases: frame, finish, (DataError,), True, {})
    assert threading.active_count() == before


def test_at_most_two_frames_wait_for_the_worker():
    # Masks are instant and the worker slow: without the bound every frame would pile up behind it.
    waiting, most, lock = set(), [0], threading.Lock()

    def masks(frame, phases):
        with lock:
            waiting.add(frame)
            most[0] = max(most[0], len(waiting))
        return frame

    def finish(frame, label_map, phases):
        time.sleep(0.02)
        with lock:
            waiting.discard(frame)
        return frame

    frames, skipped = prepare_frames([_Frame(i) for i in range(8)], "s", masks, finish, (DataError,), True, {})
    assert frames == [_Frame(i) for i in range(8)] and skipped == {}
    assert most[0] <= 3  # two waiting for the worker, one in the masks

"""The offline preparation cache: contents, keying, resuming, and recovery from corrupt files."""
from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest

from datasets.synthetic import SyntheticIndoor
from infra.errors import HarnessError
from infra.io import read_cache_meta, write_cache_file
from methods.mask_sources import RenderedMaskSource
from methods.preparation import FramePreparation, PreparedSplit
from methods.prepared_scenes import unpack_scene
from methods.regions import region_features
from methods.teachers import SimulatedTeacher


def _dataset(**overrides):
    kwargs = dict(num_train=2, num_val=1, frames_per_scene=2, image_hw=(48, 64))
    kwargs.update(overrides)
    return SyntheticIndoor(**kwargs)


def _preparation(**overrides):
    kwargs = dict(mask_source=RenderedMaskSource(), teacher=SimulatedTeacher(dim=16, patch_size=8),
                  points_per_frame=500, num_groups=4)
    kwargs.update(overrides)
    return FramePreparation(**kwargs)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    dataset, preparation = _dataset(), _preparation(keep_label_maps=True)
    return dataset, preparation, preparation.prepare(dataset, "train", root), root


def _scene_file(split, dataset, index):
    return split.folder / "scenes" / f"{dataset.scene_id('train', index)}.npz"


def test_prepared_frames_hold_masks_features_and_sampled_points(prepared):
    dataset, preparation, split, _ = prepared
    assert len(split) == 4
    frame = split[0]
    source = dataset.scene("train", 0).frames[0]
    assert frame.frame_id == source.frame_id
    assert frame.xyz.dtype == np.float32 and len(frame.xyz) == 500
    assert frame.region_features.dtype == np.float16 and frame.region_ids.dtype == np.int32
    assert frame.label_map.dtype == np.int32 and np.array_equal(frame.label_map, source.instance)
    assert np.array_equal(frame.region, frame.label_map[frame.pixel[:, 0], frame.pixel[:, 1]])
    assert np.array_equal(frame.rgb, source.rgb[frame.pixel[:, 0], frame.pixel[:, 1]])
    ids, feats = region_features(preparation.teacher(source), source.instance)
    assert np.array_equal(frame.region_ids, ids)
    np.testing.assert_allclose(frame.region_features, np.asarray(feats), atol=2e-3)
    assert frame.region_groups.shape == frame.region_ids.shape


def test_a_scene_is_one_file_and_holds_only_what_pretraining_reads_by_default(prepared, tmp_path):
    dataset, _, split, _ = prepared
    assert sorted(p.name for p in (split.folder / "scenes").iterdir()) == sorted(
        f"{dataset.scene_id('train', i)}.npz{suffix}" for i in range(2) for suffix in ("", ".meta.json"))
    lean = _preparation().prepare(dataset, "train", tmp_path)
    frame, full = lean[0], split[0]
    assert frame.label_map is None and frame.pixel is None
    for field in ("xyz", "rgb", "region", "region_ids", "region_features"):
        assert np.array_equal(getattr(frame, field), getattr(full, field)), field
    assert _scene_file(lean, dataset, 0).stat().st_size < _scene_file(split, dataset, 0).stat().st_size / 2
    record = read_cache_meta(_scene_file(lean, dataset, 0))
    assert record["frames"] == lean.frame_ids[:2] and record["points"] == [500, 500] and record["skipped"] == {}


def test_the_pretrain_split_prepares_from_frames_alone(tmp_path):
    # The simulated SAM and teacher read the rendered maps of the unlabelled frames; no fused cloud is needed.
    dataset = _dataset(num_pretrain=2)
    split = _preparation().prepare(dataset, "pretrain", tmp_path)
    assert len(split) == 4 and split[0].frame_id == "synthetic-s0-pretrain-0000-f00"
    assert split.groups["counts"].sum() == sum(len(split[i].region_ids) for i in range(len(split)))


def test_groups_count_every_training_region(prepared):
    _, _, split, _ = prepared
    total = sum(len(split[i].region_ids) for i in range(len(split)))
    assert split.groups["counts"].sum() == total
    assert split.groups["weights"].sum() == pytest.approx(1.0)


def test_cache_is_keyed_by_configuration(prepared):
    dataset, preparation, split, root = prepared
    assert preparation.cache_dir(dataset, "train", root) == split.folder
    assert _preparation(keep_label_maps=True).cache_dir(dataset, "train", root) == split.folder
    for changed in (_preparation(), _preparation(teacher=SimulatedTeacher(dim=16, patch_size=8, noise=0.1)),
                    _preparation(mask_source=RenderedMaskSource(split_prob=0.5)),
                    _preparation(points_per_frame=400)):
        assert changed.cache_dir(dataset, "train", root) != split.folder
    assert preparation.cache_dir(_dataset(image_hw=(40, 64)), "train", root) != split.folder


def test_resume_skips_finished_scenes_and_redoes_unfinished_ones(tmp_path, monkeypatch):
    dataset, preparation = _dataset(), _preparation()
    split = preparation.prepare(dataset, "train", tmp_path)
    # Simulate a run killed during scene 1: its file was never written.
    _scene_file(split, dataset, 1).unlink()
    calls = []
    original = SyntheticIndoor.scene
    # Patched on the class: an instance attribute would change the dataset's fingerprint (its cache key).
    monkeypatch.setattr(SyntheticIndoor, "scene", lambda self, s, i: calls.append(i) or original(self, s, i))
    again = preparation.prepare(dataset, "train", tmp_path)
    assert calls == [1] and again.frame_ids == split.frame_ids


def test_a_scene_file_not_of_its_recorded_size_is_reported_and_prepared_again(tmp_path, monkeypatch, capsys):
    dataset, preparation = _dataset(), _preparation()
    split = preparation.prepare(dataset, "train", tmp_path)
    path = _scene_file(split, dataset, 1)
    path.write_bytes(path.read_bytes()[:100])
    calls = []
    original = SyntheticIndoor.scene
    monkeypatch.setattr(SyntheticIndoor, "scene", lambda self, s, i: calls.append(i) or original(self, s, i))
    again = preparation.prepare(dataset, "train", tmp_path)
    assert calls == [1] and again.frame_ids == split.frame_ids
    assert f"warning: prepared scene {path}: missing or not of its recorded size" in capsys.readouterr().out


def test_the_groups_follow_every_parameter_of_the_preparation(prepared, tmp_path):
    """K = 4 and K = 2 share the prepared frames but not the groups, nor what pretraining is keyed by."""
    dataset, preparation, split, _ = prepared
    other = _preparation(num_groups=2, keep_label_maps=True).prepare(dataset, "train", tmp_path)
    assert len(other.groups["centroids"]) == 2 and len(split.groups["centroids"]) == 4
    assert other.key != split.key and other.folder.name == split.folder.name


@pytest.mark.parametrize("damage", ["flip_byte", "wrong_dtype"])
def test_a_damaged_scene_file_is_detected_when_read_and_prepared_again(tmp_path, damage, capsys):
    dataset, preparation = _dataset(), _preparation()
    path = _scene_file(preparation.prepare(dataset, "train", tmp_path), dataset, 1)
    good = [frame.xyz.copy() for frame in unpack_scene(path.read_bytes())]
    data = path.read_bytes()
    if damage == "flip_byte":  # the same size: only the checksum tells
        path.write_bytes(data[:300] + bytes([data[300] ^ 0xFF]) + data[301:])
    else:  # a valid npz whose checksum is rewritten to match: only the validation tells
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
        arrays["xyz"] = arrays["xyz"].astype(np.float64)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        write_cache_file(path, buffer.getvalue(), 1.0, {k: v for k, v in read_cache_meta(path).items()
                                                        if k not in ("sha256", "bytes", "seconds")})
    split = preparation.prepare(dataset, "train", tmp_path)  # the size matches: the damage shows when read
    assert np.array_equal(split[2].xyz, good[0]) and np.array_equal(split[3].xyz, good[1])
    assert f"warning: prepared scene {path}" in capsys.readouterr().out
    unpack_scene(path.read_bytes())  # valid again on disk


def test_frames_without_depth_are_skipped_and_recorded(tmp_path):
    dataset = _dataset(num_train=1)
    original = dataset.scene

    def scene_with_an_empty_frame(split, index):
        scene = original(split, index)
        empty = dataclasses.replace(scene.frames[0], depth=np.zeros_like(scene.frames[0].depth))
        return dataclasses.replace(scene, frames=[empty, scene.frames[1]])

    dataset.scene = scene_with_an_empty_frame
    split = _preparation().prepare(dataset, "train", tmp_path)
    assert len(split) == 1
    record = read_cache_meta(split.folder / "scenes" / f"{dataset.scene_id('train', 0)}.npz")
    assert record["skipped"] == {f"{dataset.scene_id('train', 0)}-f00": "no valid depth"}
    assert (split.folder / "skipped_frames.txt").read_text() == f"{dataset.scene_id('train', 0)}-f00\tno valid depth\n"
    assert split.cost()["prepare/skipped_frames"] == 1.0


def test_prepared_split_is_the_only_reader(prepared):
    assert isinstance(prepared[2], PreparedSplit)


class _Huge:
    """A mask source that says it needs more memory than any machine has, on the CPU."""

    device = "cpu"
    description = "huge"

    def frame_memory(self, image_hw):
        return 2.0**60, "HugeMasks.size = 9"

    def __call__(self, frame):
        raise AssertionError("a frame was prepared although its memory check failed")


def test_a_frame_too_large_to_prepare_is_one_line_before_its_masks_are_made(tmp_path):
    preparation = FramePreparation(mask_source=_Huge(), teacher=SimulatedTeacher(dim=8), points_per_frame=64)
    with pytest.raises(HarnessError, match=r"preparing a frame of \d+ x \d+ pixels with HugeMasks.size = 9 and "
                                           r"SimulatedTeacher.dim = 8, patch_size = 8 would hold about"):
        preparation.prepare(_dataset(num_train=1), "train", tmp_path)


def test_the_teachers_say_what_a_frame_needs(tmp_path):
    small, large = SimulatedTeacher(dim=8).frame_memory((48, 64)), SimulatedTeacher(dim=800).frame_memory((48, 64))
    assert large[0] > small[0] and large[1] == "SimulatedTeacher.dim = 800, patch_size = 8"
    assert SimulatedTeacher(dim=8, patch_size=1).frame_memory((48, 64))[0] > small[0]

"""The offline preparation cache: contents, keying, resuming, and recovery from corrupt files."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from datasets.synthetic import SyntheticIndoor
from infra.errors import HarnessError
from methods.mask_sources import RenderedMaskSource
from methods.preparation import FramePreparation, PreparedSplit, decode_frame, frame_step
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
    dataset, preparation = _dataset(), _preparation()
    return dataset, preparation, preparation.prepare(dataset, "train", root), root


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
    assert _preparation().cache_dir(dataset, "train", root) == split.folder
    for changed in (_preparation(teacher=SimulatedTeacher(dim=16, patch_size=8, noise=0.1)),
                    _preparation(mask_source=RenderedMaskSource(split_prob=0.5)),
                    _preparation(points_per_frame=400)):
        assert changed.cache_dir(dataset, "train", root) != split.folder
    assert preparation.cache_dir(_dataset(image_hw=(40, 64)), "train", root) != split.folder


def test_resume_skips_finished_scenes_and_redoes_unfinished_ones(tmp_path, monkeypatch):
    dataset, preparation = _dataset(), _preparation()
    split = preparation.prepare(dataset, "train", tmp_path)
    # Simulate a run killed during scene 1: its manifest was never written.
    (split.folder / "scenes" / f"{dataset.scene_id('train', 1)}.json").unlink()
    calls = []
    original = SyntheticIndoor.scene
    # Patched on the class: an instance attribute would change the dataset's fingerprint (its cache key).
    monkeypatch.setattr(SyntheticIndoor, "scene", lambda self, s, i: calls.append(i) or original(self, s, i))
    again = preparation.prepare(dataset, "train", tmp_path)
    assert calls == [1] and again.frame_ids == split.frame_ids


@pytest.mark.parametrize("damage", ["truncate", "same_size"])
def test_a_damaged_scene_manifest_is_reported_and_the_scene_prepared_again(tmp_path, monkeypatch, capsys, damage):
    dataset, preparation = _dataset(), _preparation()
    split = preparation.prepare(dataset, "train", tmp_path)
    manifest = split.folder / "scenes" / f"{dataset.scene_id('train', 1)}.json"
    data = manifest.read_bytes()
    manifest.write_bytes(data[: len(data) // 2] if damage == "truncate" else data.replace(b"f00", b"f09"))
    calls = []
    original = SyntheticIndoor.scene
    monkeypatch.setattr(SyntheticIndoor, "scene", lambda self, s, i: calls.append(i) or original(self, s, i))
    again = preparation.prepare(dataset, "train", tmp_path)
    assert calls == [1] and again.frame_ids == split.frame_ids
    assert f"warning: preparation manifest {manifest}" in capsys.readouterr().out


def test_the_groups_follow_every_parameter_of_the_preparation(prepared, tmp_path):
    """K = 4 and K = 2 share the prepared frames but not the groups, nor what pretraining is keyed by."""
    dataset, preparation, split, _ = prepared
    other = _preparation(num_groups=2).prepare(dataset, "train", tmp_path)
    assert len(other.groups["centroids"]) == 2 and len(split.groups["centroids"]) == 4
    assert other.key != split.key and other.folder.name == split.folder.name


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "wrong_dtype"])
def test_a_damaged_frame_file_is_detected_and_recomputed(tmp_path, damage):
    dataset, preparation = _dataset(), _preparation()
    split = preparation.prepare(dataset, "train", tmp_path)
    step = frame_step(split.folder, split.frame_ids[1])
    path = step.path
    good = step.load(decode_frame)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip_byte":
        path.write_bytes(data[:200] + bytes([data[200] ^ 0xFF]) + data[201:])
    else:
        np.savez(path, **{**{k: getattr(good, k) for k in ("xyz", "rgb", "pixel", "region", "region_ids",
                                                          "label_map")},
                          "region_features": good.region_features.astype(np.float64), "frame_id": good.frame_id})
    assert step.load(decode_frame, quiet=True) is None  # never used
    recovered = split[1]
    assert np.array_equal(recovered.xyz, good.xyz) and np.array_equal(recovered.region_features, good.region_features)
    assert step.load(decode_frame) is not None  # valid again on disk


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
    manifest = json.loads(next((split.folder / "scenes").iterdir()).read_text())
    assert manifest["skipped_no_depth"] == [f"{dataset.scene_id('train', 0)}-f00"]


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

"""The simulated indoor benchmark: determinism, geometry, labels, boxes and class statistics."""
from __future__ import annotations

import gin
import numpy as np
import pytest

from datasets.geometry import aligned_box_of_oriented, backproject, box_corners, project
from datasets.synthetic import SyntheticIndoor
from datasets.synthetic.dataset import voxel_downsample
from datasets.synthetic.furniture import CYLINDER, FURNITURE, sampling_probabilities
from datasets.synthetic.layout import FIRST_OBJECT_INSTANCE
from datasets.types import IGNORE_INDEX
from tests.geometry import points_in_boxes

SMALL = dict(num_train=3, num_val=2, num_pretrain=2, frames_per_scene=3, image_hw=(48, 64))


@pytest.fixture(scope="module")
def dataset() -> SyntheticIndoor:
    return SyntheticIndoor(seed=7, **SMALL)


@pytest.fixture(scope="module")
def scenes(dataset):
    return [dataset.scene("train", i) for i in range(3)] + [dataset.scene("val", i) for i in range(2)]


def _assert_scenes_equal(a, b):
    for name in ("points", "colors", "semantic", "instance", "boxes", "box_labels", "box_instance"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for fa, fb in zip(a.frames, b.frames, strict=True):
        for name in ("rgb", "depth", "intrinsics", "pose", "instance", "semantic"):
            np.testing.assert_array_equal(getattr(fa, name), getattr(fb, name), err_msg=name)


def test_info_names_a_simulation_with_ten_plus_classes(dataset):
    info = dataset.info
    assert info.name == "synthetic" and info.has_yaw
    assert "simulat" in SyntheticIndoor.__doc__.lower()
    assert len(info.det_classes) >= 10
    assert info.seg_classes[:2] == ("wall", "floor")
    assert info.seg_classes[2:] == info.det_classes
    assert info.seg_to_det == (-1, -1) + tuple(range(len(info.det_classes)))
    assert dataset.splits == ("train", "val", "pretrain") and dataset.unlabelled_splits == ("pretrain",)
    assert [dataset.num_scenes(s) for s in dataset.splits] == [3, 2, 2]


def test_unknown_split_and_index_errors(dataset):
    with pytest.raises(ValueError, match=r"'test'.*train, val, pretrain"):
        dataset.scene("test", 0)
    with pytest.raises(ValueError, match="'test'"):
        dataset.num_scenes("test")
    with pytest.raises(IndexError):
        dataset.layout("train", 3)
    with pytest.raises(IndexError):
        dataset.scene("pretrain", 2)
    with pytest.raises(ValueError, match="num_pretrain"):
        SyntheticIndoor(num_pretrain=-1)


def test_determinism_and_independence(dataset, scenes):
    again = SyntheticIndoor(seed=7, **{**SMALL, "num_train": 10})  # other split sizes, same scenes
    _assert_scenes_equal(again.scene("train", 1), scenes[1])
    _assert_scenes_equal(again.scene("val", 0), scenes[3])
    other = SyntheticIndoor(seed=8, **SMALL).scene("train", 1)
    assert other.points.shape != scenes[1].points.shape or not np.array_equal(other.points, scenes[1].points)
    assert not np.array_equal(other.frames[0].depth, scenes[1].frames[0].depth)
    assert not np.array_equal(scenes[0].frames[0].depth, scenes[3].frames[0].depth)  # train 0 != val 0


def test_pretrain_split_is_frames_only_with_what_the_simulated_sam_and_teacher_read(dataset):
    h, w = SMALL["image_hw"]
    scene = dataset.scene("pretrain", 1)
    assert scene.scene_id == "synthetic-s7-pretrain-0001" and len(scene.frames) == SMALL["frames_per_scene"]
    assert scene.num_points == 0 and scene.points.shape == (0, 3) and scene.boxes.shape == (0, 7)
    assert len(scene.colors) == len(scene.semantic) == len(scene.instance) == len(scene.box_labels) == 0
    for f in scene.frames:
        assert f.frame_id.startswith("synthetic-s7-pretrain-0001-f")
        assert f.rgb.shape == (h, w, 3) and f.depth.shape == (h, w) and (f.depth > 0).mean() > 0.5
        # RenderedMaskSource reads the instance map, SimulatedTeacher both maps (the simulations of SAM
        # and of a 2D foundation model); nothing else reads labels of this split.
        assert f.instance.shape == f.semantic.shape == (h, w)
        np.testing.assert_array_equal(f.instance > 0, f.depth > 0)


def test_pretrain_split_is_disjoint_deterministic_and_leaves_the_labelled_splits_alone(dataset, scenes):
    bigger = SyntheticIndoor(seed=7, **{**SMALL, "num_train": 40, "num_val": 40, "num_pretrain": 40})
    rooms = {bigger.layout(split, i).room.tobytes() for split in bigger.splits for i in range(40)}
    assert len(rooms) == 120  # 120 different rooms: the pretrain streams are none of train's or val's
    _assert_scenes_equal(bigger.scene("pretrain", 1), dataset.scene("pretrain", 1))
    none = SyntheticIndoor(seed=7, **{**SMALL, "num_pretrain": 0})
    assert none.num_scenes("pretrain") == 0
    _assert_scenes_equal(none.scene("train", 2), scenes[2])  # labelled scenes do not depend on num_pretrain
    _assert_scenes_equal(none.scene("val", 1), scenes[4])


def test_scenes_iterator_is_lazy_and_matches_scene(dataset, scenes):
    it = dataset.scenes("val")
    assert not isinstance(it, (list, tuple))
    _assert_scenes_equal(next(it), scenes[3])


def test_frame_arrays_and_label_conventions(dataset, scenes):
    h, w = SMALL["image_hw"]
    for scene in scenes:
        assert len(scene.frames) == SMALL["frames_per_scene"]
        for f in scene.frames:
            assert f.rgb.shape == (h, w, 3) and f.rgb.dtype == np.uint8
            assert f.depth.dtype == np.float32 and f.instance.dtype == np.int32 and f.semantic.dtype == np.int32
            hit = f.depth > 0
            assert hit.mean() > 0.5
            np.testing.assert_array_equal(f.semantic == IGNORE_INDEX, ~hit)
            np.testing.assert_array_equal(f.instance > 0, hit)
            assert np.abs(np.linalg.det(f.pose[:3, :3]) - 1) < 1e-9
            assert 1.2 <= f.pose[2, 3] <= 1.8 and f.pose[2, 2] < 0  # eye height, pitched down
        assert scene.points.dtype == np.float32 and scene.colors.dtype == np.uint8
        assert scene.boxes.dtype == np.float32 and scene.boxes.shape[1] == 7
        assert scene.box_labels.dtype == np.int32 and scene.box_instance.dtype == np.int32


def test_backproject_project_round_trip_on_rendered_frames(scenes):
    for f in scenes[0].frames + scenes[3].frames:
        xyz, pix = backproject(f.depth, f.intrinsics, f.pose)
        uv, z = project(xyz, f.intrinsics, f.pose)
        np.testing.assert_array_equal(np.rint(uv[:, ::-1]).astype(np.int64), pix)
        np.testing.assert_allclose(z, f.depth[pix[:, 0], pix[:, 1]], rtol=1e-5)


def test_every_box_contains_all_points_of_its_object(scenes):
    for scene in scenes:
        inside = points_in_boxes(scene.points, scene.boxes, eps=1e-4)
        for b, inst in enumerate(scene.box_instance):
            mine = scene.instance == inst
            assert inside[mine, b].all(), f"{scene.scene_id} box {b}: {(~inside[mine, b]).sum()} points outside"


def test_boxes_are_tight_around_primitives(dataset):
    layout = dataset.layout("train", 0)
    prims = layout.primitives
    for obj in layout.objects:
        sel = prims.instance == obj.instance
        c, s = np.cos(obj.box[6]), np.sin(obj.box[6])
        d = prims.center[sel] - obj.box[:3]
        local = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], axis=1)
        half = prims.half[sel]
        np.testing.assert_allclose((local + half).max(axis=0), obj.box[3:6] / 2, atol=1e-9)
        np.testing.assert_allclose((local - half).min(axis=0), -obj.box[3:6] / 2, atol=1e-9)
        assert obj.box[2] - obj.box[5] / 2 == pytest.approx(0.0, abs=1e-9)  # standing on the floor


def test_labels_consistent_between_frames_points_and_boxes(dataset, scenes):
    for scene in scenes:
        pairs = set()
        for f in scene.frames:
            pairs |= set(zip(f.instance[f.depth > 0].tolist(), f.semantic[f.depth > 0].tolist()))
        classes_of = {}
        for inst, sem in pairs:
            assert classes_of.setdefault(inst, sem) == sem, f"instance {inst} has two classes"
        point_pairs = set(zip(scene.instance.tolist(), scene.semantic.tolist()))
        assert point_pairs <= pairs
        assert (scene.instance > 0).all() and (scene.semantic >= 0).all()
        seg_to_det = np.array(dataset.info.seg_to_det)
        for inst, label in zip(scene.box_instance, scene.box_labels):
            assert inst >= FIRST_OBJECT_INSTANCE
            assert seg_to_det[classes_of[int(inst)]] == label
            assert (scene.instance == inst).sum() >= dataset.min_points_per_box
        assert len(set(scene.box_instance.tolist())) == len(scene.box_instance)


def test_min_points_drops_boxes_not_points(scenes):
    strict = SyntheticIndoor(seed=7, min_points_per_box=10**9, **SMALL).scene("train", 0)
    assert len(strict.boxes) == 0 and strict.boxes.shape == (0, 7) and strict.box_labels.shape == (0,)
    np.testing.assert_array_equal(strict.points, scenes[0].points)


def test_axis_aligned_option(scenes):
    ds = SyntheticIndoor(seed=7, yaw_boxes=False, **SMALL)
    assert ds.info.has_yaw is False
    scene = ds.scene("train", 0)
    assert (scene.boxes[:, 6] == 0).all()
    np.testing.assert_allclose(scene.boxes, aligned_box_of_oriented(scenes[0].boxes), atol=1e-6)


def test_voxel_downsample_keeps_one_point_per_voxel(scenes):
    voxel = 0.03
    keys = np.floor(scenes[0].points / voxel).astype(np.int64)
    assert len(np.unique(keys, axis=0)) == len(keys)
    pts = np.array([[0.01, 0.01, 0.01], [0.02, 0.0, 0.0], [0.05, 0.0, 0.0]])
    np.testing.assert_array_equal(voxel_downsample(pts, voxel), [0, 2])


def test_layouts_inside_room_without_overlap(dataset):
    for index in range(3):
        layout = dataset.layout("train", index)
        boxes = np.array([o.box for o in layout.objects])
        corners = box_corners(boxes)[:, :4, :2]
        assert corners.min() >= 0
        assert (corners[..., 0] <= layout.room[0]).all() and (corners[..., 1] <= layout.room[1]).all()
        # Footprints only: test a dense floor grid against boxes stretched vertically.
        tall = boxes.copy()
        tall[:, 2], tall[:, 5] = 0.0, 100.0
        gx, gy = np.meshgrid(np.arange(0, layout.room[0], 0.02), np.arange(0, layout.room[1], 0.02))
        grid = np.stack([gx.ravel(), gy.ravel(), np.zeros(gx.size)], axis=1)
        assert points_in_boxes(grid, tall).sum(axis=1).max() <= 1
        eyes = layout.poses[:, :2, 3]
        assert (eyes > 0).all() and (eyes < layout.room[:2]).all()


def test_long_tailed_class_frequencies():
    probs = sampling_probabilities()
    assert len(FURNITURE) >= 10 and probs.min() / probs.max() <= 1 / 20
    ds = SyntheticIndoor(seed=0, num_train=200)
    counts = np.zeros(len(FURNITURE), dtype=np.int64)
    for index in range(200):
        for obj in ds.layout("train", index).objects:
            counts[obj.det_class] += 1
    assert (counts > 0).all(), counts
    assert counts.min() / counts.max() <= 1 / 20, counts
    assert counts.argmax() == 0


def test_catalogue_uses_cylinders_and_boxes(dataset):
    kinds = np.concatenate([dataset.layout("train", i).primitives.kind for i in range(3)])
    assert (kinds == CYLINDER).any() and (kinds != CYLINDER).any()


def test_larger_images_work():
    scene = SyntheticIndoor(seed=3, num_train=1, frames_per_scene=1, image_hw=(240, 320)).scene("train", 0)
    assert scene.frames[0].depth.shape == (240, 320) and scene.num_points > 1000


def test_gin_binding_builds_the_dataset():
    gin.parse_config(["SyntheticIndoor.num_train = 2", "SyntheticIndoor.image_hw = (24, 32)"])
    ds = gin.get_configurable("SyntheticIndoor")()
    assert isinstance(ds, SyntheticIndoor)
    assert ds.num_scenes("train") == 2 and ds.image_hw == (24, 32)

"""The vote-and-group detection head: point targets, the loss, grouping, overfitting one scene, the spec."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.metrics import evaluate_detection
from datasets.types import DatasetInfo, Scene
from methods.downstream.detection.boxes import points_in_box_frame
from methods.downstream.detection.vote_group import (VoteGroupDetector, VoteGroupObjective, footprint_yaw,
                                                     group_votes, point_box_assignment)
from methods.downstream.scene_batch import SceneSamples, collate_scenes
from methods.encoder import EncoderSpec, TransformerEncoder
from methods.tokenizers import KnnTokenizer
from methods.vote_finetune import VoteGroupDetection
from methods.train import TrainSchedule
from tests.methods.test_groupfree import BOXES, GT_VALID, _room, overfit

pytestmark = pytest.mark.usefixtures("one_thread")
C = 3


def _detector(has_yaw: bool = True, seed: int = 0, cluster_class: bool = False) -> VoteGroupDetector:
    torch.manual_seed(seed)
    encoder = TransformerEncoder(width=32, depth=1, heads=2, drop_path=0.0, embed_channels=(16, 32, 64),
                                 embed_norm="layer")
    return VoteGroupDetector(encoder, num_classes=C, has_yaw=has_yaw, hidden=32, cluster_class=cluster_class)


def _batch(scene: Scene, points: int = 512) -> dict[str, torch.Tensor]:
    return collate_scenes([SceneSamples([scene], points, KnnTokenizer(32, 16), seed=0, augment=False)[0]])


# ---------------------------------------------------------------- targets

def test_a_point_belongs_to_the_smallest_box_holding_it_and_yaw_counts():
    # BOXES: A (2 x 2 x 1 at the origin), B overlapping A's +x side, C rotated 45 degrees, D far away.
    r = math.sqrt(0.5)
    points = torch.tensor([[[0.0, 0.0, 0.5],              # A only
                            [1.0, 0.0, 0.5],              # A and B: B is smaller
                            [5.0, 5.0 + 0.9 * r, 0.5],    # inside C (rotated), outside its unrotated box
                            [5.45, 5.45, 0.5],            # inside C's unrotated box only
                            [0.0, 0.0, 1.2],              # above A
                            [-5.0, -5.0, 0.5]]])          # D's centre
    assert point_box_assignment(points, BOXES, GT_VALID).tolist() == [[0, 1, 2, -1, -1, 3]]
    # A padding box (invalid) never owns a point, however large it is.
    assert point_box_assignment(points[:, 4:5], BOXES, GT_VALID).tolist() == [[-1]]


def test_the_loss_parts_add_up_and_train_every_head_output():
    batch = _batch(_room())
    objective = VoteGroupObjective(_detector())
    out = objective(batch)
    assert set(out) == {"loss", "cls", "offset", "size", "heading"}
    assert torch.isclose(out["loss"], sum(out[k] for k in ("cls", "offset", "size", "heading")))
    out["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in objective.parameters())
    assert objective.detector.out.weight.grad[C + 1:].abs().sum() > 0  # offset, size and heading rows


def test_a_scene_without_boxes_trains_the_class_term_only():
    room = _room()
    empty = Scene("empty", room.points, room.colors, room.semantic, room.instance, np.zeros((0, 7), np.float32),
                  np.zeros(0, np.int32), np.zeros(0, np.int32))
    out = VoteGroupObjective(_detector())(_batch(empty))
    assert out["cls"] > 0 and torch.isfinite(out["loss"])
    assert out["offset"] == 0 and out["size"] == 0 and out["heading"] == 0


def test_without_yaw_there_is_no_heading_output_or_term():
    detector = _detector(has_yaw=False)
    out = VoteGroupObjective(detector)(_batch(_room()))
    assert out["heading"] == 0
    assert "heading" not in detector(_batch(_room()))


def test_the_cluster_term_classifies_each_box_from_the_points_it_holds():
    batch = _batch(_room())
    detector = _detector(cluster_class=True)
    objective = VoteGroupObjective(detector, weight_cluster=2.0)
    out = objective(batch)
    assert torch.isclose(out["loss"], sum(out[k] for k in ("cls", "offset", "size", "heading", "cluster")))
    # By hand: every valid box holding >= 5 sampled points, its points' features max- and mean-pooled,
    # their extent in the box's frame, then the classifier's cross-entropy against the box's label.
    with torch.no_grad():
        feature = detector(batch)["feature"][0]
        points = batch["points"][0]
        owner = point_box_assignment(batch["points"], batch["gt_boxes"], batch["gt_valid"].bool())[0]
        inputs, labels = [], []
        for j in range(batch["gt_boxes"].shape[1]):
            member = owner == j
            if member.sum() < 5:
                continue
            box = batch["gt_boxes"][:, j]
            local = points_in_box_frame(points[member][None], box[:, :3][:, None], box[:, 6:7])[0, :, 0]
            extent = (local.max(0).values - local.min(0).values).clamp(min=0.01)
            inputs.append(torch.cat([feature[member].max(0).values, feature[member].mean(0), extent.log()]))
            labels.append(int(batch["gt_labels"][0, j]))
        assert len(labels) >= 2
        expected = torch.nn.functional.cross_entropy(detector.cluster_head(torch.stack(inputs)),
                                                     torch.tensor(labels))
    assert out["cluster"] == pytest.approx(2.0 * float(expected), rel=1e-4)
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in detector.cluster_head.parameters())


# ---------------------------------------------------------------- grouping

def _outputs(labels: np.ndarray, offsets: np.ndarray, yaw: float = 0.0) -> dict[str, np.ndarray]:
    """Outputs that are certain: class ``labels`` (C = background), the given offsets, one heading."""
    logits = np.full((len(labels), C + 1), -10.0)
    logits[np.arange(len(labels)), labels] = 10.0
    heading = np.tile([math.cos(2 * yaw), math.sin(2 * yaw)], (len(labels), 1))
    return {"logits": logits, "offset": offsets, "log_size": np.zeros((len(labels), 3)), "heading": heading}


def test_votes_of_two_objects_give_two_boxes_from_their_points_extents():
    rng = np.random.default_rng(0)
    a = rng.uniform([0, 0, 0], [1.0, 0.5, 0.8], (40, 3))       # class 0
    b = rng.uniform([3, 0, 0], [3.4, 1.2, 0.6], (30, 3))       # class 2
    noise = rng.uniform([-2, -2, 0], [6, 3, 0.01], (50, 3))    # background
    points = np.concatenate([a, b, noise])
    labels = np.r_[np.zeros(40, int), np.full(30, 2), np.full(50, C)]
    centre = np.r_[np.tile(a.mean(0), (40, 1)), np.tile(b.mean(0), (30, 1)), np.zeros((50, 3))]
    det = group_votes(points, _outputs(labels, centre - points), radius=0.1, min_points=10, nms_iou=0.25)
    assert len(det.boxes) == 2 * C  # each box once per class
    best = det.scores.argsort()[::-1]
    top = {int(det.labels[i]): det.boxes[i] for i in best[:2]}
    assert set(top) == {0, 2}
    for label, pts in ((0, a), (2, b)):
        low, high = pts.min(0), pts.max(0)
        np.testing.assert_allclose(top[label], np.r_[(low + high) / 2, high - low, 0.0], atol=1e-6)
    assert np.all(det.scores[best[:2]] > 0.99)


def test_a_rotated_object_gets_its_heading_and_extent_in_that_frame():
    rng = np.random.default_rng(1)
    yaw = 0.5
    local = rng.uniform([-0.6, -0.2, 0.0], [0.6, 0.2, 0.5], (200, 3))
    local[:4, :2] = [[-0.6, -0.2], [0.6, 0.2], [-0.6, 0.2], [0.6, -0.2]]  # the corners, so the extent is exact
    c, s = math.cos(yaw), math.sin(yaw)
    points = np.stack([c * local[:, 0] - s * local[:, 1] + 2, s * local[:, 0] + c * local[:, 1] + 1, local[:, 2]], 1)
    det = group_votes(points, _outputs(np.ones(200, int), points.mean(0) - points, yaw), 0.1, 10, 0.25)
    box = det.boxes[det.scores.argmax()]
    np.testing.assert_allclose(box[3:5], [1.2, 0.4], atol=1e-5)
    assert box[6] == pytest.approx(yaw, abs=1e-5) and det.labels[det.scores.argmax()] == 1


def test_the_footprint_gives_a_rectangle_its_yaw_modulo_a_quarter_turn():
    rng = np.random.default_rng(3)
    local = rng.uniform([-0.8, -0.3], [0.8, 0.3], (300, 2))
    local[:4] = [[-0.8, -0.3], [0.8, 0.3], [-0.8, 0.3], [0.8, -0.3]]
    for degrees, expected in ((0, 0), (30, 30), (120, 30), (-20, 70)):
        c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
        xy = np.stack([c * local[:, 0] - s * local[:, 1], s * local[:, 0] + c * local[:, 1]], 1) + [4.0, -1.0]
        assert footprint_yaw(xy) == pytest.approx(math.radians(expected), abs=1e-9), degrees


def test_a_fitted_heading_and_a_cluster_classifier_replace_the_points_predictions():
    rng = np.random.default_rng(4)
    yaw = math.radians(30)
    local = rng.uniform([-0.6, -0.2, 0.0], [0.6, 0.2, 0.5], (200, 3))
    local[:4, :2] = [[-0.6, -0.2], [0.6, 0.2], [-0.6, 0.2], [0.6, -0.2]]
    c, s = math.cos(yaw), math.sin(yaw)
    points = np.stack([c * local[:, 0] - s * local[:, 1], s * local[:, 0] + c * local[:, 1], local[:, 2]], 1)
    outputs = _outputs(np.ones(200, int), points.mean(0) - points, yaw=0.0)  # predicted heading: wrong
    outputs["feature"] = rng.normal(size=(200, 4))
    seen = {}

    def classify(top, mean, extent):
        seen.update(top=top, mean=mean, extent=extent)
        return np.array([[0.1, 0.2, 0.7]])

    det = group_votes(points, outputs, 0.1, 10, 0.25, classify=classify, fit_heading=True)
    box = det.boxes[det.scores.argmax()]
    assert box[6] == pytest.approx(yaw, abs=1e-6)
    np.testing.assert_allclose(box[3:6], [1.2, 0.4, np.ptp(local[:, 2])], atol=1e-5)
    np.testing.assert_allclose(seen["top"], outputs["feature"].max(0, keepdims=True))
    np.testing.assert_allclose(seen["mean"], outputs["feature"].mean(0, keepdims=True))
    np.testing.assert_allclose(seen["extent"], box[None, 3:6], atol=1e-6)
    assert det.labels[det.scores.argmax()] == 2  # the classifier's class, not the points' class 1
    np.testing.assert_allclose(np.sort(det.scores)[::-1], [0.7, 0.2, 0.1], atol=1e-6)  # objectness 1 x p(c)


def test_no_foreground_or_too_small_clusters_give_no_detection():
    points = np.random.default_rng(2).uniform(0, 1, (30, 3))
    background = _outputs(np.full(30, C), np.zeros((30, 3)))
    assert len(group_votes(points, background, 0.1, 5, 0.25).boxes) == 0
    scattered = _outputs(np.zeros(30, int), np.zeros((30, 3)))  # every point its own component at radius 1e-4
    det = group_votes(points, scattered, 1e-4, 5, 0.25)
    assert det.boxes.shape == (0, 7) and det.labels.shape == (0,) and det.scores.shape == (0,)


# ---------------------------------------------------------------- learning

def test_the_head_overfits_one_scene_to_ap25_of_one():
    scene = _room()
    batch = _batch(scene, 1024)
    detector = _detector()
    objective = VoteGroupObjective(detector)
    overfit(objective, batch, steps=200)
    detector.eval()
    with torch.no_grad():
        out = {k: v[0].numpy() for k, v in detector(batch).items()}
    det = group_votes(batch["points"][0].numpy(), out, radius=0.15, min_points=10, nms_iou=0.25)
    det.boxes[:, :3] += batch["offset"][0].numpy()
    scores = evaluate_detection([{"gt_boxes": scene.boxes, "gt_labels": scene.box_labels, "pred_boxes": det.boxes,
                                  "pred_labels": det.labels, "pred_scores": det.scores}], (0.25,), C)
    assert scores[0.25]["mAP"] == 1.0, scores


# ---------------------------------------------------------------- the fine-tune spec

def _info() -> DatasetInfo:
    return DatasetInfo(name="hand", seg_classes=("a", "b", "c"), det_classes=("a", "b", "c"), seg_to_det=(0, 1, 2),
                       has_yaw=True)


class _Scenes(list):
    """A list of scenes with the cache folder ``FinetuneSpec.key`` names them by."""

    class folder:
        name = "hand-scenes"


def test_the_spec_fits_caches_and_predicts_in_the_scenes_frame(tmp_path):
    spec = VoteGroupDetection(KnnTokenizer(32, 16), EncoderSpec(width=32, depth=1, heads=2, drop_path=0.0,
                                                                embed_channels=(16, 32, 64)),
                              num_points=512, schedule=TrainSchedule(epochs=2, batch_size=1, warmup_epochs=0),
                              eval_points=1024, hidden=32, min_points=5)
    assert spec.description == "vote-and-group head, 2 epochs x batch 1" and spec.task_key == "det"
    scenes = _Scenes([_room()])
    model, history = spec.fit(None, "none", scenes, _info(), tmp_path, seed=0)
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    again, _ = spec.fit(None, "none", scenes, _info(), tmp_path, seed=0)  # from the cache: the same weights
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    det = spec.predict(model, scenes[0], seed=0)
    assert det.boxes.shape[1] == 7 and len(det.boxes) == len(det.labels) == len(det.scores)
    assert spec.predict(model, scenes[0], seed=0).scores.tolist() == det.scores.tolist()  # seeded
    if len(det.boxes):  # boxes are in the scene's own frame (its points sit around (3, 3))
        assert np.all(np.abs(det.boxes[:, :2] - 3.0) < 3.0)


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="eval_points"):
        VoteGroupDetection(KnnTokenizer(32, 16), eval_points=0)
    with pytest.raises(ValueError, match="radius"):
        VoteGroupDetection(KnnTokenizer(32, 16), radius=0.0)
    with pytest.raises(ValueError, match="offset_delta"):
        VoteGroupObjective(_detector(), offset_delta=0.0)

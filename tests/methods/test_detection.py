"""3DETR-style detection head, objective and post-processing (methods/downstream/detection)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from methods.downstream.detection import (
    DetectionObjective, Detector3D, aabb_giou, angle_to_bin, bin_to_angle, decode_detections,
    enclosing_aabb, hungarian_match, match_cost, nms_3d, predict_batch)
from methods.encoder import TransformerEncoder

B, G, K, Q, C = 2, 12, 8, 8, 3


pytestmark = pytest.mark.usefixtures("one_thread")


def _detector(has_yaw: bool, seed: int = 0, **kw) -> Detector3D:
    torch.manual_seed(seed)
    encoder = TransformerEncoder(width=32, depth=1, heads=2, drop_path=0.0, embed_channels=(16, 32, 64))
    spec = dict(num_queries=Q, decoder_depth=2, heads=2, dropout=0.0, head_dropout=0.0) | kw
    return Detector3D(encoder, num_classes=C, has_yaw=has_yaw, **spec)


def _batch(seed: int = 0, yaw: bool = True) -> dict[str, torch.Tensor]:
    """Two scenes; scene 1 has only 5 valid tokens (< Q). Tokens sit around the GT boxes (2 + 1).

    ``yaw=False`` zeroes the GT yaws, as in axis-aligned data (ScanNet)."""
    gen = torch.Generator().manual_seed(seed)
    gt_boxes = torch.tensor([[[1.0, 0.0, 0.5, 1.0, 0.6, 1.0, 0.3], [-1.5, 1.0, 0.4, 0.8, 0.8, 0.8, -2.0]],
                             [[0.0, -1.0, 0.3, 1.2, 0.5, 0.6, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]])
    if not yaw:
        gt_boxes[..., 6] = 0.0
    gt_labels = torch.tensor([[0, 2], [1, -1]])
    gt_valid = torch.tensor([[True, True], [True, False]])
    which = torch.arange(G) % 2
    centers = gt_boxes[:, :, :3][:, which] + 0.3 * torch.randn(B, G, 3, generator=gen)
    rel = 0.1 * torch.randn(B, G, K, 3, generator=gen)
    valid = torch.ones(B, G, dtype=torch.bool)
    valid[1, 5:] = False
    points = (centers[:, :, None] + rel).reshape(B, G * K, 3)
    return dict(points=points, colors=torch.zeros_like(points), rel=rel, centers=centers, valid=valid,
                gt_boxes=gt_boxes, gt_labels=gt_labels, gt_valid=gt_valid)


# ---------------------------------------------------------------- model

@pytest.mark.parametrize("has_yaw", [True, False])
def test_output_shapes_positive_sizes_and_query_padding(has_yaw):
    batch = _batch()
    outputs = _detector(has_yaw).eval()(batch)
    assert len(outputs) == 2
    for out in outputs:
        assert out["center"].shape == out["size"].shape == (B, Q, 3)
        assert out["logits"].shape == (B, Q, C + 1)
        assert out["yaw"].shape == out["query_valid"].shape == (B, Q)
        assert torch.all(out["size"] > 0)
        assert ("heading_logits" in out) == ("heading_residual" in out) == has_yaw
        if has_yaw:
            assert out["heading_logits"].shape == out["heading_residual"].shape == (B, Q, 12)
            cls = out["heading_logits"].argmax(-1)
            res = out["heading_residual"].gather(-1, cls[..., None])[..., 0]
            assert torch.allclose(out["yaw"], bin_to_angle(cls, res, 12))
        else:
            assert torch.all(out["yaw"] == 0)
    qv = outputs[-1]["query_valid"]
    assert qv[0].all() and qv[1].tolist() == [True] * 5 + [False] * 3
    # Queries are distinct valid token centres (FPS), padding queries sit at the origin.
    xyz = outputs[-1]["query_xyz"]
    for i in range(B):
        pool = batch["centers"][i, batch["valid"][i]]
        picked = xyz[i, qv[i]]
        assert torch.cdist(picked, pool).min(dim=1).values.max() == 0
        assert len(torch.unique(picked, dim=0)) == len(picked)
    assert torch.all(xyz[1, 5:] == 0)


# ---------------------------------------------------------------- heading bins

def test_heading_bins_hand_values_and_wrap_around():
    w = 2 * math.pi / 12
    yaw = torch.tensor([0.0, -w / 4, w / 2, 2 * math.pi - w / 4, math.pi, -math.pi, 3 * w + w / 4])
    cls, res = angle_to_bin(yaw, 12)
    assert cls.tolist() == [0, 0, 1, 0, 6, 6, 3]
    assert torch.allclose(res, torch.tensor([0.0, -0.5, -1.0, -0.5, 0.0, 0.0, 0.5]), atol=1e-5)


def test_heading_round_trip():
    yaw = torch.linspace(-3 * math.pi, 3 * math.pi, 1001, dtype=torch.float64)
    for bins in (1, 12, 7):
        cls, res = angle_to_bin(yaw, bins)
        assert cls.min() >= 0 and cls.max() < bins and res.min() >= -1 and res.max() < 1 + 1e-9
        back = bin_to_angle(cls, res, bins)
        assert back.min() >= -math.pi and back.max() < math.pi
        diff = torch.remainder(back - yaw + math.pi, 2 * math.pi) - math.pi
        assert diff.abs().max() < 1e-9


# ---------------------------------------------------------------- GIoU

def _aabb(cx, cy, cz, ex, ey, ez):
    return torch.tensor([cx, cy, cz, ex, ey, ez], dtype=torch.float64)


def test_giou_hand_values():
    unit = _aabb(0, 0, 0, 1, 1, 1)
    assert aabb_giou(unit, unit).item() == pytest.approx(1.0)
    nested = aabb_giou(unit, _aabb(0, 0, 0, 2, 2, 2)).item()
    assert nested == pytest.approx(1 / 8)  # hull = the big box, so GIoU = IoU
    assert aabb_giou(unit, _aabb(0.5, 0, 0, 1, 1, 1)).item() == pytest.approx(1 / 3)  # hull = union
    # Disjoint: IoU 0, union 2, hull 4 x 1 x 1 -> -(4 - 2) / 4.
    assert aabb_giou(unit, _aabb(3, 0, 0, 1, 1, 1)).item() == pytest.approx(-0.5)
    # Diagonal neighbours: union 2, hull 2x2x1 -> -0.5; pairwise broadcasting gives (N, M).
    others = torch.stack([unit, _aabb(1, 1, 0, 1, 1, 1), unit])
    pair = aabb_giou(torch.stack([unit, unit])[:, None], others[None])
    assert pair.shape == (2, 3)
    assert torch.allclose(pair[0], torch.tensor([1.0, -0.5, 1.0], dtype=torch.float64))


def test_enclosing_aabb_of_rotated_boxes():
    boxes = torch.tensor([[1.0, 2.0, 3.0, 2.0, 1.0, 0.5, 0.0],
                          [1.0, 2.0, 3.0, 2.0, 1.0, 0.5, math.pi / 2],
                          [0.0, 0.0, 0.0, 2.0, 1.0, 0.5, -math.pi / 4]], dtype=torch.float64)
    out = enclosing_aabb(boxes)
    s = 3 / math.sqrt(2)
    expected = torch.tensor([[1, 2, 3, 2, 1, 0.5], [1, 2, 3, 1, 2, 0.5], [0, 0, 0, s, s, 0.5]],
                            dtype=torch.float64)
    assert torch.allclose(out, expected)


def test_giou_gradient_is_finite():
    a = torch.tensor([[0.0, 0, 0, 1, 1, 1, 0.3]], requires_grad=True)
    b = torch.tensor([[2.0, 0, 0, 1, 2, 1, 0.0]])
    aabb_giou(enclosing_aabb(a), enclosing_aabb(b)).sum().backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


# ---------------------------------------------------------------- matching

def test_hungarian_assigns_each_gt_once():
    cost = torch.rand(1, 8, 5, generator=torch.Generator().manual_seed(0))
    (q, g), = hungarian_match(cost, torch.ones(1, 8, dtype=torch.bool), torch.ones(1, 5, dtype=torch.bool))
    assert sorted(g.tolist()) == [0, 1, 2, 3, 4] and len(set(q.tolist())) == 5


def test_matching_picks_the_obvious_pairs_and_skips_padding():
    # Query 0 sits on GT 1 (class 2), query 2 on GT 0 (class 0); query 1 is far away; GT 2 is padding.
    center = torch.tensor([[[5.0, 5, 0], [-9.0, 9, 0], [0.0, 0, 0]]])
    logits = torch.full((1, 3, C + 1), -4.0)
    logits[0, 0, 2] = logits[0, 2, 0] = logits[0, 1, 1] = 4.0
    out = dict(center=center, size=torch.ones(1, 3, 3), yaw=torch.zeros(1, 3), logits=logits)
    gt_boxes = torch.tensor([[[0.1, 0, 0, 1, 1, 1, 0], [5, 5.1, 0, 1, 1, 1, 0], [-9, 9, 0, 1, 1, 1, 0]]])
    gt_labels = torch.tensor([[0, 2, -1]])
    cost = match_cost(out, gt_boxes, gt_labels)
    (q, g), = hungarian_match(cost, torch.ones(1, 3, dtype=torch.bool), torch.tensor([[True, True, False]]))
    assert dict(zip(g.tolist(), q.tolist())) == {0: 2, 1: 0}
    # An invalid query is never matched, even when it is the best.
    (q, g), = hungarian_match(cost, torch.tensor([[False, True, True]]), torch.tensor([[True, True, False]]))
    assert 0 not in q.tolist() and sorted(g.tolist()) == [0, 1]


# ---------------------------------------------------------------- NMS and decoding

def test_nms_same_class_keeps_higher_score_other_class_survives():
    boxes = np.array([[0, 0, 0, 1, 1, 1, 0], [0.1, 0, 0, 1, 1, 1, 0.2], [0.05, 0, 0, 1, 1, 1, 0],
                      [5, 5, 0, 1, 1, 1, 0]], dtype=np.float32)
    scores = np.array([0.5, 0.9, 0.7, 0.1])
    labels = np.array([0, 0, 1, 0])
    assert nms_3d(boxes, scores, labels, 0.25).tolist() == [1, 2, 3]
    # Suppression is strict: IoU exactly at the threshold keeps both (these two have IoU 1/3).
    two = np.array([[0, 0, 0, 1, 1, 1, 0], [0.5, 0, 0, 1, 1, 1, 0]], dtype=np.float32)
    assert nms_3d(two, np.array([0.9, 0.8]), np.zeros(2), 1 / 3 + 1e-9).tolist() == [0, 1]
    assert nms_3d(two, np.array([0.9, 0.8]), np.zeros(2), 0.25).tolist() == [0]
    assert nms_3d(np.zeros((0, 7)), np.zeros(0), np.zeros(0), 0.25).tolist() == []


def _hand_outputs():
    # Three far-apart queries: objectness 0.9, 0.02 and 0.6; a fourth is padding.
    probs = torch.tensor([[[0.7, 0.1, 0.1, 0.1], [0.01, 0.005, 0.005, 0.98], [0.1, 0.4, 0.1, 0.4],
                           [0.9, 0.0, 0.0, 0.1]]])
    center = torch.tensor([[[0.0, 0, 0], [3.0, 0, 0], [6.0, 0, 0], [9.0, 0, 0]]])
    return dict(logits=probs.log(), center=center, size=torch.ones(1, 4, 3), yaw=torch.full((1, 4), 0.5),
                query_valid=torch.tensor([[True, True, True, False]]))


def test_decode_threshold_labels_and_scores():
    det, = decode_detections(_hand_outputs(), per_class_proposals=False)
    assert det.labels.tolist() == [0, 1]  # query 1 (objectness 0.02) and padded query 3 dropped
    assert np.allclose(det.scores, [0.9 * 0.7, 0.6 * 0.4])
    assert np.allclose(det.boxes, [[0, 0, 0, 1, 1, 1, 0.5], [6, 0, 0, 1, 1, 1, 0.5]])
    assert det.boxes.dtype == np.float32 and det.labels.dtype == np.int64 and det.scores.dtype == np.float32
    high, = decode_detections(_hand_outputs(), objectness_threshold=0.7, per_class_proposals=False)
    assert high.labels.tolist() == [0]


def test_decode_per_class_proposals_and_cap():
    det, = decode_detections(_hand_outputs())
    assert len(det.labels) == 2 * C
    expected = [0.9 * p for p in (0.7, 0.1, 0.1)] + [0.6 * p for p in (0.1, 0.4, 0.1)]
    assert np.allclose(sorted(det.scores), sorted(expected))
    assert np.all(np.diff(det.scores) <= 0)
    capped, = decode_detections(_hand_outputs(), max_detections=2)
    assert np.allclose(capped.scores, [0.63, 0.24])


def test_decode_nms_on_overlapping_queries():
    out = _hand_outputs()
    out["center"][0, 2] = torch.tensor([0.1, 0.0, 0.0])
    det, = decode_detections(out, per_class_proposals=False)
    assert det.labels.tolist() == [0, 1]  # different arg-max classes: both survive
    out["logits"][0, 2] = torch.tensor([0.5, 0.1, 0.0, 0.4]).log()
    det, = decode_detections(out, per_class_proposals=False)
    assert det.labels.tolist() == [0] and np.allclose(det.scores, [0.63])


def test_predict_batch_adds_offsets_and_restores_mode():
    model = _detector(True)
    batch = _batch()
    offsets = torch.tensor([[10.0, 20.0, 1.0], [-5.0, 0.0, 0.0]])
    dets = predict_batch(model, batch, offsets, objectness_threshold=0.0)
    assert model.training
    with torch.no_grad():
        ref = decode_detections(model.eval()(batch)[-1], objectness_threshold=0.0)
    for det, r, off in zip(dets, ref, offsets.numpy()):
        assert len(det.boxes) > 0
        assert np.allclose(det.boxes[:, :3], r.boxes[:, :3] + off)
        assert np.allclose(det.boxes[:, 3:], r.boxes[:, 3:])


# ---------------------------------------------------------------- objective

@pytest.mark.parametrize("has_yaw", [True, False])
def test_objective_overfits_one_batch(has_yaw):
    torch.manual_seed(0)
    objective = DetectionObjective(_detector(has_yaw))
    batch = _batch(yaw=has_yaw)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=2e-3, weight_decay=0.0)
    losses = []
    for _ in range(40):
        out = objective(batch)
        assert set(out) == {"loss", "cls", "center", "size", "giou", "heading"}
        assert torch.isclose(out["loss"], sum(out[k] for k in ("cls", "center", "size", "giou", "heading")))
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(float(out["loss"].detach()))
    assert (out["heading"] > 0) == has_yaw
    assert np.mean(losses[-5:]) < 0.5 * losses[0], losses


def test_gradients_reach_the_encoder():
    objective = DetectionObjective(_detector(True))
    objective(_batch())["loss"].backward()
    grads = [p.grad for p in objective.detector.encoder.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert objective.detector.encoder.token_embed.first[0].weight.grad.abs().sum() > 0


def test_padding_gt_boxes_are_ignored():
    objective = DetectionObjective(_detector(True)).eval()
    batch = _batch()
    padded = dict(batch)
    junk = torch.tensor([[float("nan")] * 7, [1e6, -3, 2, -1, 0, 7, 9]])
    padded["gt_boxes"] = torch.cat([batch["gt_boxes"], junk[:, None]], dim=1)
    padded["gt_labels"] = torch.cat([batch["gt_labels"], torch.tensor([[-1], [5]])], dim=1)
    padded["gt_valid"] = torch.cat([batch["gt_valid"], torch.zeros(2, 1, dtype=torch.bool)], dim=1)
    a, b = objective(batch), objective(padded)
    for key in a:
        assert torch.allclose(a[key], b[key]), key
    # With every GT box padding only the no-object classification remains.
    empty = dict(batch, gt_valid=torch.zeros_like(batch["gt_valid"]))
    out = objective(empty)
    assert torch.isfinite(out["loss"]) and out["center"] == out["size"] == out["giou"] == out["heading"] == 0


def test_queries_know_their_tokens_and_can_start_from_their_features():
    from methods.downstream.detection.model import sample_queries

    centers = torch.randn(2, 6, 3)
    valid = torch.tensor([[True] * 6, [True, False, True, False, True, False]])
    xyz, query_valid, token = sample_queries(centers, valid, 4)
    for b in range(2):
        assert torch.equal(xyz[b][query_valid[b]], centers[b, token[b][query_valid[b]]])
        assert bool(valid[b, token[b][query_valid[b]]].all())
    assert query_valid[1].sum() == 3
    torch.manual_seed(0)
    detector = _detector(False, query_from_tokens=True)
    assert detector.query_from_tokens
    assert torch.isfinite(detector(_batch(yaw=False))[-1]["logits"]).all()

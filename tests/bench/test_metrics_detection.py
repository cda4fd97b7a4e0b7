"""Detection AP / AR: hand-computed cases, conventions, validation, and a per-pair loop reference."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bench.metrics import evaluate_detection
from bench.metrics.detection import voc_ap

NAN = float("nan")


def boxes(rows) -> np.ndarray:
    return np.asarray(rows, float).reshape(-1, len(rows[0]) if len(rows) else 6)


def scene(gt_boxes=(), gt_labels=(), pred_boxes=(), pred_labels=(), pred_scores=()):
    return {
        "gt_boxes": boxes(gt_boxes),
        "gt_labels": np.asarray(gt_labels, int),
        "pred_boxes": boxes(pred_boxes),
        "pred_labels": np.asarray(pred_labels, int),
        "pred_scores": np.asarray(pred_scores, float),
    }


def cube(x, y=0.0, size=1.0):
    return [x, y, 0.0, size, size, size]


# Two GTs far apart; detection on GT0 (0.9), a miss (0.8), detection on GT1 (0.7):
# precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> AP = 1/2 * 1 + 1/2 * 2/3.
HAND_AP = 0.5 + 0.5 * 2 / 3


def test_hand_computed_voc_ap():
    s = scene([cube(0), cube(10)], [0, 0], [cube(0), cube(5), cube(10)], [0, 0, 0], [0.9, 0.8, 0.7])
    res = evaluate_detection([s], [0.25, 0.5], num_classes=1)
    assert set(res) == {0.25, 0.5}
    assert res[0.25]["ap"] == pytest.approx([HAND_AP])
    assert res[0.25]["mAP"] == pytest.approx(HAND_AP)
    assert res[0.5]["recall"] == [1.0] and res[0.5]["AR"] == 1.0
    # Precision 0, 1/2, 2/3, 1/2 at recall 0, 1/4, 1/2, 1/2: the envelope lifts 1/2 at recall 1/4 to 2/3.
    assert voc_ap(np.array([False, True, True, False]), 4) == pytest.approx(0.5 * 2 / 3)


def test_same_split_across_scenes_pools_detections():
    s0 = scene([cube(0)], [0], [cube(0), cube(5)], [0, 0], [0.9, 0.8])
    s1 = scene([cube(10)], [0], [cube(10)], [0], [0.7])
    assert evaluate_detection([s0, s1], [0.5], 1)[0.5]["ap"] == pytest.approx([HAND_AP])


def test_threshold_is_strict():
    # IoU of a unit cube with its lower half is exactly 0.5.
    s = scene([[0, 0, 0, 1, 1, 1]], [0], [[0, 0, -0.25, 1, 1, 0.5]], [0], [1.0])
    res = evaluate_detection([s], [0.5, 0.4999], 1)
    assert res[0.5]["ap"] == [0.0] and res[0.5]["recall"] == [0.0]
    assert res[0.4999]["ap"] == [1.0] and res[0.4999]["recall"] == [1.0]


def test_tied_scores_keep_input_order():
    # Same score: a miss and a hit. Input order decides the ranking (stable sort).
    miss_first = scene([cube(0)], [0], [cube(5), cube(0)], [0, 0], [0.5, 0.5])
    hit_first = scene([cube(0)], [0], [cube(0), cube(5)], [0, 0], [0.5, 0.5])
    assert evaluate_detection([miss_first], [0.5], 1)[0.5]["ap"] == [0.5]
    assert evaluate_detection([hit_first], [0.5], 1)[0.5]["ap"] == [1.0]
    # Across scenes, scene order comes first.
    s_miss = scene([cube(0)], [0], [cube(5)], [0], [0.5])
    s_hit = scene([cube(0)], [0], [cube(0)], [0], [0.5])
    assert evaluate_detection([s_miss, s_hit], [0.5], 1)[0.5]["ap"] == [0.25]
    assert evaluate_detection([s_hit, s_miss], [0.5], 1)[0.5]["ap"] == [0.5]


def test_absent_classes():
    # class 0: GT and a hit; class 1: predictions only; class 2: GT only; class 3: neither.
    s = scene([cube(0), cube(10)], [0, 2], [cube(0), cube(20)], [0, 1], [0.9, 0.8])
    res = evaluate_detection([s], [0.25], 4)[0.25]
    np.testing.assert_array_equal(res["ap"], [1.0, 0.0, 0.0, NAN])
    np.testing.assert_array_equal(res["recall"], [1.0, 0.0, 0.0, NAN])
    assert res["mAP"] == pytest.approx(1 / 3)
    assert res["AR"] == pytest.approx(1 / 3)


def test_predicted_only_class_counts_as_zero_in_map_and_ar():
    # Three classes over two scenes, by hand:
    # class 0: GTs at x=0 and x=10 (scene 0); detections at x=0 (0.9, hit) and x=5 (0.8, miss):
    #   precision 1 at recall 1/2, then 1/2 at recall 1/2 -> AP 1/2, recall 1/2.
    # class 1: GT at x=20 (scene 0) hit by a detection (0.7) -> AP 1, recall 1; its detection at
    #   x=20 in scene 1 (0.6) is a false positive (no class-1 GT there) ranked after the hit, so
    #   AP stays 1 (precision 1 until recall 1).
    # class 2: detections in both scenes (0.95, 0.5), no GT anywhere -> AP 0, recall 0.
    # mAP = (1/2 + 1 + 0) / 3 = 1/2;  AR = (1/2 + 1 + 0) / 3 = 1/2 (3DETR; NaN recall gave 3/4).
    s0 = scene(
        [cube(0), cube(10), cube(20)], [0, 0, 1],
        [cube(0), cube(5), cube(20), cube(30)], [0, 0, 1, 2], [0.9, 0.8, 0.7, 0.95],
    )
    s1 = scene([], [], [cube(20), cube(30)], [1, 2], [0.6, 0.5])
    res = evaluate_detection([s0, s1], [0.5], 3)[0.5]
    np.testing.assert_allclose(res["ap"], [0.5, 1.0, 0.0])
    np.testing.assert_allclose(res["recall"], [0.5, 1.0, 0.0])
    assert res["mAP"] == pytest.approx(0.5)
    assert res["AR"] == pytest.approx(0.5)


def test_duplicates_are_false_positives_without_falling_back():
    # Two GTs 0.2 apart; the duplicate's second-best GT is above threshold but it does not take it.
    gts = [cube(0), cube(0.2)]
    s = scene(gts, [0, 0], [cube(0), cube(0.01), cube(0.2)], [0, 0, 0], [0.9, 0.8, 0.7])
    res = evaluate_detection([s], [0.5], 1)[0.5]
    assert res["ap"] == pytest.approx([HAND_AP])
    assert res["recall"] == [1.0]


def test_matching_stays_within_scene_and_class():
    s0 = scene([cube(0)], [1], [cube(0), cube(0)], [0, 1], [0.9, 0.8])
    s1 = scene([], [], [cube(0)], [1], [0.95])  # same place, other scene: a false positive
    res = evaluate_detection([s0, s1], [0.5], 2)[0.5]
    np.testing.assert_array_equal(res["ap"], [0.0, 0.5])


def test_rotated_predictions_against_axis_aligned_gt():
    gt = scene([[0, 0, 0, 2, 1, 1]], [0], [[0, 0, 0, 1, 2, 1, math.pi / 2]], [0], [1.0])
    assert evaluate_detection([gt], [0.99], 1)[0.99]["ap"] == [1.0]


def test_empty_split_and_empty_scenes():
    res = evaluate_detection([], [0.25], 3)[0.25]
    assert np.isnan(res["ap"]).all() and math.isnan(res["mAP"]) and math.isnan(res["AR"])
    res = evaluate_detection([scene(), scene([cube(0)], [2])], [0.25], 3)[0.25]
    np.testing.assert_array_equal(res["ap"], [NAN, NAN, 0.0])


INVALID = [
    (lambda s: s.pop("pred_scores"), r"^scenes\[1\] is missing 'pred_scores'"),
    (
        lambda s: s.update(pred_boxes=np.zeros((2, 5))),
        r"^scenes\[1\]\['pred_boxes'\]: expected shape \(N, 6\) or \(N, 7\), got \(2, 5\)$",
    ),
    (
        lambda s: s.update(pred_scores=np.ones(3)),
        r"^scenes\[1\]: expected one entry of 'pred_scores' per row of 'pred_boxes', got 3 and 2$",
    ),
    (
        lambda s: s.update(gt_labels=np.zeros(2, int)),
        r"^scenes\[1\]: expected one entry of 'gt_labels' per row of 'gt_boxes'",
    ),
    (lambda s: s["gt_boxes"].__setitem__((0, 2), np.inf), r"^scenes\[1\]\['gt_boxes'\]: expected finite values"),
    (
        lambda s: s["pred_scores"].__setitem__(1, np.nan),
        r"^scenes\[1\]\['pred_scores'\]: expected finite values, found nan/inf at index 1$",
    ),
    (
        lambda s: s.update(pred_labels=np.array([0, 3])),
        r"^scenes\[1\]\['pred_labels'\]: expected class ids in \[0, 3\), found 3$",
    ),
    (lambda s: s.update(gt_labels=np.array([0.5])), r"^scenes\[1\]\['gt_labels'\]: expected integer class ids"),
]


@pytest.mark.parametrize("change, match", INVALID)
def test_invalid_scenes_raise_one_clear_line(change, match):
    good = scene([cube(0)], [0], [cube(0), cube(1)], [0, 1], [0.9, 0.1])
    bad = {k: v.copy() for k, v in good.items()}
    change(bad)
    with pytest.raises(ValueError, match=match) as info:
        evaluate_detection([good, bad], [0.5], 3)
    assert "\n" not in str(info.value)


def test_scene_that_is_not_a_mapping():
    with pytest.raises(ValueError, match=r"^scenes\[0\]: expected a mapping"):
        evaluate_detection([[1, 2]], [0.5], 3)


# --- an independent per-pair loop reference (VoteNet eval_det_cls structure, scalar geometry) ---


def _corners(box):
    c, s = math.cos(box[6]), math.sin(box[6])
    hx, hy = box[3] / 2, box[4] / 2
    return [(box[0] + c * u - s * v, box[1] + s * u + c * v) for u, v in ((hx, hy), (-hx, hy), (-hx, -hy), (hx, -hy))]


def _clip_polygon(poly, p, q):
    """Keep the part of ``poly`` left of the directed line p -> q (Sutherland-Hodgman, scalar)."""

    def side(r):
        return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])

    out = []
    for i, cur in enumerate(poly):
        nxt = poly[(i + 1) % len(poly)]
        sc, sn = side(cur), side(nxt)
        if sc >= 0:
            out.append(cur)
        if (sc >= 0) != (sn >= 0):
            t = sc / (sc - sn)
            out.append((cur[0] + t * (nxt[0] - cur[0]), cur[1] + t * (nxt[1] - cur[1])))
    return out


def loop_iou(a, b) -> float:
    a = list(a) + [0.0] * (7 - len(a))
    b = list(b) + [0.0] * (7 - len(b))
    if a[3] * a[4] * a[5] == 0 or b[3] * b[4] * b[5] == 0:
        return 0.0
    poly = _corners(a)
    edge = _corners(b)
    for i in range(4):
        if poly:
            poly = _clip_polygon(poly, edge[i], edge[(i + 1) % 4])
    area = 0.5 * sum(p[0] * q[1] - q[0] * p[1] for p, q in zip(poly, poly[1:] + poly[:1])) if poly else 0.0
    dz = max(0.0, min(a[2] + a[5] / 2, b[2] + b[5] / 2) - max(a[2] - a[5] / 2, b[2] - b[5] / 2))
    inter = max(area, 0.0) * dz
    union = a[3] * a[4] * a[5] + b[3] * b[4] * b[5] - inter
    return inter / union if union > 0 else 0.0


def loop_evaluate(scenes, threshold, num_classes):
    ap, recall = [], []
    for c in range(num_classes):
        gts = {i: [b for b, l in zip(s["gt_boxes"], s["gt_labels"]) if l == c] for i, s in enumerate(scenes)}
        npos = sum(len(g) for g in gts.values())
        dets = [
            (score, i, box)
            for i, s in enumerate(scenes)
            for box, label, score in zip(s["pred_boxes"], s["pred_labels"], s["pred_scores"])
            if label == c
        ]
        dets.sort(key=lambda d: -d[0])  # Python's sort is stable
        matched = {i: [False] * len(g) for i, g in gts.items()}
        tp = []
        for _, i, box in dets:
            best, jbest = -math.inf, -1
            for j, g in enumerate(gts[i]):
                iou = loop_iou(box, g)
                if iou > best:
                    best, jbest = iou, j
            hit = best > threshold and not matched[i][jbest]
            if hit:
                matched[i][jbest] = True
            tp.append(hit)
        recall.append(sum(tp) / npos if npos else (0.0 if dets else NAN))
        if npos and dets:
            prec = [0.0] + [sum(tp[: k + 1]) / (k + 1) for k in range(len(tp))] + [0.0]
            rec = [0.0] + [sum(tp[: k + 1]) / npos for k in range(len(tp))] + [1.0]
            for k in range(len(prec) - 2, -1, -1):
                prec[k] = max(prec[k], prec[k + 1])
            ap.append(sum((rec[k + 1] - rec[k]) * prec[k + 1] for k in range(len(rec) - 1) if rec[k + 1] != rec[k]))
        else:
            ap.append(0.0 if npos or dets else NAN)
    return ap, recall


def random_scenes(rng, num_scenes, num_classes, rotated):
    scenes = []
    for _ in range(num_scenes):
        g = int(rng.integers(0, 8))
        gt = np.c_[rng.uniform(0, 4, (g, 3)), rng.uniform(0.3, 1.5, (g, 3))]
        if rotated:
            gt = np.c_[gt, rng.uniform(-np.pi, np.pi, g)]
        gt_labels = rng.integers(0, num_classes, g)
        p = int(rng.integers(0, 12))
        src = rng.integers(0, max(g, 1), p)
        pred = gt[src] if g else np.zeros((p, gt.shape[1]))
        pred = pred + rng.normal(0, 0.25, pred.shape) * (rng.random((p, 1)) < 0.8)
        pred[:, 3:6] = np.abs(pred[:, 3:6]) + 0.05
        labels = np.where(rng.random(p) < 0.8, gt_labels[src] if g else 0, rng.integers(0, num_classes, p))
        scores = np.round(rng.random(p), 1)  # coarse scores: many ties
        scenes.append(
            {"gt_boxes": gt, "gt_labels": gt_labels, "pred_boxes": pred, "pred_labels": labels, "pred_scores": scores}
        )
    return scenes


@pytest.mark.parametrize("rotated", [False, True])
def test_matches_loop_reference_on_random_scenes(rotated):
    rng = np.random.default_rng(11 + rotated)
    scenes = random_scenes(rng, 25, 4, rotated)
    res = evaluate_detection(scenes, [0.25, 0.5], 4)
    for t in (0.25, 0.5):
        ap, recall = loop_evaluate(scenes, t, 4)
        np.testing.assert_allclose(res[t]["ap"], ap, atol=1e-12)
        np.testing.assert_allclose(res[t]["recall"], recall, atol=1e-12)
        assert res[t]["mAP"] == pytest.approx(np.nanmean(ap), abs=1e-12)
        assert res[t]["AR"] == pytest.approx(np.nanmean(recall), abs=1e-12)
    assert 0 < res[0.5]["mAP"] < res[0.25]["mAP"] < 1  # not a degenerate comparison

"""Segmentation mIoU / mAcc / oAcc: hand-computed confusion, ignore index, absent classes, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bench.metrics import evaluate_segmentation
from bench.metrics.segmentation import confusion_matrix, segmentation_scores

NAN = float("nan")


def test_hand_computed_confusion_and_scores():
    gt = np.array([0, 0, 0, 1, 1, 2, -1, -1])
    pred = np.array([0, 0, 1, 1, 2, 2, 3, -7])  # the last two are ignored, whatever they predict
    expected = [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]  # rows GT, columns predictions
    np.testing.assert_array_equal(confusion_matrix(gt, pred, 4, -1), expected)
    res = evaluate_segmentation([gt], [pred], 4, ignore_index=-1)
    # IoU: class 0 2/(3+2-2), class 1 1/(2+2-1), class 2 1/(1+2-1), class 3 absent everywhere.
    np.testing.assert_allclose(res["iou"], [2 / 3, 1 / 3, 1 / 2, NAN])
    np.testing.assert_allclose(res["acc"], [2 / 3, 1 / 2, 1.0, NAN])
    assert res["miou"] == pytest.approx((2 / 3 + 1 / 3 + 1 / 2) / 3)
    assert res["macc"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert res["oacc"] == pytest.approx(4 / 6)


def test_confusion_is_summed_over_the_split_not_averaged():
    gts = [np.array([0, 0, 0, 0]), np.array([1])]
    preds = [np.array([0, 0, 0, 0]), np.array([0])]
    res = evaluate_segmentation(gts, preds, 2, ignore_index=-1)
    np.testing.assert_allclose(res["iou"], [4 / 5, 0.0])
    assert res["oacc"] == pytest.approx(4 / 5)


def test_predicted_only_class_has_iou_zero_and_acc_nan():
    res = evaluate_segmentation([np.array([0, 0])], [np.array([0, 1])], 3, ignore_index=-1)
    np.testing.assert_allclose(res["iou"], [0.5, 0.0, NAN])
    np.testing.assert_allclose(res["acc"], [0.5, NAN, NAN])
    assert res["miou"] == pytest.approx(0.25)
    assert res["macc"] == pytest.approx(0.5)


def test_ignore_index_inside_the_class_range():
    gt = np.array([0, 1, 1, 2])
    pred = np.array([0, 1, 0, 1])
    res = evaluate_segmentation([gt], [pred], 3, ignore_index=1)
    # Points with GT 1 are dropped; class 1 is still predicted once (on a GT-2 point): that point is
    # a miss of class 2, and class 1 itself is not scored.
    np.testing.assert_allclose(res["iou"], [1.0, NAN, 0.0])
    np.testing.assert_allclose(res["acc"], [1.0, NAN, 0.0])
    assert res["miou"] == pytest.approx(0.5)


def test_ignore_index_class_is_unscored_but_its_predictions_are_errors():
    # K = 5, ignore_index = 3. The two GT-3 points are dropped (whatever they predict); the two
    # predictions of 3 on a GT-0 and a GT-1 point stay, as misses of classes 0 and 1.
    gt = np.array([0, 0, 0, 1, 1, 2, 2, 3, 3, 4])
    pred = np.array([0, 0, 3, 1, 3, 2, 1, 3, 0, 4])
    expected = [
        [2, 0, 0, 1, 0],
        [0, 1, 0, 1, 0],
        [0, 1, 1, 0, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 1],
    ]  # rows GT, columns predictions
    np.testing.assert_array_equal(confusion_matrix(gt, pred, 5, 3), expected)
    res = evaluate_segmentation([gt], [pred], 5, ignore_index=3)
    # IoU: class 0 2/(3+2-2), class 1 1/(2+2-1), class 2 1/(2+1-1), class 3 unscored, class 4 1/1.
    np.testing.assert_allclose(res["iou"], [2 / 3, 1 / 3, 1 / 2, NAN, 1.0])
    np.testing.assert_allclose(res["acc"], [2 / 3, 1 / 2, 1 / 2, NAN, 1.0])
    # mIoU over the four scored classes: (2/3 + 1/3 + 1/2 + 1) / 4 = 5/8 (counting class 3 as 0
    # gave 1/2). mAcc: (2/3 + 1/2 + 1/2 + 1) / 4 = 2/3. oAcc: 5 right of 8 kept points.
    assert res["miou"] == pytest.approx(5 / 8)
    assert res["macc"] == pytest.approx(2 / 3)
    assert res["oacc"] == pytest.approx(5 / 8)
    # The same rule from the matrix alone; with the default ignore index (-1) class 3 is scored,
    # a predicted-only class with IoU 0.
    assert math.isnan(segmentation_scores(np.array(expected), ignore_index=3)["iou"][3])
    assert segmentation_scores(np.array(expected))["iou"][3] == 0.0


def test_ignore_index_inside_the_range_still_rejects_labels_outside_it():
    with pytest.raises(ValueError, match=r"^scene 0: prediction -1 is outside \[0, 3\)$"):
        evaluate_segmentation([np.array([0, 1])], [np.array([-1, 1])], 3, ignore_index=1)
    with pytest.raises(ValueError, match=r"^scene 0: GT label -1 is outside \[0, 3\) \(ignore_index is 1\)$"):
        evaluate_segmentation([np.array([-1, 1])], [np.array([0, 1])], 3, ignore_index=1)


def test_all_points_ignored_gives_nan_without_warnings():
    with np.errstate(all="raise"):
        res = evaluate_segmentation([np.array([-1, -1])], [np.array([0, 5])], 2, ignore_index=-1)
    assert math.isnan(res["miou"]) and math.isnan(res["macc"]) and math.isnan(res["oacc"])


@pytest.mark.parametrize("ignore_index", [-1, 2])
def test_matches_loop_reference_on_random_labels(ignore_index):
    rng = np.random.default_rng(5)
    gts = [rng.integers(-1, 6, int(n)) for n in rng.integers(0, 300, 7)]
    gts = [np.where(g == -1, ignore_index, g) for g in gts]
    preds = [np.where(rng.random(len(g)) < 0.6, g, rng.integers(0, 6, len(g))) for g in gts]
    res = evaluate_segmentation(gts, preds, 6, ignore_index=ignore_index)
    pairs = [(g, p) for gt, pr in zip(gts, preds) for g, p in zip(gt.tolist(), pr.tolist()) if g != ignore_index]
    for c in range(6):
        if c == ignore_index:
            assert math.isnan(res["iou"][c]) and math.isnan(res["acc"][c])
            continue
        tp = sum(g == c and p == c for g, p in pairs)
        fn = sum(g == c and p != c for g, p in pairs)
        fp = sum(g != c and p == c for g, p in pairs)
        assert res["iou"][c] == pytest.approx(tp / (tp + fp + fn))
        assert res["acc"][c] == pytest.approx(tp / (tp + fn))
    assert res["oacc"] == pytest.approx(sum(g == p for g, p in pairs) / len(pairs))


@pytest.mark.parametrize(
    "gts, preds, match",
    [
        (
            [np.array([0, 1])],
            [np.array([0, 1, 1])],
            r"^scene 0: expected as many predictions as GT labels, got 3 predictions for 2 points$",
        ),
        ([np.array([0]), np.array([0, 1])], [np.array([0]), np.array([0, 3])], r"^scene 1: prediction 3 is outside"),
        (
            [np.array([0]), np.array([-2])],
            [np.array([0]), np.array([0])],
            r"^scene 1: GT label -2 is outside \[0, 3\) \(ignore_index is -1\)$",
        ),
        ([np.array([0.0])], [np.array([0])], r"^scene 0: gt: expected integer labels, got dtype float64$"),
        ([np.array([0])], [], r"^expected one prediction array per scene, got 0 for 1 scenes$"),
    ],
)
def test_invalid_inputs_raise_one_clear_line(gts, preds, match):
    with pytest.raises(ValueError, match=match):
        evaluate_segmentation(gts, preds, 3, ignore_index=-1)


def test_ignore_index_must_be_an_integer():
    with pytest.raises(ValueError, match=r"^ignore_index: expected an integer, got 1.5$"):
        evaluate_segmentation([np.array([0])], [np.array([0])], 3, ignore_index=1.5)

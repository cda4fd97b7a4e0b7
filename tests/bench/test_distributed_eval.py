"""Evaluation sharded over torchrun ranks (``RowContext.evaluate``): the metrics of one process, bit for bit.

Run as a script under torchrun, this file is the worker of ``test_two_ranks_evaluate_as_one_process``.
"""
from __future__ import annotations

import collections
import json
import math
import pathlib
import sys
import zlib

import numpy as np
import pytest

from bench.metrics.segmentation import confusion_from_pairs, label_pairs
from bench.row_context import RowContext
from bench.tasks import DetectionTask, SemanticSegmentationTask
from bench.tracking import NullRun
from datasets.synthetic.dataset import SyntheticIndoor
from datasets.types import Detections
from infra import distributed
from infra.errors import HarnessError
from tests.bench.test_distributed import _require_gloo, _torchrun

NUM_VAL = 7


class _Guesser:
    """A fitted method whose predictions depend on the scene alone, so any rank predicts a scene alike.

    Detection scores are rounded to one decimal: ties across scenes, so AP depends on the order in which
    the scenes' records are merged. ``fail_on`` raises on that scene; ``bad_label_on`` predicts a class
    that does not exist there (an error of the metric computation, on rank 0)."""

    def __init__(self, fail_on: str = "", bad_label_on: str = ""):
        self.fail_on = fail_on
        self.bad_label_on = bad_label_on
        self.seen: list[str] = []

    def _rng(self, scene, salt: int) -> np.random.Generator:
        return np.random.default_rng([zlib.crc32(scene.scene_id.encode()), salt])

    def predict_segmentation(self, scene) -> np.ndarray:
        self.seen.append(scene.scene_id)
        if scene.scene_id == self.fail_on:
            raise ValueError(f"no prediction for {scene.scene_id}")
        rng = self._rng(scene, 0)
        guess = rng.integers(0, 6, scene.num_points)
        pred = np.where((rng.random(scene.num_points) < 0.7) & (scene.semantic >= 0), scene.semantic, guess)
        if scene.scene_id == self.bad_label_on:
            pred[np.flatnonzero(scene.semantic >= 0)[0]] = 99
        return pred.astype(np.int32)

    def predict_detection(self, scene, head: str = "") -> Detections:
        rng = self._rng(scene, 1 + len(head))
        count = len(scene.boxes) + 2
        gt = scene.boxes[rng.integers(0, max(1, len(scene.boxes)), count)] if len(scene.boxes) else \
            np.zeros((count, 7), np.float32)
        boxes = (gt + rng.normal(0, 0.1, gt.shape) * [1, 1, 1, 0.5, 0.5, 0.5, 0]).astype(np.float32)
        labels = rng.integers(0, 3, count)
        return Detections(boxes=boxes, labels=labels, scores=np.round(rng.random(count), 1).astype(np.float32))


def _context(cache: pathlib.Path) -> RowContext:
    dataset = SyntheticIndoor(num_train=1, num_val=NUM_VAL, num_pretrain=1, frames_per_scene=1, image_hw=(24, 32))
    tasks = [SemanticSegmentationTask, DetectionTask, lambda: DetectionTask(head="other")]
    return RowContext("row", 0, dataset, "train", "val", tasks, cache, cache / "results", NullRun())


def _evaluations(context: RowContext, method: _Guesser) -> dict:
    """The evaluations a row may ask for: every task, and one protocol's segmentation under a suffix."""
    return {"all": context.evaluate(method), "probe": context.evaluate(method, suffix="probe", tasks={"seg"})}


def _failure(context: RowContext, method: _Guesser) -> list[str]:
    try:
        context.evaluate(method)
    except Exception as e:  # what each rank raises
        return [type(e).__name__, str(e)]
    return []


def _worker(out: pathlib.Path) -> None:
    distributed.init_from_env()
    context = _context(out / "cache")
    method = _Guesser()
    metrics = _evaluations(context, method)
    ids = [context.dataset.scene_id("val", i) for i in range(NUM_VAL)]
    failed_predicting = _failure(context, _Guesser(fail_on=ids[3]))  # scene 3: rank 1's
    failed_scoring = _failure(context, _Guesser(bad_label_on=ids[3]))  # seen on rank 0, in the merged records
    (out / f"rank{distributed.rank()}.json").write_text(json.dumps(
        {"metrics": metrics, "seen": method.seen, "predicting": failed_predicting, "scoring": failed_scoring}))
    distributed.shutdown()


def _same(ours: dict, theirs: dict) -> bool:
    """Equal keys and values, NaN equal to NaN (json has read both sides' floats back exactly)."""
    return ours.keys() == theirs.keys() and all(
        ours[k] == theirs[k] or (math.isnan(ours[k]) and math.isnan(theirs[k])) for k in ours)


def test_two_ranks_evaluate_as_one_process(tmp_path):
    _require_gloo()
    result = _torchrun(str(pathlib.Path(__file__)), str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    method = _Guesser()
    one = json.loads(json.dumps(_evaluations(_context(tmp_path / "cache"), method)))
    ids = method.seen[:NUM_VAL]
    # scene i on rank i % 2: each rank predicted its share only (twice: every task, then the protocol)
    assert ranks[0]["seen"] == ids[0::2] * 2 and ranks[1]["seen"] == ids[1::2] * 2
    for name in ("all", "probe"):
        assert _same(ranks[0]["metrics"][name], one[name]) and _same(ranks[1]["metrics"][name], one[name]), name
    assert "synthetic/det-other/AP25" in one["all"] and "synthetic/seg-probe/mIoU" in one["probe"]
    # a failure on one rank stops both, the others with its one-line message
    assert ranks[1]["predicting"] == ["ValueError", f"no prediction for {ids[3]}"]
    assert ranks[0]["predicting"] == ["HarnessError", f"rank 1 failed: ValueError: no prediction for {ids[3]}"]
    # the merged records name a scene by its index in the split, whichever rank predicted it
    message = "scene 3: prediction 99 is outside [0, 14)"
    assert ranks[0]["scoring"] == ["ValueError", message]
    assert ranks[1]["scoring"] == ["HarnessError", f"rank 0 failed: ValueError: {message}"]


def test_the_merge_order_decides_tied_detections(tmp_path):
    """Why records are merged in scene order: the same detections in another scene order rank ties otherwise."""
    context = _context(tmp_path)
    info = context.dataset.info
    box = np.array([[0, 0, 0, 1, 1, 1, 0]], np.float32)
    hit = {"gt_boxes": box, "gt_labels": np.zeros(1, np.int64), "pred_boxes": box,
           "pred_labels": np.zeros(1, np.int64), "pred_scores": np.ones(1)}
    miss = {**hit, "gt_boxes": np.zeros((0, 7)), "gt_labels": np.zeros(0, np.int64)}
    scores = []
    for records in ([hit, miss], [miss, hit]):
        task = DetectionTask()
        for record in records:
            task.add_record(record)
        scores.append(task.result(info)["synthetic/det/AP25"])
    assert scores == [100.0, 50.0]


def test_a_scene_record_is_what_add_adds(tmp_path):
    context = _context(tmp_path)
    scenes = context.scenes("val")
    for make_task in context.task_factories:
        added, recorded = make_task(), make_task()
        for scene in scenes:
            added.add(_Guesser(), scene)
            recorded.add_record(recorded.scene_record(_Guesser(), scene))
        assert _same(added.result(context.dataset.info), recorded.result(context.dataset.info))
    with pytest.raises(ValueError, match=r"^scene \S+: expected as many predictions as GT labels"):
        SemanticSegmentationTask().add(type("Short", (), {"predict_segmentation": lambda self, s: [0]})(), scenes[0])


@pytest.mark.parametrize("ignore_index", [-1, 2])
def test_label_pairs_count_every_gt_prediction_pair(ignore_index):
    rng = np.random.default_rng(3)
    for size in (0, 1, 50, 400):
        gt, pred = rng.integers(-1, 6, size), rng.integers(0, 6, size)
        gt[gt == -1] = ignore_index
        pairs = label_pairs(gt, pred)
        reference = collections.Counter(zip(gt.tolist(), pred.tolist()))
        assert pairs[:, :2].tolist() == [list(pair) for pair in sorted(reference)]
        assert {(g, p): n for g, p, n in pairs.tolist()} == reference
        kept = gt != ignore_index
        expected = np.bincount(gt[kept] * 6 + pred[kept], minlength=36).reshape(6, 6)
        np.testing.assert_array_equal(confusion_from_pairs(pairs, 6, ignore_index), expected)
    # labels far apart take the sorting path: the same rows
    far = label_pairs(np.array([5, -7, 10**12, 5]), np.array([1, 1, 2, 1]))
    assert far.tolist() == [[-7, 1, 1], [5, 1, 2], [10**12, 2, 1]]


def test_single_process_sharding_helpers_run_everything_here():
    assert list(distributed.shard(3)) == [0, 1, 2]
    assert distributed.gather_in_order(lambda i: i * i, 4) == [0, 1, 4, 9]
    assert distributed.from_main(lambda: {"a": 1.0}) == {"a": 1.0}
    with pytest.raises(ZeroDivisionError):
        distributed.gather_in_order(lambda i: 1 / (i - 2), 4)
    with pytest.raises(HarnessError):
        distributed.from_main(lambda: (_ for _ in ()).throw(HarnessError("x")))


if __name__ == "__main__":
    _worker(pathlib.Path(sys.argv[1]))

"""Evaluation tasks (bench/tasks.py): metric keys and which of a row's detection heads a task scores."""
from __future__ import annotations

import numpy as np
import pytest

from bench.tasks import DetectionTask
from datasets.types import DatasetInfo, Detections, Scene

INFO = DatasetInfo(name="toy", seg_classes=("a",), det_classes=("box",), seg_to_det=(0,), has_yaw=False)
BOX = np.array([[0.0, 0.0, 0.5, 1.0, 1.0, 1.0, 0.0]], np.float32)
SCENE = Scene("s", np.zeros((1, 3), np.float32), np.zeros((1, 3), np.uint8), np.zeros(1, np.int32),
              np.zeros(1, np.int32), BOX, np.zeros(1, np.int32), np.zeros(1, np.int32))


class TwoHeads:
    """A fitted method with a default head (a hit) and a head named 'far' (a miss)."""

    def predict_detection(self, scene, head: str = ""):
        boxes = BOX if head == "" else BOX + np.array([9, 0, 0, 0, 0, 0, 0], np.float32)
        return Detections(boxes=boxes, labels=np.zeros(1, np.int64), scores=np.ones(1, np.float32))


class OneHead:
    def predict_detection(self, scene):  # methods without heads keep their one-argument signature
        return TwoHeads().predict_detection(scene)


@pytest.mark.parametrize("head, key, ap", [("", "det", 100.0), ("far", "det-far", 0.0)])
def test_a_detection_task_scores_its_head_under_its_own_key(head, key, ap):
    task = DetectionTask(head=head)
    task.add(TwoHeads(), SCENE)
    metrics = task.result(INFO)
    assert metrics[f"toy/{key}/AP25"] == ap and f"toy/{key}/class/box/AP50" in metrics
    assert task.key == key


def test_the_default_task_keeps_calling_predict_detection_with_the_scene_only():
    task = DetectionTask()
    task.add(OneHead(), SCENE)
    assert task.result(INFO)["toy/det/AP25"] == 100.0
    with pytest.raises(ValueError, match="DetectionTask.head"):
        DetectionTask(head="a/b")

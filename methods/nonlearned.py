"""Non-learned reference rows: a geometric-prior segmenter and a clustering detector.

They use no network and no labels at prediction time, so they give every metric path real outputs and a
floor that any pretrained model should beat. Statistics (majority class per geometric bin, mean box size
per class) come from the training split's labels in ``fit``.
"""
from __future__ import annotations

import gin
import numpy as np

from datasets.types import DatasetInfo, Detections, Scene


def room_coordinates(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Height above the floor and horizontal distance to the nearest wall, estimated from the points alone.

    The floor is the 1st percentile of z and the walls the 0.5/99.5 percentiles of x and y (robust to
    stray points); this assumes an upright, axis-aligned room, as ScanNet's aligned scans and the
    synthetic rooms are.
    """
    if len(points) == 0:  # nothing to estimate the room from (a filter left no point)
        return np.zeros(0), np.zeros(0)
    floor = np.percentile(points[:, 2], 1.0)
    low = np.percentile(points[:, :2], 0.5, axis=0)
    high = np.percentile(points[:, :2], 99.5, axis=0)
    to_wall = np.minimum(points[:, :2] - low, high - points[:, :2]).min(axis=1)
    return points[:, 2] - floor, np.maximum(to_wall, 0.0)


class HeightPriorSegmenter:
    """Majority training class per (height above floor, distance to wall) bin."""

    def __init__(self, num_classes: int, height_bin: float = 0.1, wall_bin: float = 0.1, num_bins: int = 40):
        self.num_classes = num_classes
        self.height_bin = height_bin
        self.wall_bin = wall_bin
        self.num_bins = num_bins
        self._counts: np.ndarray | None = None
        self.table: np.ndarray | None = None

    def _bins(self, points: np.ndarray) -> np.ndarray:
        height, to_wall = room_coordinates(points)
        h = np.clip((height / self.height_bin).astype(int), 0, self.num_bins - 1)
        w = np.clip((to_wall / self.wall_bin).astype(int), 0, self.num_bins - 1)
        return h * self.num_bins + w

    def add(self, scene: Scene, ignore_index: int) -> None:
        """Count the classes of one training scene's labelled points per bin."""
        if self._counts is None:
            self._counts = np.zeros((self.num_bins**2, self.num_classes), np.int64)
        keep = scene.semantic != ignore_index
        if not keep.any():  # no labelled point (SUN RGB-D has none): nothing to count
            return
        flat = self._bins(scene.points[keep]) * self.num_classes + scene.semantic[keep]
        self._counts += np.bincount(flat, minlength=self._counts.size).reshape(self._counts.shape)

    def finish(self) -> None:
        """Turn the counts into the majority-class table (empty bins take the overall majority)."""
        if self._counts is None:
            raise ValueError("HeightPriorSegmenter: the training split has no scenes")
        overall = self._counts.sum(axis=0).argmax()
        self.table = np.where(self._counts.sum(axis=1) > 0, self._counts.argmax(axis=1), overall)

    def predict(self, points: np.ndarray) -> np.ndarray:
        if self.table is None:
            raise RuntimeError("HeightPriorSegmenter.predict called before fit")
        return self.table[self._bins(points)].astype(np.int32)


class ClusterBoxDetector:
    """Connected components of the non-floor, non-wall points, one axis-aligned box each.

    Each box is labelled with the classes whose mean training box size (sorted horizontal extents and
    height, in log space) is nearest, the ``top_k`` nearest as separate hypotheses scored exp(-distance).
    """

    def __init__(self, num_classes: int, radius: float = 0.06, min_points: int = 30,
                 floor_margin: float = 0.06, wall_margin: float = 0.08, top_k: int = 3):
        self.num_classes = num_classes
        self.radius = radius
        self.min_points = min_points
        self.floor_margin = floor_margin
        self.wall_margin = wall_margin
        self.top_k = top_k
        self._sums = np.zeros((num_classes, 3))
        self._counts = np.zeros(num_classes)
        self.mean_log_size: np.ndarray | None = None

    @staticmethod
    def _shape_key(extents: np.ndarray) -> np.ndarray:
        horizontal = np.sort(extents[:, :2], axis=1)[:, ::-1]
        return np.log(np.maximum(np.concatenate([horizontal, extents[:, 2:3]], axis=1), 1e-3))

    def add(self, scene: Scene) -> None:
        """Accumulate the box sizes of one training scene per class."""
        np.add.at(self._sums, scene.box_labels, self._shape_key(scene.boxes[:, 3:6]))
        np.add.at(self._counts, scene.box_labels, 1)

    def finish(self) -> None:
        """Mean size per class; classes never seen in training are never predicted (infinite distance)."""
        counts = self._counts[:, None]
        self.mean_log_size = np.where(counts > 0, self._sums / np.maximum(counts, 1), np.inf)

    def predict(self, points: np.ndarray) -> Detections:
        if self.mean_log_size is None:
            raise RuntimeError("ClusterBoxDetector.predict called before fit")
        height, to_wall = room_coordinates(points)
        objects = points[(height > self.floor_margin) & (to_wall > self.wall_margin)]
        clusters = self._clusters(objects)
        if not clusters:
            return Detections(np.zeros((0, 7), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32))
        low = np.stack([objects[c].min(axis=0) for c in clusters])
        high = np.stack([objects[c].max(axis=0) for c in clusters])
        extents = high - low
        distance = np.linalg.norm(self._shape_key(extents)[:, None, :] - self.mean_log_size[None], axis=2)
        k = min(self.top_k, self.num_classes)
        labels = np.argsort(distance, axis=1, kind="stable")[:, :k]
        scores = np.exp(-np.take_along_axis(distance, labels, axis=1))
        boxes = np.concatenate([(low + high) / 2, extents, np.zeros((len(clusters), 1))], axis=1)
        return Detections(np.repeat(boxes, k, axis=0).astype(np.float32), labels.reshape(-1),
                          scores.reshape(-1).astype(np.float32))

    def _clusters(self, points: np.ndarray) -> list[np.ndarray]:
        if len(points) < self.min_points:
            return []
        from scipy.sparse import coo_matrix  # here: importing scipy costs every command
        from scipy.sparse.csgraph import connected_components
        from scipy.spatial import cKDTree

        pairs = cKDTree(points).query_pairs(self.radius, output_type="ndarray")
        graph = coo_matrix((np.ones(len(pairs), bool), (pairs[:, 0], pairs[:, 1])), shape=(len(points),) * 2)
        _, component = connected_components(graph, directed=False)
        sizes = np.bincount(component)
        order = np.argsort(component, kind="stable")
        groups = np.split(order, np.cumsum(sizes)[:-1])
        return [g for g in groups if len(g) >= self.min_points]


@gin.register
class NonLearnedBaseline:
    """Reference row without learning: HeightPriorSegmenter + ClusterBoxDetector, fitted on the train split."""

    def __init__(self, height_bin: float = 0.1, wall_bin: float = 0.1,
                 cluster_radius: float = 0.06, min_cluster_points: int = 30, top_k: int = 3):
        self._segmenter_args = dict(height_bin=height_bin, wall_bin=wall_bin)
        self._detector_args = dict(radius=cluster_radius, min_points=min_cluster_points, top_k=top_k)
        self.segmenter: HeightPriorSegmenter | None = None
        self.detector: ClusterBoxDetector | None = None

    def metric_keys(self, dataset: str, tasks) -> set[str]:
        """The headline metric keys this row reports: every task's (``<dataset>/<key>/<name>``)."""
        return {f"{dataset}/{task.key}/{name}" for task in tasks for name in task.metric_names}

    def run(self, context) -> dict[str, float]:
        """A table row: fit on the train split and evaluate with the context's tasks."""
        return context.fit_and_evaluate(self)

    def fit(self, train_scenes, info: DatasetInfo) -> None:
        """Collect the segmentation and box-size statistics in one pass over the training scenes."""
        self.segmenter = HeightPriorSegmenter(len(info.seg_classes), **self._segmenter_args)
        self.detector = ClusterBoxDetector(len(info.det_classes), **self._detector_args)
        for scene in train_scenes:
            self.segmenter.add(scene, info.ignore_index)
            self.detector.add(scene)
        self.segmenter.finish()
        self.detector.finish()

    def predict_segmentation(self, scene: Scene) -> np.ndarray:
        return self.segmenter.predict(scene.points)

    def predict_detection(self, scene: Scene) -> Detections:
        return self.detector.predict(scene.points)

"""Downstream protocols (DESIGN 2.9): what a fine-tuning run may learn from, each a named gin component.

- ``FullFinetune``: every training scene and label, every parameter trained (the default).
- ``LinearProbe``: the encoder frozen (no gradients, eval mode), the head trained on everything.
- ``LimitedReconstructions`` (``lr``): a percentage of the training scenes [prior: ScanNet Data-Efficient
  benchmark, Hou et al., CVPR 2021: 1 / 5 / 10 / 20 % of the scenes for segmentation]. On ScanNet the
  official lists (``tasks/scenes/<p>.txt``) are read; elsewhere the scenes are the first p % of one
  seeded permutation of the split, so the lists are nested (the 5 % scenes are among the 10 %).
- ``LimitedAnnotations`` (``la``): N labelled points per scene, every other point ignored [prior: the
  same benchmark, 20 / 50 / 100 / 200 points]. On ScanNet the official points files
  (``tasks/points/points<N>``) are read; elsewhere each scene's points are drawn by a generator seeded
  with the protocol's seed and the scene id, among its labelled points. The labelled points are always
  in a training sample (``methods.downstream.scene_batch``), so no sampling step can drop them.

A protocol's ``name`` suffixes the metric keys of its runs: ``synthetic/seg/mIoU`` is the full
fine-tune, ``synthetic/seg-probe/mIoU``, ``synthetic/seg-lr10/mIoU``, ``synthetic/seg-la50/mIoU`` the
others. The subsets do not depend on the row's seed (as the benchmark's fixed lists), so a table's seeds
cover pretraining and fine-tuning, not the choice of scenes or points.
"""
from __future__ import annotations

import math
import pathlib
import zlib

import gin
import numpy as np

from datasets.types import IGNORE_INDEX, Scene


class _Protocol:
    name = "full"
    freeze_encoder = False
    uses_point_labels = False  # True when labelled_points limits the labels (segmentation only)

    def scene_indices(self, scenes) -> list[int]:
        """Which training scenes (indices into ``scenes``, which has ``ids``) the run sees."""
        return list(range(len(scenes)))

    def labelled_points(self, scene: Scene) -> np.ndarray | None:
        """Indices of the scene's points whose labels the run may use (None = all)."""
        return None

    @property
    def description(self) -> str:
        return self.name


@gin.register
class FullFinetune(_Protocol):
    """Every training scene and label; the whole model trained."""


@gin.register
class LinearProbe(_Protocol):
    """The encoder frozen; the task head trained on every training scene and label."""

    name = "probe"
    freeze_encoder = True


@gin.register
class LimitedReconstructions(_Protocol):
    """``percent`` % of the training scenes (at least one).

    Args:
      percent: share of the scenes, e.g. 1, 5, 10, 20 (segmentation) or 10, 20, 40, 80 (detection).
      scene_list: an official list (one scene id per line, ``tasks/scenes/<percent>.txt``); None = the
        first ``percent`` % of a permutation of the split seeded with ``seed`` (nested lists).
      seed: seed of that permutation.
    """

    def __init__(self, percent: float = gin.REQUIRED, scene_list: str | None = None, seed: int = 0):
        if not 0 < percent <= 100:
            raise ValueError(f"LimitedReconstructions.percent: expected a value in (0, 100], got {percent}")
        self.percent = float(percent)
        self.scene_list = scene_list
        self.seed = int(seed)

    @property
    def name(self) -> str:
        return f"lr{self.percent:g}"

    def scene_indices(self, scenes) -> list[int]:
        ids = list(scenes.ids)
        if self.scene_list is not None:
            from datasets.scannet.data_efficient import check_scene_list, read_scene_list

            wanted = read_scene_list(pathlib.Path(self.scene_list))
            check_scene_list(wanted, ids, "the training split", f"LimitedReconstructions.scene_list {self.scene_list}")
            position = {s: i for i, s in enumerate(ids)}
            return sorted(position[s] for s in wanted)
        order = np.random.default_rng(self.seed).permutation(len(ids))
        count = max(1, math.ceil(len(ids) * self.percent / 100 - 1e-9))
        return sorted(int(i) for i in order[:count])


@gin.register
class LimitedAnnotations(_Protocol):
    """``points`` labelled points per scene (all of them where a scene has fewer); the rest ignored.

    Args:
      points: labelled points per scene, e.g. 20, 50, 100, 200.
      annotations: an official points file (``tasks/points/points<N>``: a torch-saved dict from scene id
        to point indices, read without unpickling objects); None = drawn per scene (module docstring).
      seed: seed of the drawn points.
    """

    uses_point_labels = True

    def __init__(self, points: int = gin.REQUIRED, annotations: str | None = None, seed: int = 0):
        if int(points) < 1:
            raise ValueError(f"LimitedAnnotations.points: expected an integer >= 1, got {points}")
        self.points = int(points)
        self.annotations = annotations
        self.seed = int(seed)
        self._official: dict[str, np.ndarray] | None = None

    @property
    def name(self) -> str:
        return f"la{self.points}"

    def labelled_points(self, scene: Scene) -> np.ndarray:
        if self.annotations is not None:
            return self._official_points(scene)
        candidates = np.flatnonzero(scene.semantic != IGNORE_INDEX)
        rng = np.random.default_rng([self.seed, zlib.crc32(scene.scene_id.encode())])
        if len(candidates) <= self.points:
            return candidates.astype(np.int64)
        return np.sort(rng.choice(candidates, self.points, replace=False)).astype(np.int64)

    def _official_points(self, scene: Scene) -> np.ndarray:
        from datasets.scannet.data_efficient import annotated_points, read_point_annotations

        if self._official is None:
            self._official = read_point_annotations(pathlib.Path(self.annotations))
        return annotated_points(self._official, scene.scene_id, scene.num_points,
                                f"LimitedAnnotations.annotations {self.annotations}")

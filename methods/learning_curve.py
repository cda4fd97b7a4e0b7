"""A fine-tuning run's learning curve: its model scored every few epochs on a fixed subset of the
evaluation split, so a reader sees whether a budget has converged (issue: detection on the demo budget).

The points are diagnostics, never a selection: the reported model is still the last epoch's. They are
stored in the run's per-epoch history (``val_<metric>``, e.g. ``finetune/det/val_AP25``), so a run read from
the cache shows its curve too, and scoring draws no randomness from the training's streams, so a run's
weights are the same with or without a curve.
"""
from __future__ import annotations

import dataclasses

import gin


@gin.register
@dataclasses.dataclass(frozen=True)
class LearningCurve:
    """Score the model on the first ``scenes`` scenes of the evaluation split after every ``every``-th
    epoch and after the last [choice: 5 epochs, 8 scenes]."""

    every: int = 5
    scenes: int = 8

    def __post_init__(self):
        for name in ("every", "scenes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LearningCurve.{name}: expected an integer >= 1, got {value!r}")

    def due(self, epoch: int, epochs: int) -> bool:
        """Whether the curve has a point after ``epoch`` (0-based) of ``epochs``."""
        return (epoch + 1) % self.every == 0 or epoch + 1 == epochs

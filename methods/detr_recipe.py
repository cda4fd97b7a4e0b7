"""Named loss recipes of the 3DETR-style detection head (``DetectionObjective``) [prior: 3DETR].

``DetrRecipe()`` is 3DETR's ScanNet recipe (the objective's defaults); ``gin/downstream/finetune.gin`` names
its SUN RGB-D recipe ``sunrgbd/DetrRecipe`` (matcher GIoU 3, centre 5, objectness 5; GIoU loss 0, no-object
0.1). Matching on centre distance and objectness as well gives the Hungarian matcher a signal from the first
step, which is what a small budget needs.

    DetrDetection.recipe = @sunrgbd/DetrRecipe()
"""
from __future__ import annotations

import dataclasses

import gin

from methods.downstream.detection import DetectionObjective, Detector3D


@gin.register
@dataclasses.dataclass(frozen=True)
class DetrRecipe:
    """Matching costs and loss weights of ``DetectionObjective`` (meaning: ``objective.py``'s docstring).

    Defaults: 3DETR's ScanNet recipe [prior]: matcher class 1, centre 0, GIoU 2, objectness 0; losses class 1,
    no-object 0.25, centre 5, size 1, GIoU 1, heading bin 0.1, heading residual 0.5 (Huber, beta 1).
    """

    cost_class: float = 1.0
    cost_center: float = 0.0
    cost_giou: float = 2.0
    cost_objectness: float = 0.0
    weight_cls: float = 1.0
    no_object_weight: float = 0.25
    weight_center: float = 5.0
    weight_size: float = 1.0
    weight_giou: float = 1.0
    weight_heading_cls: float = 0.1
    weight_heading_reg: float = 0.5
    heading_huber_beta: float = 1.0

    def objective(self, detector: Detector3D) -> DetectionObjective:
        """The training objective of ``detector`` with these costs and weights."""
        return DetectionObjective(detector, **dataclasses.asdict(self))

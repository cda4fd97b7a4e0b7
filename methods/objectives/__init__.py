"""Pretraining objectives (DESIGN.md 2.5-2.8) as gin-registered specs that build torch modules.

Every spec has ``build(teacher_dim, group_weights, previous, seed) -> nn.Module``; ``previous`` is the
``state_dict`` of the previous stage's encoder (or None), ``seed`` the stage's seed (the masks derive
from it and the spec's own ``seed`` offset; ``infra.seeding``). The built module's ``forward(batch)``
returns ``{"loss": total to backpropagate, <component>: detached value, ...}`` and its ``encoder``
attribute is the ``TransformerEncoder`` handed to the next stage or to fine-tuning. Optimise only
``p.requires_grad`` parameters (MTP's frozen teacher is a registered submodule). Batch layout:
``methods.objectives.common``.

- ``RegionDistillation``: Stage 1, region-level dense distillation + group balancing [paper].
- ``MaskedTokenPrediction``: Stage 2, MTP against the frozen Stage-1 encoder [paper].
- ``DistillationWithMTP``: Table 4's one-stage variant [choice].
- ``PointMAE``, ``Bridge3DStyle``: baselines [prior].
"""
from methods.objectives.common import MaskSampler, TokenSplit
from methods.objectives.distillation import (
                                             DistillationWithMTP,
                                             DistillationWithMTPModel,
                                             RegionDistillation,
                                             RegionDistillationModel,
)
from methods.objectives.mtp import MaskedTokenPrediction, MaskedTokenPredictionModel
from methods.objectives.reconstruction import Bridge3DStyle, Bridge3DStyleModel, PointMAE, PointMAEModel

__all__ = [
    "Bridge3DStyle", "Bridge3DStyleModel", "DistillationWithMTP", "DistillationWithMTPModel",
    "MaskSampler", "MaskedTokenPrediction", "MaskedTokenPredictionModel", "PointMAE", "PointMAEModel",
    "RegionDistillation", "RegionDistillationModel", "TokenSplit",
]

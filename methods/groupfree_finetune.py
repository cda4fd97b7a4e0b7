"""GroupFree3D-style detection fine-tuning (DESIGN.md 2.9) [prior: Liu et al., ICCV 2021; paper Table 1].

An alternative to the 3DETR-style ``DetrDetection`` for a ``FinetuneRow``'s ``detection`` (or one of its
``detection_heads``): the same (possibly pretrained) token encoder and KNN tokens, then
``methods.downstream.detection.groupfree``. Dense per-token objectness labels make it converge far faster
than 3DETR's set matching, which matters on small budgets.

    FinetuneRow.detection = @GroupFreeDetection()
    GroupFreeDetection.recipe = @sunrgbd/GroupFreeRecipe()   # GroupFree3D's SUN RGB-D loss settings
"""
from __future__ import annotations

import dataclasses

import gin

from methods.downstream.detection import GroupFreeDetector, GroupFreeObjective
from methods.encoder import EncoderSpec
from methods.finetune_spec import DetectionSpec
from methods.learning_curve import LearningCurve
from methods.train import TrainSchedule


@gin.register
@dataclasses.dataclass(frozen=True)
class GroupFreeRecipe:
    """Loss settings of ``GroupFreeObjective`` (meaning: its module docstring). Defaults: GroupFree3D's
    ScanNet recipe [prior]; its SUN RGB-D recipe is ``weight_kps`` 0.2, ``weight_objectness`` 0.4,
    ``center_delta`` 1/9, ``size_delta`` 0.0625, ``heading_delta`` 0.04 (``gin/downstream/finetune.gin``
    names it ``sunrgbd/GroupFreeRecipe``). ``min_coverage`` / ``margin``: a token belongs to a box holding
    at least that share of its points [choice: 0.5], faces grown by ``margin`` metres [choice: 0]."""

    kps_topk: int = 4
    min_coverage: float = 0.5
    margin: float = 0.0
    weight_kps: float = 0.8
    weight_objectness: float = 0.1
    weight_box: float = 1.0
    weight_cls: float = 0.1
    weight_center: float = 1.0
    weight_size: float = 1.0
    weight_heading_cls: float = 0.1
    weight_heading_reg: float = 1.0
    center_delta: float = 0.04
    size_delta: float = 1 / 9
    heading_delta: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    scale: float = 10.0

    def objective(self, detector: GroupFreeDetector) -> GroupFreeObjective:
        """The training objective of ``detector`` with these settings."""
        return GroupFreeObjective(detector, **dataclasses.asdict(self))


@gin.register
class GroupFreeDetection(DetectionSpec):
    """GroupFree3D-style detection: per-token objectness picks the top-k tokens as queries (KPS), a
    transformer decoder refines their boxes layer by layer, targets come from the object each query's token
    lies in (no Hungarian matching); class-aware 3D NMS at evaluation.

    Args:
      tokenizer: downstream tokenizer (KNN).
      encoder: must equal the pretraining encoder spec.
      num_points: points sampled per scene (paper: 40,000; GroupFree3D: 50,000 ScanNet, 20,000 SUN RGB-D).
      num_queries, decoder_depth, heads, feedforward, dropout, head_dropout, num_heading_bins: decoder sizes
        [prior: GroupFree3D 256, 6, 8, 2048, 0.1, 0, 12]; its width is the encoder's.
      recipe: loss settings (``GroupFreeRecipe``; None = GroupFree3D's ScanNet recipe).
      class_from_size: class logits also from each box's predicted size [choice: off, as GroupFree3D]
        (``methods.downstream.detection.groupfree``).
      roi_class, roi_points, roi_margin: class logits also from the points inside each box
        (``methods.downstream.detection.roi_class``) [choice: off, 64 points, faces grown by 0.1 of each extent].
      objectness_threshold, nms_iou: post-processing [prior: GroupFree3D's evaluation keeps every box
        (0.0), class-aware NMS at 0.25].
    """

    model_name = "GroupFree3D-style head"

    def __init__(self, tokenizer=gin.REQUIRED, encoder: EncoderSpec | None = None, num_points: int = 40_000,
                 schedule: TrainSchedule | None = None, num_queries: int = 256, decoder_depth: int = 6,
                 heads: int = 8, feedforward: int = 2048, dropout: float = 0.1, head_dropout: float = 0.0,
                 num_heading_bins: int = 12, recipe: GroupFreeRecipe | None = None,
                 objectness_threshold: float = 0.0, nms_iou: float = 0.25, augment: bool = True,
                 protocol=None, encoder_lr_scale: float = 1.0, layer_decay: float = 1.0,
                 curve: LearningCurve | None = None, class_from_size: bool = False, roi_class: bool = False,
                 roi_points: int = 64, roi_margin: float = 0.1):
        super().__init__(tokenizer=tokenizer, encoder=encoder, num_points=num_points, schedule=schedule,
                         augment=augment, protocol=protocol, encoder_lr_scale=encoder_lr_scale,
                         layer_decay=layer_decay, curve=curve,
                         objectness_threshold=objectness_threshold, nms_iou=nms_iou)
        if num_queries < 1 or decoder_depth < 0:
            raise ValueError(f"GroupFreeDetection: num_queries >= 1 and decoder_depth >= 0 expected, got "
                             f"{num_queries}, {decoder_depth}")
        self.num_queries = num_queries
        self.decoder_depth = decoder_depth
        self.heads = heads
        self.feedforward = feedforward
        self.dropout = dropout
        self.head_dropout = head_dropout
        self.num_heading_bins = num_heading_bins
        self.recipe = recipe or GroupFreeRecipe()
        self.class_from_size = class_from_size
        self.roi_class = roi_class
        self.roi_points = roi_points
        self.roi_margin = roi_margin

    def fit(self, pretrained_state, pretrain_key: str, scenes, info, cache_root, seed: int, scorer=None):
        """Train (or resume, or reuse) the detector; returns (model, per-epoch history)."""
        def build():
            model = GroupFreeDetector(self._encoder(pretrained_state, f"pretraining {pretrain_key}"),
                                      len(info.det_classes), info.has_yaw, num_queries=self.num_queries,
                                      decoder_depth=self.decoder_depth, heads=self.heads,
                                      feedforward=self.feedforward, dropout=self.dropout,
                                      head_dropout=self.head_dropout, num_heading_bins=self.num_heading_bins,
                                      class_from_size=self.class_from_size, roi_class=self.roi_class,
                                      roi_points=self.roi_points, roi_margin=self.roi_margin)
            return model, self.recipe.objective(model)

        return self._fit(build, pretrain_key, scenes, info, cache_root, seed, scorer)

    def head_parameters(self, info) -> float:
        w = self.encoder.width
        return self.decoder_depth * (4 * w * w + 2 * w * self.feedforward) + (self.decoder_depth + 1) * 2 * w * w

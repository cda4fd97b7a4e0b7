"""3D detection fine-tuning heads (DESIGN.md 2.9): 3DETR-style [prior: Misra et al. 2021, simplified] and
GroupFree3D-style.

- ``model``: ``Detector3D`` -- token encoder, FPS queries from valid token centres, pre-norm
  transformer decoder, box heads shared across layers (one box set per layer).
- ``objective``: ``DetectionObjective`` -- per-layer Hungarian matching and CE + L1 + GIoU losses,
  for ``methods.train.train``.
- ``postprocess``: ``decode_detections`` / ``nms_3d`` / ``predict_batch`` -> ``Detections``.
- ``boxes``: heading bin coding and the differentiable axis-aligned GIoU.
- ``groupfree`` / ``groupfree_objective``: the GroupFree3D-style alternative [prior: Liu et al. 2021] --
  per-token objectness (KPS) picks the queries, a decoder refines boxes layer by layer, targets from the
  object each query's token lies in; decoded by the same ``postprocess``. ``roi_class``: its optional class
  head on the points inside each box.
- ``vote_group``: a bottom-up alternative (not the paper's) [prior: VoteNet's votes, PointGroup's grouping]
  -- every point predicts its class or background, its object's centre offset, size and heading; the moved
  points are grouped into boxes.
"""
from methods.downstream.detection.boxes import aabb_giou, angle_to_bin, bin_to_angle, enclosing_aabb
from methods.downstream.detection.groupfree import GroupFreeDetector, select_queries
from methods.downstream.detection.groupfree_objective import GroupFreeObjective, kps_labels, token_assignment
from methods.downstream.detection.model import DecoderLayer, Detector3D, sample_queries
from methods.downstream.detection.objective import DetectionObjective, hungarian_match, match_cost, pred_boxes
from methods.downstream.detection.postprocess import decode_detections, nms_3d, predict_batch
from methods.downstream.detection.vote_group import (VoteGroupDetector, VoteGroupObjective, group_votes,
                                                     point_box_assignment)

__all__ = [
    "DecoderLayer", "DetectionObjective", "Detector3D", "GroupFreeDetector", "GroupFreeObjective", "aabb_giou",
    "angle_to_bin", "bin_to_angle", "decode_detections", "enclosing_aabb", "hungarian_match", "kps_labels",
    "match_cost", "nms_3d", "pred_boxes", "predict_batch", "sample_queries", "select_queries", "token_assignment",
    "VoteGroupDetector", "VoteGroupObjective", "group_votes", "point_box_assignment",
]

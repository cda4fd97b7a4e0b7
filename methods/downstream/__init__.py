"""Downstream fine-tuning (DESIGN.md 2.9): whole scenes, KNN tokens, the pretrained encoder loaded.

- ``scene_batch``: scene samples (+ augmentation), their tokens, batches (segmentation and detection).
- ``segmentation``: feature propagation, ``PointSegmenter``, its objective, whole-scene prediction,
  name-checked loading of a pretrained encoder; protocols "full" (default) and "probe".
- ``detection``: 3DETR-style ``Detector3D``, Hungarian-matched ``DetectionObjective``, 3D NMS decoding.
"""
from methods.downstream.detection import DetectionObjective, Detector3D, decode_detections, nms_3d, predict_batch
from methods.downstream.scene_batch import SceneSamples, augment_sample, collate_scenes, scene_sample, scene_tokens
from methods.downstream.segmentation import (PROTOCOLS, PointSegmenter, SegmentationObjective, freeze_encoder,
                                             load_pretrained_encoder, predict_scene_labels, propagate_features)

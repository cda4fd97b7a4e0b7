"""Downstream fine-tuning as cached steps, and the table row that runs pretrain -> fine-tune -> evaluate.

Each fine-tuning run's checkpoint folder is keyed by the content fingerprint of its configuration, of the
pretraining chain it starts from (``Pretrained.key``, or "none"), of the training scenes and of the seed:
rows that share a pretrained encoder and a fine-tune configuration train once, a re-run of a finished
table trains nothing, and an interrupted fine-tune resumes from its last epoch.
"""
from __future__ import annotations

import math
import pathlib

import gin
import torch

from bench.fingerprint import fingerprint
from datasets.types import Detections, Scene
from methods.downstream.detection import DetectionObjective, Detector3D, predict_batch
from methods.downstream.scene_batch import SceneSamples, collate_scenes
from methods.downstream.segmentation import (PointSegmenter, SegmentationObjective, load_pretrained_encoder,
                                             predict_scene_labels)
from methods.encoder import EncoderSpec
from methods.train import TrainSchedule, train


class _Finetune:
    """What segmentation and detection fine-tuning share: the encoder, the tokens, the schedule, caching."""

    task = ""

    def __init__(self, tokenizer, encoder: EncoderSpec | None, num_points: int, schedule: TrainSchedule | None,
                 augment: bool):
        self.tokenizer = tokenizer
        self.encoder = encoder or EncoderSpec()
        self.num_points = int(num_points)
        self.schedule = schedule or TrainSchedule()
        self.augment = augment

    def _encoder(self, pretrained_state, source: str) -> torch.nn.Module:
        encoder = self.encoder.build()
        load_pretrained_encoder(encoder, pretrained_state, source)
        return encoder

    def _fit(self, objective: torch.nn.Module, pretrain_key: str, scenes, info, cache_root, seed: int) -> list[dict]:
        key = fingerprint(self, pretrain_key, scenes.folder.name, seed)
        folder = pathlib.Path(cache_root) / "finetune" / f"{self.task}-{key}"
        # Rotating an axis-aligned dataset (ScanNet) would give its boxes a yaw the model cannot predict.
        rotation = math.pi if info.has_yaw else 0.0
        data = SceneSamples(scenes, self.num_points, self.tokenizer, seed, augment=self.augment,
                            max_rotation=rotation)
        return train(objective, data, collate_scenes, self.schedule, folder / "checkpoint.pt", seed,
                     name=f"finetune/{self.task}")


@gin.register
class SegmentationFinetune(_Finetune):
    """Semantic segmentation on whole scenes (DESIGN 2.9): KNN tokens, the (pretrained) encoder, 3-NN feature
    propagation to every point, an MLP head, cross-entropy with the ignore index.

    Args:
      tokenizer: downstream tokenizer (KNN; the paper's downstream uses 2048 x 128 tokens from 40k points).
      encoder: must equal the pretraining encoder spec (loading is name- and shape-checked).
      num_points: points sampled per scene for training and as token support at evaluation.
      protocol: "full" fine-tune (default) or "probe" (frozen encoder, head only).
      propagation_power: feature propagation weights 1/d^power; 2 = PointNet++ / Point-MAE [prior], 1 = 1/d.
    """

    task = "seg"

    def __init__(self, tokenizer=gin.REQUIRED, encoder: EncoderSpec | None = None, num_points: int = 40_000,
                 schedule: TrainSchedule | None = None, protocol: str = "full", hidden: int = 256,
                 augment: bool = True, propagation_power: float = 2.0):
        super().__init__(tokenizer, encoder, num_points, schedule, augment)
        self.protocol = protocol
        self.hidden = hidden
        self.propagation_power = float(propagation_power)

    def fit(self, pretrained_state, pretrain_key: str, scenes, info, cache_root, seed: int):
        """Train (or resume, or reuse) the segmenter; returns (model, per-epoch history)."""
        model = PointSegmenter(self._encoder(pretrained_state, f"pretraining {pretrain_key}"),
                               len(info.seg_classes), hidden=self.hidden, protocol=self.protocol,
                               propagation_power=self.propagation_power)
        history = self._fit(SegmentationObjective(model, ignore_index=info.ignore_index), pretrain_key,
                            scenes, info, cache_root, seed)
        return model, history

    def predict(self, model, scene: Scene, seed: int):
        return predict_scene_labels(model, scene, self.tokenizer, self.num_points, seed)


@gin.register
class DetectionFinetune(_Finetune):
    """3DETR-style detection (DESIGN 2.9): queries from token centres, transformer decoder, box heads,
    Hungarian matching; objectness threshold and class-aware 3D NMS at evaluation.

    Args:
      tokenizer: downstream tokenizer (KNN).
      encoder: must equal the pretraining encoder spec.
      num_points: points sampled per scene (paper: 40,000).
      num_queries, decoder_depth: 3DETR's are 256 and 8.
      objectness_threshold, nms_iou: post-processing [prior: 0.05, 0.25].
      query_from_tokens: start queries from their tokens' encoder features (GroupFree3D-style) instead of
        3DETR's zeros; converges much faster on small budgets (the demo profile turns it on).
    """

    task = "det"

    def __init__(self, tokenizer=gin.REQUIRED, encoder: EncoderSpec | None = None, num_points: int = 40_000,
                 schedule: TrainSchedule | None = None, num_queries: int = 256, decoder_depth: int = 8,
                 objectness_threshold: float = 0.05, nms_iou: float = 0.25, augment: bool = True,
                 query_from_tokens: bool = False):
        super().__init__(tokenizer, encoder, num_points, schedule, augment)
        self.query_from_tokens = query_from_tokens
        self.num_queries = num_queries
        self.decoder_depth = decoder_depth
        self.objectness_threshold = objectness_threshold
        self.nms_iou = nms_iou

    def fit(self, pretrained_state, pretrain_key: str, scenes, info, cache_root, seed: int):
        """Train (or resume, or reuse) the detector; returns (model, per-epoch history)."""
        model = Detector3D(self._encoder(pretrained_state, f"pretraining {pretrain_key}"), len(info.det_classes),
                           info.has_yaw, num_queries=self.num_queries, decoder_depth=self.decoder_depth,
                           query_from_tokens=self.query_from_tokens)
        history = self._fit(DetectionObjective(model), pretrain_key, scenes, info, cache_root, seed)
        return model, history

    def predict(self, model, scene: Scene, seed: int) -> Detections:
        data = SceneSamples([scene], self.num_points, self.tokenizer, seed, augment=False)
        batch = collate_scenes([data[0]])
        return predict_batch(model, batch, batch["offset"], objectness_threshold=self.objectness_threshold,
                             nms_iou=self.nms_iou)[0]


@gin.register
class FinetuneRow:
    """A table row: (optional) pretraining, then fine-tuning for each configured task, then evaluation.

    Args:
      pretrain: a ``PretrainRow`` (e.g. ``@stage2/PretrainRow()``), or None for "no pretraining".
      segmentation, detection: fine-tuning specs, or None to skip a task.
    """

    def __init__(self, pretrain=None, segmentation: SegmentationFinetune | None = None,
                 detection: DetectionFinetune | None = None):
        self.pretrain = pretrain
        self.segmentation = segmentation
        self.detection = detection
        self._models: dict[str, torch.nn.Module] = {}
        self._seed = 0

    def run(self, context) -> dict[str, float]:
        """Pretrain (cached), fine-tune each task (cached), evaluate on the evaluation split."""
        self._seed = context.seed
        pretrained = self.pretrain.pretrain(context) if self.pretrain is not None else None
        state, key = (pretrained.encoder, pretrained.key) if pretrained else (None, "none")
        metrics = dict(pretrained.metrics) if pretrained else {}
        scenes = context.scenes(context.train_split)
        for name, spec in (("seg", self.segmentation), ("det", self.detection)):
            if spec is None:
                continue
            model, history = spec.fit(state, key, scenes, context.dataset.info, context.cache_root, context.seed)
            self._models[name] = model
            for epoch, values in enumerate(history):
                context.log_metrics({f"finetune/{name}/{k}": v for k, v in values.items()}, epoch)
        metrics.update(context.evaluate(self))
        return metrics

    def predict_segmentation(self, scene: Scene):
        return self.segmentation.predict(self._models["seg"], scene, self._seed)

    def predict_detection(self, scene: Scene) -> Detections:
        return self.detection.predict(self._models["det"], scene, self._seed)

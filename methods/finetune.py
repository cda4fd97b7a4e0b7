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

from bench import timing
from bench.fingerprint import fingerprint
from bench.seeding import derive_seed, torch_seeded
from datasets.types import Detections, Scene
from methods.downstream.detection import Detector3D, predict_batch
from methods.downstream.scene_batch import SceneSamples, collate_scenes
from methods.downstream.segmentation import (PointSegmenter, SegmentationObjective, load_pretrained_encoder,
                                             predict_scene_labels)
from methods.detr_recipe import DetrRecipe
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

    def step_seed(self, seed: int) -> int:
        """The seed of everything random in this fine-tuning run (initialisation, data order, augmentation,
        tokens, dropout): the row's ``seed`` and the task, the same for every row (``bench.seeding``)."""
        return derive_seed(seed, f"finetune/{self.task}")

    def _encoder(self, pretrained_state, source: str) -> torch.nn.Module:
        encoder = self.encoder.build()
        load_pretrained_encoder(encoder, pretrained_state, source)
        return encoder

    def key(self, pretrain_key: str, scenes_key: str, seed: int) -> str:
        """Content key of the fine-tuned model: this configuration, the pretraining chain (``"none"``),
        the training scenes (their cache folder's name) and the seed."""
        return fingerprint(self, pretrain_key, scenes_key, seed)

    def _fit(self, build, pretrain_key: str, scenes, info, cache_root, seed: int):
        """Build the model (``build()`` -> (model, training objective)) from this run's seed, then train
        (or resume, or reuse) it; returns (model, per-epoch history)."""
        key = self.key(pretrain_key, scenes.folder.name, seed)
        folder = pathlib.Path(cache_root) / "finetune" / f"{self.task}-{key}"
        step_seed = self.step_seed(seed)
        with torch_seeded(step_seed), timing.span(f"finetune/{self.task}"):
            model, objective = build()
        # Rotating an axis-aligned dataset (ScanNet) would give its boxes a yaw the model cannot predict.
        rotation = math.pi if info.has_yaw else 0.0
        data = SceneSamples(scenes, self.num_points, self.tokenizer, step_seed, augment=self.augment,
                            max_rotation=rotation)
        history = train(objective, data, collate_scenes, self.schedule, folder / "checkpoint.pt", step_seed,
                        name=f"finetune/{self.task}")
        return model, history


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
        def build():
            model = PointSegmenter(self._encoder(pretrained_state, f"pretraining {pretrain_key}"),
                                   len(info.seg_classes), hidden=self.hidden, protocol=self.protocol,
                                   propagation_power=self.propagation_power)
            return model, SegmentationObjective(model, ignore_index=info.ignore_index)

        return self._fit(build, pretrain_key, scenes, info, cache_root, seed)

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
      recipe: matching costs and loss weights (``DetrRecipe``; None = 3DETR's ScanNet recipe).
      head_dropout: dropout in the box heads [prior: 3DETR 0.3].
    """

    task = "det"

    def __init__(self, tokenizer=gin.REQUIRED, encoder: EncoderSpec | None = None, num_points: int = 40_000,
                 schedule: TrainSchedule | None = None, num_queries: int = 256, decoder_depth: int = 8,
                 objectness_threshold: float = 0.05, nms_iou: float = 0.25, augment: bool = True,
                 query_from_tokens: bool = False, recipe: DetrRecipe | None = None, head_dropout: float = 0.3):
        super().__init__(tokenizer, encoder, num_points, schedule, augment)
        self.query_from_tokens = query_from_tokens
        self.recipe = recipe or DetrRecipe()
        self.head_dropout = head_dropout
        self.num_queries = num_queries
        self.decoder_depth = decoder_depth
        self.objectness_threshold = objectness_threshold
        self.nms_iou = nms_iou

    def fit(self, pretrained_state, pretrain_key: str, scenes, info, cache_root, seed: int):
        """Train (or resume, or reuse) the detector; returns (model, per-epoch history)."""
        def build():
            model = Detector3D(self._encoder(pretrained_state, f"pretraining {pretrain_key}"),
                               len(info.det_classes), info.has_yaw, num_queries=self.num_queries,
                               decoder_depth=self.decoder_depth, query_from_tokens=self.query_from_tokens,
                               head_dropout=self.head_dropout)
            return model, self.recipe.objective(model)

        return self._fit(build, pretrain_key, scenes, info, cache_root, seed)

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
      detection_heads: more detection specs by head name (e.g. ``{'3detr': @DetectionFinetune(),
        'groupfree': @GroupFreeDetection()}``), each fine-tuned on its own and scored by a
        ``DetectionTask`` whose ``head`` names it (metrics ``<dataset>/det-<head>/...``).
    """

    def __init__(self, pretrain=None, segmentation: SegmentationFinetune | None = None,
                 detection: DetectionFinetune | None = None, detection_heads: dict | None = None):
        self.pretrain = pretrain
        self.segmentation = segmentation
        self.detection = detection
        self.detection_heads = dict(detection_heads or {})
        for head in self.detection_heads:
            if not (isinstance(head, str) and head.replace("_", "").isalnum()):
                raise ValueError(f"FinetuneRow.detection_heads: head names must be letters, digits or _, got {head!r}")
        self._models: dict[str, torch.nn.Module] = {}
        self._seed = 0

    def _tasks(self):
        tasks = [(name, spec) for name, spec in (("seg", self.segmentation), ("det", self.detection)) if spec]
        return tasks + [(f"det-{head}", spec) for head, spec in self.detection_heads.items()]

    def _keys(self, context) -> tuple[str, dict[str, str]]:
        """(pretraining key or "none", task -> fine-tuned model key), computed without running anything."""
        pretrain_key = self.pretrain.key(context) if self.pretrain is not None else "none"
        scenes_key = context.scene_folder(context.train_split).name
        return pretrain_key, {name: spec.key(pretrain_key, scenes_key, context.seed) for name, spec in self._tasks()}

    def step_keys(self, context) -> list[str]:
        """Content keys of the steps this row computes (each pretraining stage, each fine-tuning run), so
        a scheduler can start the longest rows first and see which rows share a step."""
        stages = self.pretrain.stage_keys(context) if self.pretrain is not None else []
        return stages + list(self._keys(context)[1].values())

    def run(self, context) -> dict[str, float]:
        """Pretrain (cached), fine-tune each task (cached), evaluate on the evaluation split (cached:
        a row whose every step is unchanged returns its evaluation without loading a model)."""
        pretrain_key, models = self._keys(context)
        scenes = context.scenes(context.train_split)
        return context.cached_result(("FinetuneRow", pretrain_key, models), lambda: self._run(context, scenes))

    def _run(self, context, scenes) -> dict[str, float]:
        self._seed = context.seed
        pretrained = self.pretrain.pretrain(context) if self.pretrain is not None else None
        state, key = (pretrained.encoder, pretrained.key) if pretrained else (None, "none")
        metrics = dict(pretrained.metrics) if pretrained else {}
        for name, spec in self._tasks():
            model, history = spec.fit(state, key, scenes, context.dataset.info, context.cache_root, context.seed)
            self._models[name] = model
            for epoch, values in enumerate(history):
                context.log_metrics({f"finetune/{name}/{k}": v for k, v in values.items()}, epoch)
        metrics.update(context.evaluate(self))
        return metrics

    def predict_segmentation(self, scene: Scene):
        return self.segmentation.predict(self._models["seg"], scene, self._seed)

    def predict_detection(self, scene: Scene, head: str = "") -> Detections:
        """Detections of ``detection`` ("" head) or of ``detection_heads[head]``."""
        if not head:
            return self.detection.predict(self._models["det"], scene, self._seed)
        return self.detection_heads[head].predict(self._models[f"det-{head}"], scene, self._seed)

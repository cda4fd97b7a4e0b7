"""Downstream fine-tuning as cached steps, and the table row that runs pretrain -> fine-tune -> evaluate.

Each fine-tuning run's checkpoint folder is keyed by the content fingerprint of its configuration, of the
pretraining chain it starts from (``Pretrained.key``, or "none"), of the training scenes and of the seed:
rows that share a pretrained encoder and a fine-tune configuration train once, a re-run of a finished
table trains nothing, and an interrupted fine-tune resumes from its last epoch.
"""
from __future__ import annotations

import gin
import torch

from datasets.types import Detections, Scene
from infra.progress import note_once
from methods.detr_recipe import DetrRecipe
from methods.downstream.detection import Detector3D
from methods.downstream.segmentation import (
    PointSegmenter,
    SegmentationObjective,
    predict_scene_labels,
)
from methods.encoder import EncoderSpec
from methods.finetune_spec import DetectionSpec, FinetuneSpec
from methods.learning_curve import LearningCurve
from methods.step_memory import StepMemory
from methods.train import TrainSchedule


@gin.register
class SegmentationFinetune(FinetuneSpec):
    """Semantic segmentation on whole scenes (DESIGN 2.9): KNN tokens, the (pretrained) encoder, 3-NN feature
    propagation to every point, an MLP head, cross-entropy with the ignore index.

    Args:
      tokenizer: downstream tokenizer (KNN; the paper's downstream uses 2048 x 128 tokens from 40k points).
      encoder: must equal the pretraining encoder spec (loading is name- and shape-checked).
      num_points: points sampled per scene for training and as token support at evaluation.
      protocol: ``@FullFinetune()`` (default), ``@LinearProbe()`` (frozen encoder, head only),
        ``@LimitedReconstructions()``, ``@LimitedAnnotations()`` (``methods.protocols``).
      encoder_lr_scale, layer_decay: learning-rate factors of the encoder (``param_groups``).
      propagation_power: feature propagation weights 1/d^power; 2 = PointNet++ / Point-MAE [prior], 1 = 1/d.
      curve: ``@LearningCurve()`` scores the model every few epochs on a fixed subset of the evaluation
        split (``finetune/seg/val_mIoU``); None (default) = no curve. The same for every fine-tuning spec.
    """

    task = "seg"
    model_name = "MLP head, 3-NN feature propagation"

    def __init__(self, tokenizer=gin.REQUIRED, encoder: EncoderSpec | None = None, num_points: int = 40_000,
                 schedule: TrainSchedule | None = None, protocol=None, hidden: int = 256,
                 augment: bool = True, propagation_power: float = 2.0, encoder_lr_scale: float = 1.0,
                 layer_decay: float = 1.0, curve: LearningCurve | None = None):
        super().__init__(tokenizer=tokenizer, encoder=encoder, num_points=num_points, schedule=schedule,
                         augment=augment, protocol=protocol, encoder_lr_scale=encoder_lr_scale,
                         layer_decay=layer_decay, curve=curve)
        self.hidden = hidden
        self.propagation_power = float(propagation_power)

    def fit(self, pretrained_state, pretrain_key: str, scenes, info, cache_root, seed: int, scorer=None):
        """Train (or resume, or reuse) the segmenter; returns (model, per-epoch history)."""
        def build():
            model = PointSegmenter(self._encoder(pretrained_state, f"pretraining {pretrain_key}"),
                                   len(info.seg_classes), hidden=self.hidden,
                                   protocol="probe" if self.protocol.freeze_encoder else "full",
                                   propagation_power=self.propagation_power)
            return model, SegmentationObjective(model, ignore_index=info.ignore_index)

        return self._fit(build, pretrain_key, scenes, info, cache_root, seed, scorer)

    def predict(self, model, scene: Scene, seed: int):
        return predict_scene_labels(model, scene, self.tokenizer, self.num_points, seed)

    def values_per_point(self, info) -> float:
        # propagated features, the concatenated input and its gradient (width each), fc1 / norm / ReLU /
        # dropout (hidden each), logits and their log-softmax (classes each), labels and masks
        return 3 * self.encoder.width + 4 * self.hidden + 3 * len(info.seg_classes) + 32

    def head_parameters(self, info) -> float:
        return (self.encoder.width + 6) * self.hidden + self.hidden * len(info.seg_classes)


@gin.register
class DetrDetection(DetectionSpec):
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

    model_name = "3DETR-style head"

    def __init__(self, tokenizer=gin.REQUIRED, encoder: EncoderSpec | None = None, num_points: int = 40_000,
                 schedule: TrainSchedule | None = None, num_queries: int = 256, decoder_depth: int = 8,
                 objectness_threshold: float = 0.05, nms_iou: float = 0.25, augment: bool = True,
                 query_from_tokens: bool = False, recipe: DetrRecipe | None = None, head_dropout: float = 0.3,
                 protocol=None, encoder_lr_scale: float = 1.0, layer_decay: float = 1.0,
                 curve: LearningCurve | None = None):
        super().__init__(tokenizer=tokenizer, encoder=encoder, num_points=num_points, schedule=schedule,
                         augment=augment, protocol=protocol, encoder_lr_scale=encoder_lr_scale,
                         layer_decay=layer_decay, curve=curve,
                         objectness_threshold=objectness_threshold, nms_iou=nms_iou)
        self.query_from_tokens = query_from_tokens
        self.recipe = recipe or DetrRecipe()
        self.head_dropout = head_dropout
        self.num_queries = num_queries
        self.decoder_depth = decoder_depth

    def fit(self, pretrained_state, pretrain_key: str, scenes, info, cache_root, seed: int, scorer=None):
        """Train (or resume, or reuse) the detector; returns (model, per-epoch history)."""
        def build():
            model = Detector3D(self._encoder(pretrained_state, f"pretraining {pretrain_key}"),
                               len(info.det_classes), info.has_yaw, num_queries=self.num_queries,
                               decoder_depth=self.decoder_depth, query_from_tokens=self.query_from_tokens,
                               head_dropout=self.head_dropout)
            return model, self.recipe.objective(model)

        return self._fit(build, pretrain_key, scenes, info, cache_root, seed, scorer)

    def head_parameters(self, info) -> float:
        w = self.encoder.width
        return self.decoder_depth * (8 * w * w) + self.num_queries * w


@gin.register
class FinetuneRow:
    """A table row: (optional) pretraining, then fine-tuning for each configured task and protocol, then
    evaluation, each fine-tuning run under its own metric keys (``FinetuneSpec.metric_key``).

    Args:
      pretrain: a ``PretrainRow`` (e.g. ``@stage2/PretrainRow()``), or None for "no pretraining".
      segmentation, detection: the full fine-tuning specs, or None to skip a task.
      detection_heads: more detection specs by head name (e.g. ``{'3detr': @DetrDetection(),
        'groupfree': @GroupFreeDetection()}``), each fine-tuned on its own and scored by a
        ``DetectionTask`` whose ``head`` names it (metrics ``<dataset>/det-<head>/...``).
      protocols: more fine-tuning runs from the same pretrained encoder, e.g.
        ``[@probe/SegmentationFinetune(), @lr20/SegmentationFinetune()]`` (``methods.protocols``),
        reported as ``<dataset>/seg-probe/...``, ``<dataset>/seg-lr20/...``.
    """

    def __init__(self, pretrain=None, segmentation: SegmentationFinetune | None = None,
                 detection: DetrDetection | None = None, protocols=(), detection_heads: dict | None = None):
        self.pretrain = pretrain
        self.segmentation = segmentation
        self.detection = detection
        self.detection_heads = dict(detection_heads or {})
        for head, spec in self.detection_heads.items():
            if not (isinstance(head, str) and head.replace("_", "").isalnum()):
                raise ValueError(f"FinetuneRow.detection_heads: head names must be letters, digits or _, got {head!r}")
            spec.head = head
        self.protocols = list(protocols)
        keys = [spec.metric_key for spec in self._specs()]
        if len(set(keys)) != len(keys):
            raise ValueError(f"FinetuneRow: two fine-tuning runs would report under the same metric key ({keys})")
        self._models: dict[str, torch.nn.Module] = {}
        self._seed = 0

    def _specs(self) -> list:
        return [spec for spec in (self.segmentation, self.detection, *self.detection_heads.values(),
                                  *self.protocols) if spec is not None]

    def _keys(self, context) -> tuple[str, dict[str, str]]:
        """(pretraining key or "none", metric key -> fine-tuned model key), computed without running anything."""
        pretrain_key = self.pretrain.key(context) if self.pretrain is not None else "none"
        scenes_key = context.scene_folder(context.train_split).name
        curve_key = context.scene_folder(context.eval_split).name
        return pretrain_key, {spec.metric_key: spec.key(pretrain_key, scenes_key, context.seed, curve_key)
                              for spec in self._specs()}

    def step_keys(self, context) -> list[str]:
        """Content keys of the steps this row computes (each pretraining stage, each fine-tuning run), so
        a scheduler can start the longest rows first and see which rows share a step."""
        stages = self.pretrain.stage_keys(context) if self.pretrain is not None else []
        return stages + list(self._keys(context)[1].values())

    def metric_keys(self, dataset: str, tasks) -> set[str]:
        """The headline metric keys this row reports with ``tasks`` (objects with ``key`` and ``metric_names``):
        ``<dataset>/<metric_key>/<name>`` for each fine-tuning run and the metrics of its task."""
        names = {task.key: task.metric_names for task in tasks}
        return {f"{dataset}/{spec.metric_key}/{name}" for spec in self._specs()
                for name in names.get(spec.task_key, ())}

    def step_memories(self, info, world_size: int = 1) -> dict[str, StepMemory]:
        """Each training step of the row (its pretraining stages, its fine-tuning runs) -> its memory estimate."""
        steps = self.pretrain.step_memories(info, world_size) if self.pretrain is not None else {}
        return {**steps, **{f"fine-tuning {spec.metric_key}": spec.step_memory(info, world_size)
                            for spec in self._specs()}}

    def components(self) -> dict[str, str]:
        """The row's resolved components, as MLflow params (so runs can be filtered by component)."""
        out = {"pretraining": "none"}
        if self.pretrain is not None:
            out.update(self.pretrain.components())
        for spec in self._specs():
            out[f"finetune/{spec.metric_key}"] = type(spec).__name__
            out[f"finetune/{spec.metric_key}/protocol"] = spec.protocol.description
            out[f"finetune/{spec.metric_key}/encoder_lr_scale"] = f"{spec.encoder_lr_scale:g}"
        return out

    def run(self, context) -> dict[str, float]:
        """Pretrain (cached), fine-tune each task and protocol (cached), evaluate on the evaluation split
        (cached: a row whose every step is unchanged returns its evaluation without loading a model)."""
        context.tracking_run.log_params(self.components())
        context.notes.setdefault("fine-tuning", "; ".join(f"{spec.metric_key}: {spec.description}"
                                                          for spec in self._specs()))
        scenes = context.scenes(context.train_split)
        return context.cached_result(self.result_parts(context), lambda: self._run(context, scenes))

    def result_parts(self, context) -> tuple:
        """What the row's cached result is keyed by (``RowContext.result_key``): its pretraining and
        fine-tuning keys, computed without running anything."""
        pretrain_key, models = self._keys(context)
        return "FinetuneRow", pretrain_key, models

    def _scorer(self, context, spec):
        """``scorer(model)``: the learning-curve point of ``spec``'s model (``RowContext.score``) on the
        first ``spec.curve.scenes`` evaluation scenes; its ``key`` names those scenes. None without a curve."""
        if spec.curve is None:
            return None

        def scorer(model) -> dict[str, float]:
            return context.score(_Predictions({spec.task_key: (spec, model)}, context.seed), spec.task_key,
                                 spec.curve.scenes)

        scorer.key = context.scene_folder(context.eval_split).name
        return scorer

    def _run(self, context, scenes) -> dict[str, float]:
        self._seed = context.seed
        pretrained = self.pretrain.pretrain(context) if self.pretrain is not None else None
        state, key = (pretrained.encoder, pretrained.key) if pretrained else (None, "none")
        metrics = dict(pretrained.metrics) if pretrained else {}
        runs = []
        for spec in self._specs():
            model, history = spec.fit(state, key, scenes, context.dataset.info, context.cache_root, context.seed,
                                      self._scorer(context, spec))
            for name, note in spec.size_notes(scenes).items():
                context.notes.setdefault(name, note)
                note_once(note)
            runs.append((spec, model))
            for epoch, values in enumerate(history):
                context.log_metrics({f"finetune/{spec.metric_key}/{k}": v for k, v in values.items()}, epoch)
        # The full fine-tunes are scored together; every other protocol under its own key suffix.
        by_protocol: dict[str, dict] = {}
        for spec, model in runs:
            by_protocol.setdefault(spec.protocol.name, {})[spec.task_key] = (spec, model)
        for protocol, predictors in by_protocol.items():
            suffix = "" if protocol == "full" else protocol
            metrics.update(context.evaluate(_Predictions(predictors, self._seed), suffix=suffix,
                                            tasks=set(predictors)))
        return metrics


class _Predictions:
    """The predictions of one protocol's fine-tuned models, as the evaluation tasks ask for them."""

    def __init__(self, models: dict, seed: int):
        self._models = models
        self._seed = seed

    def predict_segmentation(self, scene: Scene):
        spec, model = self._models["seg"]
        return spec.predict(model, scene, self._seed)

    def predict_detection(self, scene: Scene, head: str = "") -> Detections:
        """Detections of the row's ``detection`` ("" head) or of ``detection_heads[head]``."""
        spec, model = self._models[f"det-{head}" if head else "det"]
        return spec.predict(model, scene, self._seed)

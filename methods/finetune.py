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

from datasets.types import Detections, Scene
from infra import timing
from infra.errors import DataError
from infra.fingerprint import fingerprint
from infra.seeding import derive_seed, torch_seeded
from methods.detr_recipe import DetrRecipe
from methods.downstream.detection import Detector3D, predict_batch
from methods.downstream.scene_batch import SceneSamples, collate_scenes
from methods.downstream.segmentation import (
    PointSegmenter,
    SegmentationObjective,
    load_pretrained_encoder,
    predict_scene_labels,
)
from methods.encoder import EncoderSpec
from methods.learning_curve import LearningCurve
from methods.protocols import FullFinetune
from methods.train import TrainSchedule, train


class _Finetune:
    """What segmentation and detection fine-tuning share: the encoder, the tokens, the schedule, the
    protocol, the learning rates, caching."""

    task = ""

    def __init__(self, *, tokenizer, encoder: EncoderSpec | None, num_points: int, schedule: TrainSchedule | None,
                 augment: bool, protocol=None, encoder_lr_scale: float = 1.0, layer_decay: float = 1.0,
                 curve: LearningCurve | None = None):
        if not encoder_lr_scale >= 0:
            raise ValueError(f"{type(self).__name__}.encoder_lr_scale: expected a value >= 0, got {encoder_lr_scale}")
        if not 0 < layer_decay <= 1:
            raise ValueError(f"{type(self).__name__}.layer_decay: expected a value in (0, 1], got {layer_decay}")
        self.tokenizer = tokenizer
        self.encoder = encoder or EncoderSpec()
        self.num_points = int(num_points)
        self.schedule = schedule or TrainSchedule()
        self.augment = augment
        self.protocol = protocol or FullFinetune()
        self.encoder_lr_scale = float(encoder_lr_scale)
        self.layer_decay = float(layer_decay)
        self.curve = curve

    head = ""  # a FinetuneRow's detection_heads name theirs
    model_name = ""  # what the tables' conventions call the model, e.g. "3DETR-style head"

    @property
    def task_key(self) -> str:
        """The evaluation task this run's model answers: ``seg``, ``det``, or ``det-<head>``."""
        return f"{self.task}-{self.head}" if self.head else self.task

    @property
    def description(self) -> str:
        """Model and schedule, for the tables' conventions: ``GroupFree3D-style head, 60 epochs x batch 2``."""
        model = f"{self.model_name}, " if self.model_name else ""
        return f"{model}{self.schedule.epochs} epochs x batch {self.schedule.batch_size}"

    @property
    def metric_key(self) -> str:
        """The task part of this run's metric keys: ``seg``, ``det-groupfree``, or ``seg-probe`` etc. for
        other protocols."""
        return self.task_key if self.protocol.name == "full" else f"{self.task_key}-{self.protocol.name}"

    def step_seed(self, seed: int) -> int:
        """The seed of everything random in this fine-tuning run (initialisation, data order, augmentation,
        tokens, dropout): the row's ``seed`` and the task, the same for every row and protocol
        (``infra.seeding``)."""
        return derive_seed(seed, f"finetune/{self.task}")

    def _encoder(self, pretrained_state, source: str) -> torch.nn.Module:
        encoder = self.encoder.build()
        load_pretrained_encoder(encoder, pretrained_state, source)
        return encoder

    def key(self, pretrain_key: str, scenes_key: str, seed: int, curve_key: str = "") -> str:
        """Content key of the fine-tuned model: this configuration (protocol included), the pretraining
        chain (``"none"``), the training scenes (their cache folder's name), the seed and, with a learning
        curve, the scenes it is scored on (``curve_key``: they are in the run's history)."""
        return fingerprint(self, pretrain_key, scenes_key, seed, *([curve_key] if self.curve else []))

    def param_groups(self, model: torch.nn.Module) -> list[dict]:
        """Optimiser groups with their learning-rate factors: the encoder's blocks at
        ``encoder_lr_scale * layer_decay ** (depth - i)`` (block i of ``depth``; its embeddings as block 0
        [prior: MAE's layer-wise decay]), every other parameter (the new head) at 1. Frozen parameters
        are left out. 1 and 1 (the default) is 3DETR's and Bridge3D's single rate [prior]."""
        encoder = model.encoder
        depth = len(encoder.stack.blocks)
        groups: dict[float, list] = {}

        def add(params, scale):
            groups.setdefault(scale, []).extend(p for p in params if p.requires_grad)

        add(list(encoder.token_embed.parameters()) + list(encoder.pos_embed.parameters()),
            self.encoder_lr_scale * self.layer_decay ** depth)
        for i, block in enumerate(encoder.stack.blocks, start=1):
            add(block.parameters(), self.encoder_lr_scale * self.layer_decay ** (depth - i))
        add(encoder.stack.norm.parameters(), self.encoder_lr_scale)
        own = {id(p) for p in encoder.parameters()}
        add([p for p in model.parameters() if id(p) not in own], 1.0)
        return [{"params": params, "lr_scale": scale} for scale, params in groups.items() if params]

    def _fit(self, build, pretrain_key: str, scenes, info, cache_root, seed: int, scorer=None):
        """Build the model (``build()`` -> (model, training objective)) from this run's seed, then train
        (or resume, or reuse) it on the protocol's scenes and labels; returns (model, per-epoch history).

        ``scorer`` (``scorer(model) -> metrics``, with a ``key`` naming its scenes) gives the learning
        curve's points when ``curve`` is set."""
        scorer = scorer if self.curve is not None else None
        key = self.key(pretrain_key, scenes.folder.name, seed, scorer.key if scorer else "")
        folder = pathlib.Path(cache_root) / "finetune" / f"{self.metric_key}-{key}"
        step_seed = self.step_seed(seed)
        name = f"finetune/{self.metric_key}"
        with torch_seeded(step_seed), timing.span(name):
            model, objective = build()
        # Rotating an axis-aligned dataset (ScanNet) would give its boxes a yaw the model cannot predict.
        rotation = math.pi if info.has_yaw else 0.0
        labelled = self.protocol.labelled_points if self.protocol.uses_point_labels else None
        data = SceneSamples(scenes, self.num_points, self.tokenizer, step_seed, augment=self.augment,
                            max_rotation=rotation, indices=self.protocol.scene_indices(scenes), labelled=labelled)
        if len(data) == 0:
            raise DataError(f"{name}: no training scene in {info.name} ({len(scenes)} in the split, "
                            f"{self.protocol.description}); expected at least one")
        groups = self.param_groups(model)
        single = len(groups) == 1 and groups[0]["lr_scale"] == 1.0
        curve = None
        if scorer is not None:
            def curve(epoch: int) -> dict[str, float]:
                if not self.curve.due(epoch, self.schedule.epochs):
                    return {}
                return {f"val_{k}": v for k, v in scorer(model).items()}
        history = train(objective, data, collate_scenes, self.schedule, folder / "checkpoint.pt", step_seed,
                        name=name, param_groups=None if single else groups, epoch_hook=curve)
        return model, history


@gin.register
class SegmentationFinetune(_Finetune):
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


class DetectionSpec(_Finetune):
    """What both detection heads share (``DetrDetection``, ``GroupFreeDetection``): the protocols
    detection takes (full fine-tune, limited reconstructions), post-processing and prediction."""

    task = "det"

    def __init__(self, *, objectness_threshold: float, nms_iou: float, **shared):
        super().__init__(**shared)
        if self.protocol.freeze_encoder or self.protocol.uses_point_labels:
            raise ValueError(f"{type(self).__name__}.protocol: {type(self.protocol).__name__} applies to "
                             "segmentation; detection takes @FullFinetune() or @LimitedReconstructions()")
        self.objectness_threshold = objectness_threshold
        self.nms_iou = nms_iou

    def predict(self, model, scene: Scene, seed: int) -> Detections:
        """Detections of ``scene`` in its own frame (tokens of a seeded, unaugmented point sample)."""
        data = SceneSamples([scene], self.num_points, self.tokenizer, seed, augment=False)
        batch = collate_scenes([data[0]])
        return predict_batch(model, batch, batch["offset"], objectness_threshold=self.objectness_threshold,
                             nms_iou=self.nms_iou)[0]


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


@gin.register
class FinetuneRow:
    """A table row: (optional) pretraining, then fine-tuning for each configured task and protocol, then
    evaluation, each fine-tuning run under its own metric keys (``_Finetune.metric_key``).

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

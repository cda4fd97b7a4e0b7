"""What every fine-tuning spec shares: the encoder, the tokens, the schedule, the protocol, the learning rates,
the cached training, the step's memory estimate; and what every detection head's spec adds to it.

A spec (``SegmentationFinetune``, ``DetrDetection``, ``GroupFreeDetection``, ``VoteGroupDetection``) is
configured by keyword: its own parameters, then these (``FinetuneSpec.__init__``).
"""
from __future__ import annotations

import math
import pathlib

import torch

from datasets.types import Detections, Scene
from infra import timing
from infra.errors import DataError
from infra.fingerprint import fingerprint
from infra.seeding import derive_seed, torch_seeded
from methods.downstream.detection import predict_batch
from methods.downstream.scene_batch import SceneSamples, collate_scenes
from methods.downstream.segmentation import load_pretrained_encoder
from methods.encoder import EncoderSpec
from methods.learning_curve import LearningCurve
from methods.protocols import FullFinetune
from methods.step_memory import StepMemory, encoder_parameters, encoder_parts, parameter_part, point_parts
from methods.train import TrainSchedule, train


class FinetuneSpec:
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

    def step_memory(self, info, world_size: int = 1) -> StepMemory:
        """The estimate of one training step in one process (``methods.step_memory``)."""
        batch = max(1, self.schedule.batch_size // world_size)
        name = type(self).__name__
        parts = encoder_parts(self.encoder, self.tokenizer.num_tokens, self.tokenizer.group_size, batch, name)
        parts.update(point_parts(name, self.num_points, batch, self.values_per_point(info)))
        parts.update(parameter_part(encoder_parameters(self.encoder) + self.head_parameters(info), self.encoder))
        return StepMemory(parts)

    def values_per_point(self, info) -> float:
        """Values the head keeps per point of a training sample (``methods.step_memory``)."""
        return 0.0

    def size_notes(self, scenes) -> dict[str, str]:
        """What the table says about this run's sizes: ``num_points`` above what training scenes hold."""
        indices = self.protocol.scene_indices(scenes)
        smaller = sum(scenes[i].num_points < self.num_points for i in indices)
        if not smaller:
            return {}
        name = type(self).__name__
        return {f"size: {name}.num_points": f"{name}.num_points = {self.num_points} is more than {smaller} of the "
                                           f"{len(indices)} training scenes have: their samples repeat points"}

    def head_parameters(self, info) -> float:
        """Parameters of the head, roughly (``methods.step_memory``)."""
        return 0.0

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


class DetectionSpec(FinetuneSpec):
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

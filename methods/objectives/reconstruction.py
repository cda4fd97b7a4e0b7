"""Baselines (DESIGN 2.8): Point-MAE masked point reconstruction and a Bridge3D-style objective.

Bridge3D-style = Point-MAE reconstruction + scene-level and region-level SmoothL1 distillation of 2D
features [prior]. Bridge3D's text/caption losses (CLIP + Tag2Text) are out of scope here.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import gin
import numpy as np
import torch
from torch import nn

from methods.encoder import (DecoderSpec, EncoderSpec, ProjectionHead, TransformerDecoder,
                             TransformerEncoder, init_weights)
from methods.losses import chamfer_l2, masked_mean_pool, smooth_l1_distillation
from methods.objectives.common import (REGION_KEYS, TOKEN_KEYS, Batch, MaskSampler, TokenSplit,
                                       check_ratio, decode_masked, encode_visible, fill_defaults,
                                       load_encoder, logged, mask_seed, region_targets, require)

GroupWeights = np.ndarray | torch.Tensor | None
State = Mapping[str, torch.Tensor] | None


class PointMAEModel(nn.Module):
    """Chamfer-L2 between ``num_points`` points predicted per masked token and its ``rel`` xyz.

    Visible tokens are encoded, the decoder fills mask tokens at the masked centres, a linear head
    maps each to ``num_points`` x 3 coordinates relative to the centre [prior: Point-MAE].
    Outputs ``{"loss", "recon"}``.
    """

    def __init__(self, encoder: TransformerEncoder, decoder: TransformerDecoder, mask_ratio: float,
                 seed: int, num_points: int):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.num_points = num_points
        self.head = nn.Linear(encoder.width, 3 * num_points)
        self.masker = MaskSampler(mask_ratio, seed)
        init_weights(self.head)

    def reconstruct(self, batch: Batch, keys: tuple[str, ...]) -> tuple[TokenSplit, torch.Tensor, torch.Tensor]:
        """(split, visible features (B, Mv, W), reconstruction loss) of one batch."""
        require(batch, keys, type(self).__name__)
        valid = batch["valid"]
        split = TokenSplit.of(self.masker(valid), valid)
        visible = encode_visible(self.encoder, batch, split)
        out = self.head(decode_masked(self.decoder, visible, batch, split))
        pred = out.reshape(*out.shape[:2], self.num_points, 3)
        target = split.masked(batch["rel"][..., :3])  # xyz only, when rel carries rgb
        return split, visible, chamfer_l2(pred, target, split.masked_valid)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        _, _, recon = self.reconstruct(batch, TOKEN_KEYS)
        return logged(recon, recon=recon)


@gin.register
@dataclasses.dataclass(frozen=True)
class PointMAE:
    """Point-MAE baseline spec [prior]: masked point reconstruction with Chamfer-L2.

    ``num_points``: points predicted per masked token; Chamfer does not need it to equal the
    tokenizer's K, but Point-MAE predicts exactly K (default 128 = Bridge3D's K [prior]; bind it to
    the tokenizer's ``group_size``). ``build`` ignores ``teacher_dim`` and ``group_weights``.
    """

    encoder: EncoderSpec | None = None
    decoder: DecoderSpec | None = None
    mask_ratio: float = 0.6
    num_points: int = 128
    seed: int = 0

    def __post_init__(self):
        fill_defaults(self, encoder=EncoderSpec, decoder=DecoderSpec)
        check_ratio(self.mask_ratio)

    def build(self, teacher_dim: int | None = None, group_weights: GroupWeights = None,
              previous: State = None, seed: int = 0) -> PointMAEModel:
        """The Point-MAE module; ``previous`` (optional) warm-starts the encoder (strict load); ``seed``
        (the stage's) and the spec's ``seed`` give the mask stream."""
        encoder = self.encoder.build()
        model = PointMAEModel(encoder, self.decoder.build(encoder.width), self.mask_ratio,
                              mask_seed(seed, self.seed), self.num_points)
        if previous is not None:
            load_encoder(model.encoder, previous, type(self).__name__)
        return model


class Bridge3DStyleModel(PointMAEModel):
    """Point-MAE reconstruction + scene- and region-level SmoothL1 2D-feature distillation [prior].

    scene: MLP(mean of the visible features) vs the mean of the frame's valid region features.
    region: MLP(visible features) vs their mixed 2D region targets, visible tokens with a target.
    loss = recon + scene_weight * scene + region_weight * region. Outputs
    ``{"loss", "recon", "scene", "region"}``.
    """

    def __init__(self, encoder: TransformerEncoder, decoder: TransformerDecoder, teacher_dim: int,
                 mask_ratio: float, seed: int, num_points: int, scene_weight: float, region_weight: float):
        super().__init__(encoder, decoder, mask_ratio, seed, num_points)
        self.scene_head = ProjectionHead(encoder.width, teacher_dim)
        self.region_head = ProjectionHead(encoder.width, teacher_dim)
        self.teacher_dim = teacher_dim
        self.scene_weight = scene_weight
        self.region_weight = region_weight

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        split, visible, recon = self.reconstruct(batch, TOKEN_KEYS + REGION_KEYS)
        targets, has_target = region_targets(batch, self.teacher_dim)
        region_valid = batch["region_valid"]
        scene_target = masked_mean_pool(batch["region_table"], region_valid)
        has_scene = region_valid.any(dim=1) & split.visible_valid.any(dim=1)
        scene = smooth_l1_distillation(
            self.scene_head(masked_mean_pool(visible, split.visible_valid)), scene_target, has_scene)
        region = smooth_l1_distillation(self.region_head(visible), split.visible(targets),
                                        split.visible(has_target))
        loss = recon + self.scene_weight * scene + self.region_weight * region
        return logged(loss, recon=recon, scene=scene, region=region)


@gin.register
@dataclasses.dataclass(frozen=True)
class Bridge3DStyle:
    """Bridge3D-style baseline spec [prior]: reconstruction + scene/region 2D distillation.

    Text/caption losses of Bridge3D (CLIP + Tag2Text) are out of scope. ``scene_weight`` and
    ``region_weight`` scale the two SmoothL1 terms; other arguments as ``PointMAE``.
    """

    encoder: EncoderSpec | None = None
    decoder: DecoderSpec | None = None
    mask_ratio: float = 0.6
    scene_weight: float = 1.0
    region_weight: float = 1.0
    num_points: int = 128
    seed: int = 0

    def __post_init__(self):
        fill_defaults(self, encoder=EncoderSpec, decoder=DecoderSpec)
        check_ratio(self.mask_ratio)

    def build(self, teacher_dim: int, group_weights: GroupWeights = None,
              previous: State = None, seed: int = 0) -> Bridge3DStyleModel:
        """The Bridge3D-style module; ``previous`` (optional) warm-starts the encoder (strict load); ``seed``
        (the stage's) and the spec's ``seed`` give the mask stream."""
        encoder = self.encoder.build()
        model = Bridge3DStyleModel(encoder, self.decoder.build(encoder.width), teacher_dim, self.mask_ratio,
                                   mask_seed(seed, self.seed), self.num_points, self.scene_weight,
                                   self.region_weight)
        if previous is not None:
            load_encoder(model.encoder, previous, type(self).__name__)
        return model

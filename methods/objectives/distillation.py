"""Stage 1 region-level dense distillation (DESIGN 2.5-2.6) and its one-stage variant with MTP (2.7).

``RegionDistillation``: every token's projected feature is pulled (L1) to its 2D region feature,
weighted by its region's group (group-balanced re-weighting) [paper].
``DistillationWithMTP``: Table 4's "Stage 1 + MTP in the same stage", with the 2D targets as the
teacher of the masked tokens [choice, the paper gives no detail].
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
from methods.losses import instance_loss, masked_mean_pool, masked_token_loss, region_distillation_loss
from methods.objectives.common import (REGION_KEYS, TOKEN_KEYS, Batch, MaskSampler, TokenSplit,
                                       as_group_weights, balanced_weights, check_ratio, decode_masked,
                                       encode_visible, fill_defaults, load_encoder, logged, mask_seed,
                                       region_targets, require)
from methods.reweighting import GroupBalancing

GroupWeights = np.ndarray | torch.Tensor | None
State = Mapping[str, torch.Tensor] | None


class RegionDistillationModel(nn.Module):
    """L_distill = (1/M) sum_i w_i * L1(Proj(H_i), F2D_r(i)) over the M tokens with a region.

    ``encoder`` is the 3D encoder handed to the next stage; ``head`` is Proj (dropped afterwards).
    Outputs ``{"loss", "distill"}``.
    """

    def __init__(self, encoder: TransformerEncoder, teacher_dim: int, balancing: GroupBalancing,
                 group_weights: GroupWeights = None, projection_hidden: int | None = None):
        super().__init__()
        self.encoder = encoder
        self.head = ProjectionHead(encoder.width, teacher_dim, projection_hidden)
        self.balancing = balancing
        self.teacher_dim = teacher_dim
        # Not persistent: the weights come from the preparation step, not from a checkpoint.
        self.register_buffer("group_weights", as_group_weights(group_weights), persistent=False)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        require(batch, TOKEN_KEYS + REGION_KEYS, type(self).__name__)
        targets, has_target = region_targets(batch, self.teacher_dim)
        weight, select = balanced_weights(batch, has_target, self.balancing, self.group_weights)
        pred = self.head(self.encoder(batch["rel"], batch["centers"], batch["valid"]))
        loss = region_distillation_loss(pred, targets, weight, select)
        return logged(loss, distill=loss)


@gin.register
@dataclasses.dataclass(frozen=True)
class RegionDistillation:
    """Stage 1 objective spec [paper]: region-level dense distillation with group balancing.

    ``balancing``: ``GroupBalancing(enabled=False)`` is Table 3's "without BR". ``projection_hidden``:
    hidden width of Proj (None = the encoder width). A ``previous`` encoder state warm-starts the
    encoder (strict load).
    """

    encoder: EncoderSpec | None = None
    balancing: GroupBalancing | None = None
    projection_hidden: int | None = None

    def __post_init__(self):
        fill_defaults(self, encoder=EncoderSpec, balancing=GroupBalancing)

    def build(self, teacher_dim: int, group_weights: GroupWeights = None,
              previous: State = None, seed: int = 0) -> RegionDistillationModel:
        """The Stage-1 module for a teacher of ``teacher_dim`` channels and the prepared group weights
        (``seed`` is unused: Stage 1 masks nothing)."""
        model = RegionDistillationModel(self.encoder.build(), teacher_dim, self.balancing, group_weights,
                                        self.projection_hidden)
        if previous is not None:
            load_encoder(model.encoder, previous, type(self).__name__)
        return model


class DistillationWithMTPModel(nn.Module):
    """L = L_distill + L_token + L_ins in one stage, the 2D region targets being the teacher.

    The student sees the visible tokens only. L_distill: weighted L1 of Proj(visible features) to
    their 2D targets (weights normalised over visible tokens with a region). L_token: MSE of a linear
    map of the decoder outputs at the masked centres to the masked tokens' 2D targets (tokens with a
    target). L_ins: MSE of MLP(mean of visible features) to the mean 2D target of the frame's tokens
    with a target. Outputs ``{"loss", "distill", "token", "ins"}``.
    """

    def __init__(self, encoder: TransformerEncoder, decoder: TransformerDecoder, teacher_dim: int,
                 balancing: GroupBalancing, group_weights: GroupWeights, mask_ratio: float, seed: int):
        super().__init__()
        width = encoder.width
        self.encoder = encoder
        self.decoder = decoder
        self.head = ProjectionHead(width, teacher_dim)
        self.token_head = nn.Linear(width, teacher_dim)
        self.instance_head = ProjectionHead(width, teacher_dim)
        self.masker = MaskSampler(mask_ratio, seed)
        self.balancing = balancing
        self.teacher_dim = teacher_dim
        self.register_buffer("group_weights", as_group_weights(group_weights), persistent=False)
        init_weights(self.token_head)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        require(batch, TOKEN_KEYS + REGION_KEYS, type(self).__name__)
        valid = batch["valid"]
        targets, has_target = region_targets(batch, self.teacher_dim)
        split = TokenSplit.of(self.masker(valid), valid)
        weight, select = balanced_weights(batch, has_target & ~split.mask, self.balancing, self.group_weights)
        visible = encode_visible(self.encoder, batch, split)
        distill = region_distillation_loss(self.head(visible), split.visible(targets),
                                           split.visible(weight), split.visible(select))
        pred = self.token_head(decode_masked(self.decoder, visible, batch, split))
        token = masked_token_loss(pred, split.masked(targets), split.masked(has_target))
        pooled = self.instance_head(masked_mean_pool(visible, split.visible_valid))
        ins = instance_loss(pooled, masked_mean_pool(targets, has_target), has_target.any(dim=1))
        return logged(distill + token + ins, distill=distill, token=token, ins=ins)


@gin.register
@dataclasses.dataclass(frozen=True)
class DistillationWithMTP:
    """Table 4's "Stage 1 + MTP in the same stage" spec [choice]: distillation and MTP losses at once.

    Defaults as Stage 1 and Stage 2 (60% masking [paper summary], 2-block decoder [prior]). ``seed``
    seeds the masks. A ``previous`` encoder state warm-starts the student (strict load).
    """

    encoder: EncoderSpec | None = None
    decoder: DecoderSpec | None = None
    balancing: GroupBalancing | None = None
    mask_ratio: float = 0.6
    seed: int = 0

    def __post_init__(self):
        fill_defaults(self, encoder=EncoderSpec, decoder=DecoderSpec, balancing=GroupBalancing)
        check_ratio(self.mask_ratio)

    def build(self, teacher_dim: int, group_weights: GroupWeights = None,
              previous: State = None, seed: int = 0) -> DistillationWithMTPModel:
        """The one-stage distillation + MTP module; ``seed`` (the stage's) and the spec's ``seed`` give
        the mask stream."""
        encoder = self.encoder.build()
        model = DistillationWithMTPModel(encoder, self.decoder.build(encoder.width), teacher_dim,
                                         self.balancing, group_weights, self.mask_ratio,
                                         mask_seed(seed, self.seed))
        if previous is not None:
            load_encoder(model.encoder, previous, type(self).__name__)
        return model

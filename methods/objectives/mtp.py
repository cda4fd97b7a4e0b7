"""Stage 2 masked token prediction (MTP, DESIGN 2.7) [paper].

The frozen Stage-1 encoder (teacher) encodes every token; a student encoder sees only the visible
tokens, a light decoder fills mask tokens at the masked centres, and the student learns to predict
the teacher's features of the masked tokens (L_token) and the teacher's pooled frame feature (L_ins).
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
from methods.losses import instance_loss, masked_mean_pool, masked_token_loss
from methods.objectives.common import (TOKEN_KEYS, Batch, MaskSampler, TokenSplit, check_ratio,
                                       decode_masked, encode_visible, fill_defaults, load_encoder,
                                       logged, mask_seed, require)

INIT_STUDENT = ("teacher", "scratch")


class MaskedTokenPredictionModel(nn.Module):
    """L = L_token + L_ins against a frozen teacher encoder.

    L_token: MSE (mean over channels, mean over the masked tokens) between a linear predictor of the
    decoder outputs and the teacher's features of the masked tokens. L_ins: MSE between
    MLP(mean of the student's visible features) and the mean teacher feature over the frame's tokens.

    ``encoder`` is the student (handed on). ``teacher`` has ``requires_grad`` False and stays in eval
    mode whatever ``train()`` is called with, so an optimiser over ``p.requires_grad`` parameters
    never touches it. Outputs ``{"loss", "token", "ins"}``.
    """

    def __init__(self, teacher: TransformerEncoder, student: TransformerEncoder,
                 decoder: TransformerDecoder, mask_ratio: float, seed: int):
        super().__init__()
        self.teacher = teacher.requires_grad_(False).eval()
        self.encoder = student
        self.decoder = decoder
        self.predictor = nn.Linear(student.width, teacher.width)
        self.instance_head = ProjectionHead(student.width, teacher.width)
        self.masker = MaskSampler(mask_ratio, seed)
        init_weights(self.predictor)

    def train(self, mode: bool = True) -> MaskedTokenPredictionModel:
        super().train(mode)
        self.teacher.eval()  # frozen: no drop-path, BatchNorm running statistics untouched
        return self

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        require(batch, TOKEN_KEYS, type(self).__name__)
        valid = batch["valid"]
        with torch.no_grad():
            target = self.teacher(batch["rel"], batch["centers"], valid)
        split = TokenSplit.of(self.masker(valid), valid)
        visible = encode_visible(self.encoder, batch, split)
        pred = self.predictor(decode_masked(self.decoder, visible, batch, split))
        token = masked_token_loss(pred, split.masked(target), split.masked_valid)
        pooled = self.instance_head(masked_mean_pool(visible, split.visible_valid))
        ins = instance_loss(pooled, masked_mean_pool(target, valid), valid.any(dim=1))
        return logged(token + ins, token=token, ins=ins)


@gin.register
@dataclasses.dataclass(frozen=True)
class MaskedTokenPrediction:
    """Stage 2 objective spec [paper]; ``build`` needs the Stage-1 encoder state as ``previous``.

    ``encoder`` sizes both the teacher (which must match the Stage-1 encoder: strict load) and the
    student. ``init_student``: "teacher" starts the student from the Stage-1 weights, "scratch" from
    a random initialisation [choice]. ``mask_ratio`` 0.6 [paper summary]; the decoder has 2 blocks
    [prior]; ``seed`` seeds the masks. ``teacher_dim`` and ``group_weights`` of ``build`` are unused:
    the teacher here is the 3D encoder, whose width is the spec's.
    """

    encoder: EncoderSpec | None = None
    decoder: DecoderSpec | None = None
    mask_ratio: float = 0.6
    init_student: str = "teacher"
    seed: int = 0

    def __post_init__(self):
        fill_defaults(self, encoder=EncoderSpec, decoder=DecoderSpec)
        check_ratio(self.mask_ratio)
        if self.init_student not in INIT_STUDENT:
            raise ValueError(f"init_student: expected one of {INIT_STUDENT}, got {self.init_student!r}")

    def build(self, teacher_dim: int | None = None, group_weights: np.ndarray | torch.Tensor | None = None,
              previous: Mapping[str, torch.Tensor] | None = None, seed: int = 0) -> MaskedTokenPredictionModel:
        """The Stage-2 module: teacher loaded from ``previous``, student per ``init_student``; ``seed`` (the
        stage's) and the spec's ``seed`` give the mask stream."""
        name = type(self).__name__
        if previous is None:
            raise ValueError(f"{name} needs the Stage-1 encoder as `previous` (its frozen teacher); "
                             "run a RegionDistillation stage before it")
        teacher = self.encoder.build()
        load_encoder(teacher, previous, name)
        student = self.encoder.build()
        if self.init_student == "teacher":
            load_encoder(student, previous, name)
        return MaskedTokenPredictionModel(teacher, student, self.decoder.build(student.width),
                                          self.mask_ratio, mask_seed(seed, self.seed))

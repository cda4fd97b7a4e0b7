"""Pieces shared by the pretraining objectives: batch checks, warm starts, masking, targets.

The batch every objective reads (B frames, G tokens, K points per token, R region rows, C teacher
channels):

- ``rel`` (B, G, K, C_in) points relative to their token centre (xyz first); ``centers`` (B, G, 3);
  ``valid`` (B, G) bool, False = padding token.
- ``point_rows`` (B, G, K) int64 row of each point's region in the frame's ``region_table``, 0 = none.
- ``token_row`` (B, G) int64 the token's region row (SAM-guided: its one region; KNN: majority), 0 = none.
- ``region_table`` (B, R, C) float region features, row 0 zeros; ``region_valid`` (B, R) bool (row 0
  and padding rows False); ``region_group`` (B, R) int64 re-weighting group of each row, -1 = none.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np
import torch
from torch import nn

from infra.seeding import derive_seed
from methods.encoder import TransformerDecoder, TransformerEncoder
from methods.losses import mixed_region_targets
from methods.reweighting import GroupBalancing
from methods.token_masking import random_token_mask, selection_index, take_tokens

Batch = Mapping[str, torch.Tensor]
TOKEN_KEYS = ("rel", "centers", "valid")
REGION_KEYS = ("point_rows", "token_row", "region_table", "region_valid", "region_group")


def require(batch: Batch, keys: tuple[str, ...], who: str) -> None:
    """Fail with the list of missing keys rather than a bare KeyError deep inside a forward."""
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(f"{who}: batch lacks {missing} (has {sorted(batch)})")


def load_encoder(encoder: TransformerEncoder, state: Mapping[str, torch.Tensor], who: str) -> None:
    """Strict, name-checked load of a previous stage's encoder ``state_dict`` into ``encoder``."""
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as err:  # missing/unexpected names or shape mismatch: say which stage failed
        raise ValueError(f"{who}: the previous stage's encoder does not fit this encoder spec "
                         f"(same EncoderSpec needed in both stages): {err}") from err


def as_group_weights(weights: np.ndarray | torch.Tensor | None) -> torch.Tensor | None:
    """Group weights (K,) as a float32 tensor (None stays None = re-weighting off)."""
    if weights is None:
        return None
    w = torch.as_tensor(np.asarray(weights.cpu() if isinstance(weights, torch.Tensor) else weights),
                        dtype=torch.float32)
    if w.ndim != 1 or w.numel() == 0:
        raise ValueError(f"group_weights: expected a non-empty (K,) vector, got shape {tuple(w.shape)}")
    return w


def logged(loss: torch.Tensor, **parts: torch.Tensor) -> dict[str, torch.Tensor]:
    """The objective's output: ``loss`` to backpropagate plus detached components for logging."""
    return {"loss": loss, **{name: value.detach() for name, value in parts.items()}}


class MaskSampler(nn.Module):
    """Random token masks from a generator seeded with ``seed``, on the batch's device.

    Rank 0 (and a single process) draws one stream from ``seed`` across the whole training; its state
    travels in the module's ``state_dict`` (extra state) and so in the checkpoint, so a resumed run draws
    the masks an uninterrupted run would (when resumed on the same device type). Under torchrun every
    other rank restarts its stream at each epoch from (``seed``, epoch, rank) (``begin_epoch``, called by
    the training loop): the ranks mask their frames with different draws, and since checkpoints are taken
    at epoch ends, a resumed rank draws what it would have drawn, without a state of its own to save.
    """

    def __init__(self, ratio: float, seed: int):
        super().__init__()
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"mask_ratio: expected a value in [0, 1], got {ratio}")
        self.ratio = float(ratio)
        self.seed = int(seed)
        self._generator: torch.Generator | None = None
        self._pending: dict | None = None

    def reset(self) -> None:
        """Start the mask sequence again from ``seed``."""
        self._generator, self._pending = None, None

    def begin_epoch(self, epoch: int, rank: int) -> None:
        """Ranks > 0 draw this epoch's masks from (seed, epoch, rank); rank 0 goes on with its stream."""
        if rank > 0:
            self._generator = None
            self._pending = {"seed": derive_seed(self.seed, "epoch", epoch, "rank", rank)}

    def _generator_on(self, device: torch.device) -> torch.Generator:
        gen = self._generator
        if gen is None or gen.device.type != device.type:
            pending = self._pending or {}
            gen = torch.Generator(device=device).manual_seed(pending.get("seed", self.seed))
            if pending.get("device") == device.type:
                gen.set_state(pending["state"])
            self._generator, self._pending = gen, None
        return gen

    def forward(self, valid: torch.Tensor) -> torch.Tensor:
        """(B, G) bool mask, True = hidden; ``ratio`` of each frame's valid tokens (see masking)."""
        return random_token_mask(valid, self.ratio, self._generator_on(valid.device))

    def get_extra_state(self) -> dict | None:
        if self._generator is None:
            return self._pending
        return {"device": self._generator.device.type, "state": self._generator.get_state()}

    def set_extra_state(self, state: dict | None) -> None:
        self._generator, self._pending = None, state


@dataclasses.dataclass
class TokenSplit:
    """Visible and masked tokens of a batch as left-aligned index lists (see ``selection_index``)."""

    mask: torch.Tensor  # (B, G) bool, True = masked (never padding)
    visible_index: torch.Tensor  # (B, Mv) int64
    visible_valid: torch.Tensor  # (B, Mv) bool
    masked_index: torch.Tensor  # (B, Mm) int64
    masked_valid: torch.Tensor  # (B, Mm) bool

    @classmethod
    def of(cls, mask: torch.Tensor, valid: torch.Tensor) -> TokenSplit:
        """Split the real tokens of ``valid`` into visible (``~mask``) and masked ones."""
        vis_index, vis_valid = selection_index(valid & ~mask)
        masked_index, masked_valid = selection_index(valid & mask)
        return cls(mask, vis_index, vis_valid, masked_index, masked_valid)

    def visible(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token tensor (B, G, ...) at the visible tokens -> (B, Mv, ...), padding zeroed."""
        return take_tokens(x, self.visible_index, self.visible_valid)

    def masked(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token tensor (B, G, ...) at the masked tokens -> (B, Mm, ...), padding zeroed."""
        return take_tokens(x, self.masked_index, self.masked_valid)


def encode_visible(encoder: TransformerEncoder, batch: Batch, split: TokenSplit) -> torch.Tensor:
    """Student features (B, Mv, W) of the visible tokens only.

    Only visible tokens are embedded (mini-PointNet included), so nothing of the masked tokens, not
    even their BatchNorm statistics, reaches the student, and the mini-PointNet runs on (1 - ratio)
    of the tokens. Point-MAE embeds every token and then drops the masked ones [prior]; the two
    differ only in those BatchNorm statistics.
    """
    return encoder(split.visible(batch["rel"]), split.visible(batch["centers"]), split.visible_valid)


def decode_masked(decoder: TransformerDecoder, visible: torch.Tensor, batch: Batch,
                  split: TokenSplit) -> torch.Tensor:
    """Decoder outputs (B, Mm, W) at the masked tokens' centres."""
    centers = batch["centers"]
    return decoder(visible, split.visible(centers), split.visible_valid,
                   split.masked(centers), split.masked_valid)


def region_targets(batch: Batch, teacher_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's 2D target (B, G, C) and has_target (B, G) from ``mixed_region_targets``.

    SAM-guided tokens (all points in one region) get exactly that region's feature; KNN tokens the
    point-count-weighted mix of their points' regions (DESIGN 2.5 [choice]).
    """
    table = batch["region_table"]
    if table.shape[-1] != teacher_dim:
        raise ValueError(f"region_table has {table.shape[-1]} channels, the objective was built for "
                         f"teacher_dim={teacher_dim}")
    return mixed_region_targets(batch["point_rows"], table, batch["valid"], batch["region_valid"])


def balanced_weights(batch: Batch, select: torch.Tensor, balancing: GroupBalancing,
                     group_weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token weights (B, G) from the group of each token's region row, and the tokens that count.

    A selected token whose ``token_row`` has no group (-1: a row without a feature) is dropped from
    ``select`` whether balancing is on or off, so on/off compare the same tokens. Weights are
    normalised over the returned selection (``GroupBalancing.normalize``).
    """
    token_row = batch["token_row"]
    groups = batch["region_group"]
    if token_row.numel() and (int(token_row.min()) < 0 or int(token_row.max()) >= groups.shape[1]):
        raise ValueError(f"token_row: expected rows in [0, {groups.shape[1]}), got "
                         f"[{int(token_row.min())}, {int(token_row.max())}]")
    group = torch.gather(groups, 1, token_row)
    select = select & (group >= 0)
    return balancing.weights_of_tokens(group, group_weights, select), select


def fill_defaults(spec: object, **factories) -> None:
    """In a frozen spec's ``__post_init__``: replace None fields by ``factory()``.

    Lets gin files write ``RegionDistillation.encoder = @EncoderSpec()`` while a plain
    ``RegionDistillation()`` still carries full default sub-specs.
    """
    for name, factory in factories.items():
        if getattr(spec, name) is None:
            object.__setattr__(spec, name, factory())


def mask_seed(step_seed: int, offset: int) -> int:
    """The seed of an objective's mask stream: the stage's seed (derived from the row's seed, so every
    seed of a table draws its own masks) mixed with the spec's ``seed`` field, an offset a user may vary."""
    return derive_seed(step_seed, "masks", offset)


def check_ratio(ratio: float) -> None:
    """Fail at configuration time, not at the first batch, on a mask ratio outside [0, 1)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask_ratio: expected a value in [0, 1), got {ratio}")

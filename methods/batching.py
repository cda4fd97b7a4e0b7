"""From prepared frames to training batches: tokenize each frame, attach its 2D region table, pad, stack.

A batch is a dict of tensors (B frames, G tokens, K points per token, R region rows, C teacher channels):
``rel`` (B,G,K,3), ``centers`` (B,G,3), ``valid`` (B,G), ``point_rows`` (B,G,K) and ``token_row`` (B,G)
(rows into the frame's region table, 0 = no region), ``region_table`` (B,R,C) with row 0 all zeros,
``region_valid`` (B,R) and ``region_group`` (B,R) (-1 where there is no region).

With tokens made on the training device (``TokenizedFrames.tokens_on_device``), an item carries the
tokenizer's inputs instead of its tokens (``tokenizer/*`` keys, ``methods.tokenizers.batched``) and the
sorted region labels of its table (``region_labels``); the batch becomes the layout above on the device.
"""
from __future__ import annotations

import functools
import zlib

import numpy as np
import torch

from methods.preparation import PreparedFrame
from methods.tokenizers.batched import (
    INPUTS,
    batched_or_note,
    collate_prefixed,
    tokenize_prefixed,
    tokenizer_inputs,
    with_prefix,
)

_NO_LABEL = torch.iinfo(torch.int64).max  # pads a batch's sorted label rows, above every real label


def frame_inputs(frame: PreparedFrame, center: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """A tokenizer's inputs for one prepared frame: float32 (N,3) points and int64 (N,) region ids.

    ``center`` subtracts the frame's mean point so positions do not depend on where the camera stood
    in the room [choice]; the tokens' relative coordinates are unaffected.
    """
    xyz = torch.from_numpy(frame.xyz.astype(np.float32))
    if center:
        xyz = xyz - xyz.mean(dim=0, keepdim=True)
    return xyz, torch.from_numpy(frame.region.astype(np.int64))


def frame_seed(seed: int, epoch: int, frame_id: str) -> int:
    """The tokenizer seed of one frame in one epoch (a new FPS start every epoch, the same on every rank)."""
    return zlib.crc32(f"{seed}/{epoch}/{frame_id}".encode())


def _region_table(frame: PreparedFrame) -> dict[str, torch.Tensor]:
    return {"region_table": torch.cat([torch.zeros(1, frame.region_features.shape[1]),
                                       torch.from_numpy(frame.region_features.astype(np.float32))]),
            "region_group": torch.from_numpy(np.concatenate([[-1], frame.region_groups]).astype(np.int64))}


def frame_tokens(frame: PreparedFrame, tokenizer, seed: int, center: bool = True) -> dict[str, torch.Tensor]:
    """Tokenize one prepared frame and express its region ids as rows of its region table (``center``:
    see ``frame_inputs``)."""
    tokens = tokenizer(*frame_inputs(frame, center), seed=seed)
    ids = frame.region_ids.astype(np.int64)  # sorted labels that have a feature; row = position + 1
    return {
        "rel": tokens.rel.float(),
        "centers": tokens.centers.float(),
        "valid": tokens.valid,
        "point_rows": torch.from_numpy(_rows(ids, tokens.point_regions.numpy())),
        "token_row": torch.from_numpy(_rows(ids, tokens.region.numpy())),
        **_region_table(frame),
    }


def frame_tokenizer_inputs(frame: PreparedFrame, tokenizer, seed: int, center: bool = True) -> dict[str, torch.Tensor]:
    """What ``frame_tokens`` makes on the CPU when the tokens are made on the device: the tokenizer's inputs
    (its random draws included, so the device makes the same tokens) and the frame's region table."""
    return {**with_prefix(tokenizer_inputs(tokenizer, *frame_inputs(frame, center), seed)),
            "region_labels": torch.from_numpy(frame.region_ids.astype(np.int64)), **_region_table(frame)}


def label_rows(labels: torch.Tensor, sorted_labels: torch.Tensor) -> torch.Tensor:
    """``_rows`` for a batch, in torch on any device: ``labels`` (B, ...) against (B, L) sorted labels
    padded with ``_NO_LABEL``; row = position + 1, 0 for label 0 and labels not in the table."""
    b = labels.shape[0]
    if sorted_labels.shape[1] == 0:
        return torch.zeros_like(labels)
    flat = labels.reshape(b, -1)
    pos = torch.searchsorted(sorted_labels, flat).clamp_max(sorted_labels.shape[1] - 1)
    hit = (flat > 0) & (torch.gather(sorted_labels, 1, pos) == flat)
    return torch.where(hit, pos + 1, torch.zeros_like(pos)).reshape(labels.shape)


def _rows(ids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Row of each label in a region table whose rows 1.. hold the sorted ``ids``; 0 for unknown labels."""
    if len(ids) == 0:
        return np.zeros(labels.shape, np.int64)
    pos = np.clip(np.searchsorted(ids, labels), 0, len(ids) - 1)
    return np.where((labels > 0) & (ids[pos] == labels), pos + 1, 0).astype(np.int64)


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack per-frame token dicts (or tokenizer inputs), padding region tables to the batch's largest one."""
    rows = max(item["region_table"].shape[0] for item in items)
    channels = items[0]["region_table"].shape[1]
    table = torch.zeros(len(items), rows, channels)
    group = torch.full((len(items), rows), -1, dtype=torch.int64)
    region_valid = torch.zeros(len(items), rows, dtype=torch.bool)
    for b, item in enumerate(items):
        n = item["region_table"].shape[0]
        table[b, :n] = item["region_table"]
        group[b, :n] = item["region_group"]
        region_valid[b, 1:n] = True
    if INPUTS + "xyz" in items[0]:
        batch = collate_prefixed(items)
        labels = torch.full((len(items), rows - 1), _NO_LABEL, dtype=torch.int64)
        for b, item in enumerate(items):
            labels[b, :len(item["region_labels"])] = item["region_labels"]
        batch["region_labels"] = labels
    else:
        batch = {key: torch.stack([item[key] for item in items]) for key in
                 ("rel", "centers", "valid", "point_rows", "token_row")}
    batch.update(region_table=table, region_group=group, region_valid=region_valid)
    return batch


def tokens_from_inputs(batch: dict[str, torch.Tensor], tokenizer) -> dict[str, torch.Tensor]:
    """A batch of tokenizer inputs (``collate`` of ``frame_tokenizer_inputs``) as the batch of tokens
    ``collate`` of ``frame_tokens`` gives, made where the batch is (the training device)."""
    tokens, out = tokenize_prefixed(tokenizer, batch)
    labels = out.pop("region_labels")
    out.update(rel=tokens.rel.float(), centers=tokens.centers.float(), valid=tokens.valid,
               point_rows=label_rows(tokens.point_regions, labels), token_row=label_rows(tokens.region, labels))
    return out


class TokenizedFrames(torch.utils.data.Dataset):
    """A prepared split seen through a tokenizer; a frame's tokens change with the epoch (new FPS start)."""

    def __init__(self, prepared, tokenizer, seed: int = 0, center: bool = True):
        self.prepared = prepared
        self.tokenizer = tokenizer
        self.seed = seed
        self.center = center
        self.epoch = 0
        self.on_device = False

    def __len__(self) -> int:
        return len(self.prepared)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        frame = self.prepared[index]
        seed = frame_seed(self.seed, self.epoch, frame.frame_id)
        if self.on_device:
            return frame_tokenizer_inputs(frame, self.tokenizer, seed, self.center)
        return frame_tokens(frame, self.tokenizer, seed, self.center)

    def tokens_on_device(self):
        """Items become tokenizer inputs; returns what turns their batch into tokens where it is (or None,
        with a note, when this tokenizer has no batched form: items stay tokens)."""
        if not batched_or_note(self.tokenizer, "pretraining tokens"):
            return None
        self.on_device = True
        return functools.partial(tokens_from_inputs, tokenizer=self.tokenizer)

"""From prepared frames to training batches: tokenize each frame, attach its 2D region table, pad, stack.

A batch is a dict of tensors (B frames, G tokens, K points per token, R region rows, C teacher channels):
``rel`` (B,G,K,3), ``centers`` (B,G,3), ``valid`` (B,G), ``point_rows`` (B,G,K) and ``token_row`` (B,G)
(rows into the frame's region table, 0 = no region), ``region_table`` (B,R,C) with row 0 all zeros,
``region_valid`` (B,R) and ``region_group`` (B,R) (-1 where there is no region).
"""
from __future__ import annotations

import zlib

import numpy as np
import torch

from methods.preparation import PreparedFrame


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
        "region_table": torch.cat([torch.zeros(1, frame.region_features.shape[1]),
                                   torch.from_numpy(frame.region_features.astype(np.float32))]),
        "region_group": torch.from_numpy(np.concatenate([[-1], frame.region_groups]).astype(np.int64)),
    }


def _rows(ids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Row of each label in a region table whose rows 1.. hold the sorted ``ids``; 0 for unknown labels."""
    if len(ids) == 0:
        return np.zeros(labels.shape, np.int64)
    pos = np.clip(np.searchsorted(ids, labels), 0, len(ids) - 1)
    return np.where((labels > 0) & (ids[pos] == labels), pos + 1, 0).astype(np.int64)


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack per-frame token dicts, padding region tables to the batch's largest one."""
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
    batch = {key: torch.stack([item[key] for item in items]) for key in
             ("rel", "centers", "valid", "point_rows", "token_row")}
    batch.update(region_table=table, region_group=group, region_valid=region_valid)
    return batch


class TokenizedFrames(torch.utils.data.Dataset):
    """A prepared split seen through a tokenizer; a frame's tokens change with the epoch (new FPS start)."""

    def __init__(self, prepared, tokenizer, seed: int = 0, center: bool = True):
        self.prepared = prepared
        self.tokenizer = tokenizer
        self.seed = seed
        self.center = center
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.prepared)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        frame = self.prepared[index]
        return frame_tokens(frame, self.tokenizer, frame_seed(self.seed, self.epoch, frame.frame_id), self.center)

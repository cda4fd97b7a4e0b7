"""Prepared frame -> tokens -> batch: region rows, padding of region tables, no region mixing."""
from __future__ import annotations

import numpy as np
import torch

from methods.batching import TokenizedFrames, _rows, collate, frame_tokens
from methods.preparation import PreparedFrame
from methods.tokenizers import KnnTokenizer, SamGuidedTokenizer


def _frame(num_regions: int, seed: int = 0, channels: int = 6) -> PreparedFrame:
    rng = np.random.default_rng(seed)
    n = 400
    xyz = rng.normal(size=(n, 3)).astype(np.float32)
    labels = np.arange(10, 10 + num_regions * 7, 7)  # sparse, non-contiguous mask labels
    region = np.where(rng.random(n) < 0.1, 0, labels[rng.integers(0, num_regions, n)]).astype(np.int32)
    return PreparedFrame(
        frame_id=f"f{seed}", xyz=xyz, rgb=np.zeros((n, 3), np.uint8), pixel=np.zeros((n, 2), np.int32),
        region=region, region_ids=labels.astype(np.int32),
        region_features=rng.normal(size=(num_regions, channels)).astype(np.float16),
        label_map=np.zeros((4, 4), np.int32), region_groups=rng.integers(0, 3, num_regions))


def test_rows_map_labels_to_table_rows():
    ids = np.array([3, 8, 20])
    assert _rows(ids, np.array([[0, 3, 8], [20, 5, 99]])).tolist() == [[0, 1, 2], [3, 0, 0]]
    assert _rows(np.zeros(0, np.int64), np.array([1, 2])).tolist() == [0, 0]


def test_sam_guided_token_rows_point_at_their_own_region_feature():
    frame = _frame(4)
    item = frame_tokens(frame, SamGuidedTokenizer(num_tokens=16, group_size=8), seed=0)
    valid = item["valid"]
    rows = item["point_rows"][valid]
    # Tokens never mix regions: every point of a token has the token's row.
    assert torch.equal(rows, item["token_row"][valid][:, None].expand_as(rows))
    labelled = item["token_row"] > 0
    table_row = item["region_table"][item["token_row"][labelled]]
    expected = torch.from_numpy(frame.region_features.astype(np.float32))[item["token_row"][labelled] - 1]
    assert torch.equal(table_row, expected)
    assert torch.equal(item["region_table"][0], torch.zeros(6))
    assert item["region_group"][0] == -1


def test_collate_pads_region_tables():
    items = [frame_tokens(_frame(r, seed=r), KnnTokenizer(num_tokens=8, group_size=16), seed=r) for r in (2, 5)]
    batch = collate(items)
    assert batch["rel"].shape == (2, 8, 16, 3) and batch["region_table"].shape == (2, 6, 6)
    assert batch["region_valid"].tolist() == [[False, True, True, False, False, False], [False] + [True] * 5]
    assert batch["region_group"][0, 3:].tolist() == [-1, -1, -1]
    assert int(batch["point_rows"][0].max()) <= 2


def test_tokens_change_with_the_epoch_but_not_between_calls():
    class _Split(list):
        pass

    data = TokenizedFrames(_Split([_frame(3)]), KnnTokenizer(num_tokens=8, group_size=16))
    first, again = data[0], data[0]
    assert torch.equal(first["centers"], again["centers"])
    data.epoch = 1
    assert not torch.equal(first["centers"], data[0]["centers"])

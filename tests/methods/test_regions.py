"""Region maths: upsampling and per-region mean features (methods/regions.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from methods.regions import region_features


def upsample_features(patch_features: torch.Tensor | np.ndarray, hw: tuple[int, int]) -> torch.Tensor:
    """The reference ``region_features`` must match: the patch grid (C, h, w) upsampled bilinearly to ``hw``."""
    feats = torch.as_tensor(patch_features, dtype=torch.float32)
    out = F.interpolate(feats[None], size=tuple(int(s) for s in hw), mode="bilinear", align_corners=False)
    return out[0]


def _two_regions(hw=(6, 8)) -> np.ndarray:
    label_map = np.zeros(hw, dtype=np.int32)
    label_map[:, :4] = 3
    label_map[2:, 5:] = 7  # the rest of the right half stays 0 (no mask)
    return label_map


def test_constant_features_per_region_are_recovered():
    label_map = _two_regions()
    feats = torch.zeros(2, *label_map.shape)
    feats[:, label_map == 3] = torch.tensor([[1.0], [2.0]])
    feats[:, label_map == 7] = torch.tensor([[-4.0], [0.5]])
    ids, region_feats = region_features(feats, label_map)
    assert ids.tolist() == [3, 7] and ids.dtype == np.int32
    torch.testing.assert_close(region_feats, torch.tensor([[1.0, 2.0], [-4.0, 0.5]]))


def test_constant_patch_grid_gives_the_constant_everywhere():
    ids, region_feats = region_features(torch.full((5, 3, 4), 2.5), _two_regions((12, 16)))
    assert ids.tolist() == [3, 7]
    torch.testing.assert_close(region_feats, torch.full((2, 5), 2.5))


def test_upsample_shape_and_values():
    patch = torch.arange(12.0).reshape(1, 3, 4)
    up = upsample_features(patch, (12, 16))
    assert up.shape == (1, 12, 16) and up.dtype == torch.float32
    assert up[0, 0, 0] == patch[0, 0, 0] and up[0, -1, -1] == patch[0, -1, -1]  # corners clamp
    assert upsample_features(np.ones((2, 3, 4)), (5, 7)).shape == (2, 5, 7)


@pytest.mark.parametrize("grid, hw", [((4, 6), (32, 48)), ((5, 7), (33, 50)), ((3, 3), (3, 3)), ((6, 9), (64, 96)),
                                      ((8, 10), (4, 5))])  # the last one downsamples
def test_patch_path_matches_upsample_then_loop(grid, hw):
    rng = np.random.default_rng(0)
    patch = torch.from_numpy(rng.standard_normal((4, *grid)).astype(np.float32))
    label_map = rng.integers(0, 6, size=hw).astype(np.int32)
    label_map[0, 0] = 9  # a one-pixel region
    ids, feats = region_features(patch, label_map)
    dense = upsample_features(patch, hw)
    assert ids.tolist() == sorted(set(np.unique(label_map).tolist()) - {0})
    for row, region in enumerate(ids):
        expected = dense[:, torch.from_numpy(label_map == region)].mean(dim=1)
        torch.testing.assert_close(feats[row], expected, atol=1e-5, rtol=1e-5)


def test_empty_label_map_gives_no_regions():
    ids, feats = region_features(torch.ones(3, 2, 2), np.zeros((8, 8), dtype=np.int32))
    assert ids.shape == (0,) and feats.shape == (0, 3)


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="integer"):
        region_features(torch.ones(3, 2, 2), np.zeros((8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(C, h, w\)"):
        region_features(torch.ones(2, 2), np.zeros((8, 8), dtype=np.int32))

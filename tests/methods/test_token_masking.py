"""Random token masking and token gathering (methods/token_masking.py)."""
from __future__ import annotations

import pytest
import torch

from methods.token_masking import gather_tokens, num_masked, random_token_mask, selection_index, take_tokens


def scatter_tokens(x_sel: torch.Tensor, index: torch.Tensor, valid: torch.Tensor,
                   num_tokens: int) -> torch.Tensor:
    """The inverse of ``take_tokens`` (a reference for it): (B, M, ...) back at ``index`` in a zero (B, G, ...)."""
    out = x_sel.new_zeros(x_sel.shape[0], num_tokens, *x_sel.shape[2:])
    b, m = torch.nonzero(valid, as_tuple=True)
    out[b, index[b, m]] = x_sel[b, m]
    return out


def _valid(counts, g=12) -> torch.Tensor:
    return torch.arange(g)[None, :] < torch.tensor(counts)[:, None]


def test_masks_round_of_ratio_times_valid_and_never_padding():
    counts = [12, 10, 5, 7, 1, 0, 2]
    valid = _valid(counts)
    mask = random_token_mask(valid, 0.6, generator=torch.Generator().manual_seed(0))
    # round(0.6 n) for n = 12, 10, 5, 7 -> 7, 6, 3, 4; n = 1 -> round(0.6) = 1 capped to 0 (one stays
    # visible); n = 0 -> 0; n = 2 -> round(1.2) = 1.
    assert mask.sum(1).tolist() == [7, 6, 3, 4, 0, 0, 1]
    assert not (mask & ~valid).any()
    assert ((valid & ~mask).sum(1) >= (torch.tensor(counts) > 0).long()).all()


def test_rounding_rule_is_half_up_and_keeps_one_visible():
    n = torch.tensor([0, 1, 2, 3, 5, 10])
    assert num_masked(n, 0.5).tolist() == [0, 0, 1, 2, 3, 5]  # 0.5 -> 1 capped to 0, 1.5 -> 2, 2.5 -> 3
    assert num_masked(n, 1.0).tolist() == [0, 0, 1, 2, 4, 9]  # at least one visible
    assert num_masked(n, 0.0).tolist() == [0] * 6
    with pytest.raises(ValueError):
        num_masked(n, 1.5)


def test_deterministic_with_a_generator_and_varies_with_seed():
    valid = _valid([12, 9, 4], g=12)
    a = random_token_mask(valid, 0.6, torch.Generator().manual_seed(5))
    b = random_token_mask(valid, 0.6, torch.Generator().manual_seed(5))
    c = random_token_mask(valid, 0.6, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_mask_is_uniform_over_valid_tokens():
    valid = _valid([5], g=8)
    gen = torch.Generator().manual_seed(0)
    freq = torch.stack([random_token_mask(valid, 0.6, gen)[0] for _ in range(2000)]).float().mean(0)
    torch.testing.assert_close(freq[:5], torch.full((5,), 0.6), atol=0.05, rtol=0)
    assert torch.all(freq[5:] == 0)


def test_selection_index_left_aligns_in_order():
    select = torch.tensor([[False, True, False, True], [True, False, False, False], [False] * 4])
    index, valid = selection_index(select)
    assert index.tolist() == [[1, 3], [0, 0], [0, 0]]
    assert valid.tolist() == [[True, True], [True, False], [False, False]]


def test_gather_tokens_pads_with_zeros_and_scatter_inverts():
    x = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3) + 1
    select = torch.tensor([[True, False, True, True], [False, True, False, False]])
    sel, valid = gather_tokens(x, select)
    assert sel.shape == (2, 3, 3) and valid.tolist() == [[True] * 3, [True, False, False]]
    torch.testing.assert_close(sel[0], x[0, [0, 2, 3]])
    torch.testing.assert_close(sel[1, 0], x[1, 1])
    assert torch.all(sel[1, 1:] == 0)
    index, valid = selection_index(select)
    back = scatter_tokens(take_tokens(x, index, valid), index, valid, num_tokens=4)
    torch.testing.assert_close(back, torch.where(select[..., None], x, torch.zeros(())))


def test_gather_works_on_extra_dims_and_empty_selection():
    x = torch.randn(2, 5, 4, 3)
    sel, valid = gather_tokens(x, torch.zeros(2, 5, dtype=torch.bool))
    assert sel.shape == (2, 1, 4, 3) and not valid.any() and torch.all(sel == 0)
    mask = random_token_mask(_valid([5, 3], g=5), 0.6, torch.Generator().manual_seed(0))
    vis, vis_valid = gather_tokens(x, _valid([5, 3], g=5) & ~mask)
    assert vis_valid.sum(1).tolist() == [2, 1]

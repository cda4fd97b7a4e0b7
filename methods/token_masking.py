"""Random token masking and gathering of token subsets into padded tensors (DESIGN.md 2.7).

Conventions: ``mask`` True = hidden (masked) token; ``valid`` False = padding. Gathered tensors keep
the selected tokens in their original order, left-aligned, followed by zeroed padding slots.
"""
from __future__ import annotations

import torch


def num_masked(num_valid: torch.Tensor, ratio: float) -> torch.Tensor:
    """How many tokens ``random_token_mask`` hides for each count of valid tokens.

    Rule: k = floor(ratio * n + 0.5) (round half up, computed in float64), then capped at n - 1 so
    at least one token stays visible whenever n >= 1 (the student needs something to attend to);
    n = 0 gives k = 0.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio: expected a value in [0, 1], got {ratio}")
    n = num_valid.to(torch.float64)
    k = torch.floor(ratio * n + 0.5)
    return torch.minimum(k, (n - 1).clamp_min(0)).to(torch.int64)


def random_token_mask(valid: torch.Tensor, ratio: float = 0.6,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Hide ``num_masked(valid.sum(1), ratio)`` valid tokens of each sample, chosen uniformly.

    Args:
      valid: (B, G) bool, False = padding (never masked).
      ratio: fraction of valid tokens to hide [paper summary: 0.6].
      generator: optional torch generator on ``valid``'s device, for reproducible masks.

    Returns:
      (B, G) bool, True = masked.
    """
    if valid.ndim != 2 or valid.dtype != torch.bool:
        raise ValueError(f"valid: expected a (B, G) bool tensor, got {valid.dtype} {tuple(valid.shape)}")
    k = num_masked(valid.sum(dim=1), ratio)
    scores = torch.rand(valid.shape, generator=generator, device=valid.device)
    scores = scores.masked_fill(~valid, float("inf"))  # padding ranks after every valid token
    ranks = torch.empty_like(valid, dtype=torch.int64)
    order = scores.argsort(dim=1)
    ranks.scatter_(1, order, torch.arange(valid.shape[1], device=valid.device).expand_as(order))
    return ranks < k[:, None]


def selection_index(select: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token indices of the True entries of ``select`` (B, G) bool, left-aligned per sample.

    Returns ``(index (B, M), valid (B, M) bool)`` with M = max selected count over the batch, but at
    least 1 so downstream shapes are never empty. Padding slots (valid False) hold index 0.
    """
    if select.ndim != 2 or select.dtype != torch.bool:
        raise ValueError(f"select: expected a (B, G) bool tensor, got {select.dtype} {tuple(select.shape)}")
    counts = select.sum(dim=1)
    m = max(int(counts.max()) if counts.numel() else 0, 1)
    # Stable sort of "not selected" puts selected tokens first, in their original order.
    order = torch.sort((~select).to(torch.int8), dim=1, stable=True).indices
    if order.shape[1] < m:  # G = 0: nothing to index
        order = torch.zeros(select.shape[0], m, dtype=torch.int64, device=select.device)
    valid = torch.arange(m, device=select.device)[None, :] < counts[:, None]
    index = torch.where(valid, order[:, :m], torch.zeros((), dtype=torch.int64, device=select.device))
    return index, valid


def take_tokens(x: torch.Tensor, index: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Gather tokens ``x`` (B, G, ...) at ``index`` (B, M) -> (B, M, ...), zero where not ``valid``."""
    if x.shape[1] == 0:
        return x.new_zeros(x.shape[0], index.shape[1], *x.shape[2:])
    idx = index.reshape(*index.shape, *([1] * (x.ndim - 2))).expand(*index.shape, *x.shape[2:])
    out = torch.gather(x, 1, idx)
    keep = valid.reshape(*valid.shape, *([1] * (x.ndim - 2)))
    return torch.where(keep, out, torch.zeros((), dtype=x.dtype, device=x.device))


def gather_tokens(x: torch.Tensor, select: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Selected tokens of ``x`` (B, G, ...) as ``(x_sel (B, M, ...), valid_sel (B, M))``.

    Use ``selection_index`` + ``take_tokens`` to gather several tensors with one index.
    """
    index, valid = selection_index(select)
    return take_tokens(x, index, valid), valid

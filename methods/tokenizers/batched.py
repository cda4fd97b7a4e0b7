"""Batched tokenization on the training device, giving the tokens of the per-frame CPU tokenizers.

Each tokenizer splits into a cheap per-frame CPU part and a batched torch part::

    items = [tokenizer_inputs(tok, xyz, region_ids, seed=s) for ...]   # DataLoader workers, CPU
    inputs = collate_tokenizer_inputs(items)                            # collate_fn
    tokens = tokenize_batch(tok, {k: v.to(device) for k, v in inputs.items()})

``tokenize_batch`` returns ``TokenSet.stack([tok(xyz_b, region_ids_b, seed=s_b) for b])``: the same
centres, validity, regions and ``rel``, and the same neighbour indices up to exact distance ties (KNN).
SAM-guided centres are float64 means summed in another order than the CPU path's (BLAS, machine
dependent): for float32 points they round to the same float32 but where the mean lies on a rounding
midpoint (then one float32 step apart, ~0.1-0.3 % of coordinates); for float64 points a few float64 steps.
``tokenizer_inputs`` holds every random draw of the CPU path (the FPS start; for SAM-guided the
allocation, first-seed offsets and sampling numbers), so the seed alone fixes the tokens, on any
device; its ``token_shape`` (G, K) must match the tokenizer given to ``tokenize_batch``. Outputs have
the points' float dtype as ``check_inputs`` returns it (float32, or float64; the CPU path also casts
back to a lower-precision input's dtype). ``supports_batched`` says which tokenizer options are
ported (KNN: ``ExactFPS``; SAM-guided: ``split="nearest_seed"``, ``center="sampled"``); the others
raise.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch

from infra.progress import note_once
from methods.tokenizers.batched_knn import knn_inputs, knn_tokenize, knn_unsupported
from methods.tokenizers.batched_sam import sam_inputs, sam_tokenize, sam_unsupported
from methods.tokenizers.knn import KnnTokenizer
from methods.tokenizers.sam_guided import SamGuidedTokenizer
from methods.tokenizers.token_set import TokenSet

INPUTS = "tokenizer/"  # prefixes a training batch's tokenizer inputs, beside its other tensors


class BatchedPath(NamedTuple):
    """A tokenizer type's batched path: why an instance is not ported, its CPU inputs, its batched tokens."""

    unsupported: Callable[[Any], str | None]
    inputs: Callable[[Any, torch.Tensor, torch.Tensor | None, int | None], dict[str, torch.Tensor]]
    tokenize: Callable[[Any, dict[str, torch.Tensor]], TokenSet]


BATCHED_PATHS: dict[type, BatchedPath] = {
    KnnTokenizer: BatchedPath(knn_unsupported, knn_inputs, knn_tokenize),
    SamGuidedTokenizer: BatchedPath(sam_unsupported, sam_inputs, sam_tokenize),
}


def supports_batched(tokenizer) -> str | None:
    """None if ``tokenizer`` has a batched path, else a one-line reason."""
    path = BATCHED_PATHS.get(type(tokenizer))
    if path is None:
        known = ", ".join(t.__name__ for t in BATCHED_PATHS)
        return f"{type(tokenizer).__name__} has no batched path (ported: {known})"
    return path.unsupported(tokenizer)


def tokenizer_inputs(
    tokenizer, xyz: torch.Tensor, region_ids: torch.Tensor | None, seed: int | None = None
) -> dict[str, torch.Tensor]:
    """One frame's inputs to ``tokenize_batch``, on the CPU, with every random draw of
    ``tokenizer(xyz, region_ids, seed=seed)`` (``seed`` None: the tokenizer's own)."""
    return _path(tokenizer).inputs(tokenizer, xyz, region_ids, seed)


def collate_tokenizer_inputs(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack ``tokenizer_inputs`` of B frames; variable-length fields are zero-padded at the end.

    Zero padding is what every field means by "absent": ``point_valid`` False for padded points,
    segment 0 / no tokens for padded regions, unread uniforms.
    """
    if not items:
        raise ValueError("items: expected at least one frame's tokenizer inputs, got an empty list")
    keys = list(items[0])
    for item in items[1:]:
        if list(item) != keys:
            raise ValueError(f"items: expected the keys {keys} in every item, got {list(item)}")
    batch = {}
    for key in keys:
        values = [item[key] for item in items]
        first = values[0]
        if any(v.dtype != first.dtype or v.shape[1:] != first.shape[1:] for v in values):
            raise ValueError(f"items[...][{key!r}]: expected one dtype and trailing shape, got "
                             f"{sorted({(str(v.dtype), tuple(v.shape[1:])) for v in values})}")
        if first.dim() == 0 or all(v.shape == first.shape for v in values):
            batch[key] = torch.stack(values)
            continue
        out = first.new_zeros((len(values), max(len(v) for v in values), *first.shape[1:]))
        for b, v in enumerate(values):
            out[b, : len(v)] = v
        batch[key] = out
    return batch


def with_prefix(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One item's tokenizer inputs under ``INPUTS`` keys, to travel beside the item's other tensors."""
    return {INPUTS + k: v for k, v in inputs.items()}


def collate_prefixed(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``collate_tokenizer_inputs`` of the ``INPUTS`` keys of training items, under ``INPUTS`` keys again."""
    return with_prefix(collate_tokenizer_inputs([{k[len(INPUTS):]: v for k, v in item.items() if k.startswith(INPUTS)}
                                                 for item in items]))


def tokenize_prefixed(tokenizer, batch: dict[str, torch.Tensor]) -> tuple[TokenSet, dict[str, torch.Tensor]]:
    """The tokens of a training batch's ``INPUTS`` keys (``tokenize_batch``) and the batch's other keys."""
    inputs = {k[len(INPUTS):]: v for k, v in batch.items() if k.startswith(INPUTS)}
    return tokenize_batch(tokenizer, inputs), {k: v for k, v in batch.items() if not k.startswith(INPUTS)}


def batched_or_note(tokenizer, what: str) -> bool:
    """Whether ``tokenizer`` has a batched path; if not, a note once that ``what`` stay per sample on the CPU."""
    reason = supports_batched(tokenizer)
    if reason is not None:
        note_once(f"{what} made per sample on the CPU: {reason}")
    return reason is None


def tokenize_batch(tokenizer, inputs: dict[str, torch.Tensor]) -> TokenSet:
    """Tokens of a collated batch, computed on the inputs' device; a TokenSet with a leading batch dim."""
    path = _path(tokenizer)
    shape = inputs["token_shape"].tolist()
    if any(s != [tokenizer.num_tokens, tokenizer.group_size] for s in shape):
        raise ValueError(f"inputs: made for (G, K) {sorted(set(map(tuple, shape)))}, "
                         f"tokenizer has ({tokenizer.num_tokens}, {tokenizer.group_size})")
    return path.tokenize(tokenizer, inputs)


def _path(tokenizer) -> BatchedPath:
    reason = supports_batched(tokenizer)
    if reason is not None:
        raise ValueError(f"tokenizer: {reason}")
    return BATCHED_PATHS[type(tokenizer)]

"""Token report: what a tokenizer's tokens hold on prepared frames, the same numbers for every tokenizer.

``token_report(tokenizer, frames, seed)`` tokenizes each frame exactly as a pretraining stage's first
epoch does (``methods.batching.frame_inputs`` and ``frame_seed(seed, 0, frame_id)``, with ``seed`` the
stage's step seed) and returns floats:

- ``frames``: frames reported on.
- ``tokens_mean`` / ``tokens_min`` / ``tokens_max``: valid (non-padding) tokens per frame.
- ``points_per_token_mean`` / ``points_per_token_min``: distinct points per valid token, over the
  valid tokens of all frames (K when no point repeats).
- ``coverage_mean`` / ``coverage_min`` / ``coverage_max``: per frame, the fraction of its points that
  are in at least one valid token.
- ``mixed_mean``: per frame, the fraction of valid tokens whose points carry more than one region id
  of the frame's prepared ``region`` (0 = no region counts as an id); mean over frames with a token.
- ``mixed_regions_mean``: the same for more than one non-zero id (two SAM regions in one token).

SAM-guided tokens mix nothing by construction (the report checks it from the points' own ids, not
from the tokens' labels); KNN tokens mix wherever a neighbourhood crosses a region border.
``stage_token_report`` prefixes the keys with ``tokens/<stage>/`` for a pretraining row's MLflow run.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from methods.batching import frame_inputs, frame_seed

REPORT_FRAMES = 32  # frames a pretraining row reports on: the first ones of the prepared split


def _distinct_per_row(values: np.ndarray) -> np.ndarray:
    """Number of distinct values in each row of a 2-D integer array."""
    if values.shape[1] == 0:
        return np.zeros(len(values), dtype=np.int64)
    ordered = np.sort(values, axis=1)
    return 1 + (np.diff(ordered, axis=1) != 0).sum(axis=1)


def _frame_stats(tokens, region: np.ndarray) -> dict[str, object]:
    """Valid tokens, distinct points per token, coverage and mixing of one frame's tokens."""
    index = tokens.index.numpy()[tokens.valid.numpy()]
    ids = region[index]
    n_ids = _distinct_per_row(ids)
    n_regions = n_ids - (ids == 0).any(axis=1)  # distinct ids other than 0 (no region)
    return {"tokens": len(index), "distinct": _distinct_per_row(index),
            "coverage": len(np.unique(index)) / len(region),
            "mixed": float(np.mean(n_ids > 1)) if len(index) else None,
            "mixed_regions": float(np.mean(n_regions > 1)) if len(index) else None}


def token_report(tokenizer, frames: Sequence, seed: int, center: bool = True) -> dict[str, float]:
    """The report of the module docstring over ``frames`` (objects with ``xyz``, ``region``, ``frame_id``)."""
    stats = []
    for frame in frames:
        xyz, region = frame_inputs(frame, center)
        tokens = tokenizer(xyz, region, seed=frame_seed(seed, 0, frame.frame_id))
        stats.append(_frame_stats(tokens, region.numpy()))
    if not stats:
        raise ValueError("frames: expected at least one frame, got none")
    tokens = np.array([s["tokens"] for s in stats], dtype=np.float64)
    coverage = np.array([s["coverage"] for s in stats])
    distinct = np.concatenate([s["distinct"] for s in stats]).astype(np.float64)
    report = {"frames": float(len(stats)),
              "tokens_mean": float(tokens.mean()), "tokens_min": float(tokens.min()), "tokens_max": float(tokens.max()),
              "points_per_token_mean": float(distinct.mean()) if len(distinct) else float("nan"),
              "points_per_token_min": float(distinct.min()) if len(distinct) else float("nan"),
              "coverage_mean": float(coverage.mean()), "coverage_min": float(coverage.min()),
              "coverage_max": float(coverage.max())}
    for key in ("mixed", "mixed_regions"):
        values = [s[key] for s in stats if s[key] is not None]
        report[f"{key}_mean"] = float(np.mean(values)) if values else float("nan")
    return report


def stage_token_report(stage_name: str, tokenizer, prepared: Sequence, seed: int,
                       num_frames: int = REPORT_FRAMES) -> dict[str, float]:
    """``token_report`` of the first ``num_frames`` frames of ``prepared`` as ``tokens/<stage>/<key>`` metrics."""
    frames = [prepared[i] for i in range(min(num_frames, len(prepared)))]
    return {f"tokens/{stage_name}/{k}": v for k, v in token_report(tokenizer, frames, seed).items()}

"""What one training step holds in memory, estimated from the sizes a configuration sets, before any work.

A count of float32 values per sample from the layers' widths, as a step keeps them for its backward pass
(measured on CPU, torch 2.13; ``python -m bench.perf memory`` prints measured peaks beside this count):

- every point of every token (tokens x group size) through the mini-PointNet:
  ``in + 3 h1 + 3 o1 + 3 h2 + width`` for ``embed_channels = (h1, o1, h2)``;
- every token through every transformer block: ``10 width + 3 MLP hidden`` (attention runs in a fused
  kernel that keeps no tokens x tokens matrix, on CPU and CUDA alike);
- what a head keeps per point of the sample (segmentation: ``3 width + 4 hidden + 3 classes + 32``);
- the sample's arrays before the model (points, colours, labels, indices, the neighbour search): 80 bytes
  a point;
- the parameters with their gradients and AdamW's two moments: 16 bytes each;
- the process itself (Python, torch, the harness's imports): ``RUNTIME_BYTES``.

The total is multiplied by ``SAFETY`` (the allocator's slack and the backward pass's transient gradients).
Not counted: the per-process memory caches of read scenes and prepared frames (``infra.memory_cache``, at
most 2 GiB of each, and only as much as the data holds).
"""
from __future__ import annotations

import dataclasses

FLOAT_BYTES = 4
DATA_BYTES_PER_POINT = 80
OPTIMIZER_BYTES_PER_PARAMETER = 16
SAFETY = 1.25
RUNTIME_BYTES = 0.5 * 2**30  # a process after importing the harness and torch: 0.23 GB RSS measured


@dataclasses.dataclass(frozen=True)
class StepMemory:
    """The parts of one step's memory in one process: what holds it (naming the parameters) -> bytes."""

    parts: dict[str, float]

    @property
    def total(self) -> float:
        """The estimate in bytes, with the safety factor."""
        return SAFETY * sum(self.parts.values())

    @property
    def largest(self) -> str:
        """The part that holds the most, as its name says it."""
        return max(self.parts, key=self.parts.get)


def token_embed_values(encoder, group_size: int) -> float:
    """Values the mini-PointNet keeps per point of a token."""
    h1, o1, h2 = encoder.embed_channels
    return encoder.in_channels + 3 * h1 + 3 * o1 + 3 * h2 + encoder.width


def block_values(width: int, mlp_ratio: float) -> float:
    """Values one transformer block keeps per token."""
    return 10 * width + 3 * width * mlp_ratio


def encoder_parameters(encoder) -> float:
    """Parameters of a ``TransformerEncoder`` of ``encoder``'s sizes (weights and biases, norms left out)."""
    h1, o1, h2 = encoder.embed_channels
    w, hidden = encoder.width, encoder.width * encoder.mlp_ratio
    embed = encoder.in_channels * h1 + h1 * o1 + 2 * o1 * h2 + h2 * w
    position = 3 * 128 + 128 * w
    return embed + position + encoder.depth * (4 * w * w + 2 * w * hidden)


def encoder_parts(encoder, tokens: int, group_size: int, batch: int, where: str) -> dict[str, float]:
    """The token embedding's and the transformer's parts of a step over ``tokens`` x ``group_size`` points."""
    embed = batch * tokens * group_size * token_embed_values(encoder, group_size) * FLOAT_BYTES
    blocks = batch * tokens * encoder.depth * block_values(encoder.width, encoder.mlp_ratio) * FLOAT_BYTES
    return {f"{where}: {tokens} tokens x {group_size} points x batch {batch} through the mini-PointNet "
            f"(EncoderSpec.embed_channels = {tuple(encoder.embed_channels)})": embed,
            f"{where}: {tokens} tokens x batch {batch} through {encoder.depth} blocks of width "
            f"{encoder.width} (EncoderSpec)": blocks}


def parameter_part(parameters: float, encoder) -> dict[str, float]:
    """The parameters' part (named by the encoder's sizes, which set most of them), and the process's own."""
    name = (f"{parameters / 1e6:.1f} M parameters (EncoderSpec width {encoder.width}, depth {encoder.depth}, and "
            "the heads) with their gradients and AdamW's moments")
    return {name: parameters * OPTIMIZER_BYTES_PER_PARAMETER, "the process itself (Python, torch)": RUNTIME_BYTES}


def point_parts(where: str, num_points: int, batch: int, values_per_point: float) -> dict[str, float]:
    """The sample's arrays and what the head keeps for ``num_points`` points a sample."""
    per_point = DATA_BYTES_PER_POINT + values_per_point * FLOAT_BYTES
    return {f"{where}.num_points = {num_points} points x batch {batch}": batch * num_points * per_point}

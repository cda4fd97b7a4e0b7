"""Point-MAE-style 3D token encoder and light decoder (DESIGN.md 2.4, 2.7) [prior].

Inputs are batched tokens: ``rel`` (B, G, K, C_in) point coordinates relative to their token centre
(optionally with extra per-point channels such as rgb after xyz), ``centers`` (B, G, 3) and ``valid``
(B, G) bool (False = padding). Pipeline, as in Point-MAE / Bridge3D:

    TokenEmbed (mini-PointNet) -> tokens, PositionEmbed(centers) -> pos,
    for each block: x = block(x + pos)  (pos re-added before every block, as Point-MAE does),
    final LayerNorm.

Padding never influences valid tokens: the mini-PointNet only sees valid tokens (so BatchNorm
statistics come from real points), attention masks padded keys, and padded outputs are zeroed.

Model classes are plain ``nn.Module``s; gin only sees the ``EncoderSpec`` / ``DecoderSpec`` records.
"""
from __future__ import annotations

import dataclasses

import gin
import torch
import torch.nn.functional as F
from torch import nn

# Mini-PointNet widths of Point-MAE's ``Encoder`` [prior]: 128 -> 256, then (256+256) -> 512 -> width.
POINT_MAE_EMBED_CHANNELS = (128, 256, 512)  # [prior] Point-MAE mini-PointNet hidden widths
_POS_HIDDEN = 128


def init_weights(module: nn.Module) -> None:
    """Point-MAE initialisation [prior]: trunc-normal(0.02) linear/conv weights, zero biases, unit norms."""
    if isinstance(module, (nn.Linear, nn.Conv1d)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.BatchNorm1d)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _zero_padding(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return torch.where(valid.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))


class TokenEmbed(nn.Module):
    """Mini-PointNet of Point-MAE: (B, G, K, C_in) points per token -> (B, G, width) token embeddings.

    Shared point MLP -> max-pool -> pooled feature concatenated back onto every point -> second
    MLP -> max-pool. ``norm`` is "batch" (Point-MAE [prior]) or "layer"; with "batch" the statistics
    are taken over valid tokens only, which is why only valid tokens are embedded (padding -> 0).
    """

    def __init__(self, width: int, in_channels: int = 3, norm: str = "batch",
                 channels: tuple[int, int, int] = POINT_MAE_EMBED_CHANNELS):
        super().__init__()
        first_hidden, first_out, second_hidden = channels
        if norm not in ("batch", "layer"):
            raise ValueError(f"norm: expected 'batch' or 'layer', got {norm!r}")
        self.width = width
        self.in_channels = in_channels
        self.first = nn.Sequential(
            nn.Linear(in_channels, first_hidden), _PointNorm(first_hidden, norm), nn.ReLU(),
            nn.Linear(first_hidden, first_out))
        self.second = nn.Sequential(
            nn.Linear(2 * first_out, second_hidden), _PointNorm(second_hidden, norm), nn.ReLU(),
            nn.Linear(second_hidden, width))

    def forward(self, points: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if points.ndim != 4 or points.shape[-1] != self.in_channels:
            raise ValueError(f"points: expected (B, G, K, {self.in_channels}), got {tuple(points.shape)}")
        out = points.new_zeros(*points.shape[:2], self.width)
        if not bool(valid.any()):
            return out
        x = points[valid]  # (N, K, C_in): only real tokens
        feat = self.first(x)
        pooled = feat.max(dim=1, keepdim=True).values
        feat = self.second(torch.cat([pooled.expand_as(feat), feat], dim=-1))
        out[valid] = feat.max(dim=1).values.to(out.dtype)
        return out


class _PointNorm(nn.Module):
    """BatchNorm1d over all points of all (valid) tokens, or LayerNorm per point, on (N, K, C)."""

    def __init__(self, channels: int, kind: str):
        super().__init__()
        self.kind = kind
        self.norm = nn.BatchNorm1d(channels) if kind == "batch" else nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "batch":
            # The same statistics as BatchNorm1d on (N, C, K), but on a contiguous (N*K, C) view: the
            # transposed layout sends the CPU kernels down a strided path about five times slower.
            return self.norm(x.reshape(-1, x.shape[-1])).reshape(x.shape)
        return self.norm(x)


class Dropout(nn.Module):
    """Inverted dropout: zero each element with probability ``p``, scale the rest by 1 / (1 - p).

    The same distribution as ``nn.Dropout``, with the keep mask drawn by ``torch.rand`` from the global
    generator (``methods.train`` seeds it per epoch): ``nn.Dropout`` draws it with ``bernoulli_``, whose
    CPU kernel runs element by element and was a seventh of a segmentation step here.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability: expected a value in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape, dtype=x.dtype, device=x.device) >= self.p
        return x * (keep.to(x.dtype) * (1.0 / (1.0 - self.p)))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class PositionEmbed(nn.Module):
    """Centre -> position embedding: Linear(3, 128) -> GELU -> Linear(128, width) [prior]."""

    def __init__(self, width: int, hidden: int = _POS_HIDDEN):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, centers: torch.Tensor) -> torch.Tensor:
        return self.mlp(centers)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per sample with probability ``p``."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention`` with a key padding mask."""

    def __init__(self, width: int, heads: int, qkv_bias: bool = False):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=qkv_bias)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        b, g, c = x.shape
        q, k, v = self.qkv(x).reshape(b, g, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        # A row with no valid token would mask every key and softmax would return NaN; let such rows
        # attend to everything instead (their outputs are padding and zeroed by the encoder).
        keys = valid | ~valid.any(dim=1, keepdim=True)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keys[:, None, None, :])
        return self.proj(out.transpose(1, 2).reshape(b, g, c))


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x)))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 2.0, drop_path: float = 0.0,
                 qkv_bias: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x), valid), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


def _drop_path_rates(rate: float, depth: int) -> list[float]:
    # Linearly increasing with depth, as Point-MAE / timm [prior].
    return [float(r) for r in torch.linspace(0.0, rate, depth)] if depth else []


class _BlockStack(nn.Module):
    """Blocks with ``pos`` re-added before each, then a final LayerNorm; padding outputs zeroed."""

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: float, drop_path: float,
                 qkv_bias: bool):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(width, heads, mlp_ratio, r, qkv_bias) for r in _drop_path_rates(drop_path, depth))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x + pos, valid)
        return _zero_padding(self.norm(x), valid)


class TransformerEncoder(nn.Module):
    """Point-MAE / Bridge3D 3D encoder: tokens -> (B, G, width) features (padding rows are 0).

    ``forward(rel, centers, valid)`` runs on every token. For masked modelling call ``embed`` on all
    tokens, keep the visible ones (``methods.token_masking.gather_tokens``) and call ``forward_tokens``.
    """

    def __init__(self, width: int = 256, depth: int = 3, heads: int = 4, mlp_ratio: float = 2.0,
                 drop_path: float = 0.1, in_channels: int = 3, qkv_bias: bool = False,
                 embed_norm: str = "batch", embed_channels: tuple[int, int, int] = POINT_MAE_EMBED_CHANNELS):
        super().__init__()
        self.width = width
        self.in_channels = in_channels
        self.token_embed = TokenEmbed(width, in_channels, embed_norm, tuple(embed_channels))
        self.pos_embed = PositionEmbed(width)
        self.stack = _BlockStack(width, depth, heads, mlp_ratio, drop_path, qkv_bias)
        self.apply(init_weights)

    def embed(self, rel: torch.Tensor, centers: torch.Tensor,
              valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(token embeddings (B, G, width), position embeddings (B, G, width))."""
        if centers.shape[:2] != rel.shape[:2] or valid.shape != rel.shape[:2]:
            raise ValueError(f"rel {tuple(rel.shape)}, centers {tuple(centers.shape)} and valid "
                             f"{tuple(valid.shape)} disagree on (B, G)")
        return self.token_embed(rel, valid), self.pos_embed(centers)

    def forward_tokens(self, tokens: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Transformer blocks + final norm on already-embedded tokens (B, M, width) -> (B, M, width)."""
        return self.stack(tokens, pos, valid)

    def forward(self, rel: torch.Tensor, centers: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        tokens, pos = self.embed(rel, centers, valid)
        return self.forward_tokens(tokens, pos, valid)


class TransformerDecoder(nn.Module):
    """Light Point-MAE decoder: fills a learned mask token at each masked centre [prior].

    Self-attention runs over [visible features, mask tokens] with their own position embedding of
    the centres; returns the (normed) outputs of the mask tokens only, (B, M_masked, width).
    """

    def __init__(self, width: int = 256, depth: int = 2, heads: int = 4, mlp_ratio: float = 2.0,
                 drop_path: float = 0.1, qkv_bias: bool = False):
        super().__init__()
        self.width = width
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = PositionEmbed(width)
        self.stack = _BlockStack(width, depth, heads, mlp_ratio, drop_path, qkv_bias)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, visible: torch.Tensor, visible_centers: torch.Tensor, visible_valid: torch.Tensor,
                masked_centers: torch.Tensor, masked_valid: torch.Tensor) -> torch.Tensor:
        m = masked_centers.shape[1]
        mask_tokens = self.mask_token.to(visible.dtype).expand(visible.shape[0], m, -1)
        x = torch.cat([visible, mask_tokens], dim=1)
        pos = self.pos_embed(torch.cat([visible_centers, masked_centers], dim=1))
        valid = torch.cat([visible_valid, masked_valid], dim=1)
        return self.stack(x, pos, valid)[:, visible.shape[1]:]


class ProjectionHead(nn.Module):
    """Linear -> GELU -> Linear, e.g. Proj(H) to the teacher's width (DESIGN 2.5) or L_ins's MLP."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or in_dim
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


@gin.register
@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """Encoder sizes; defaults are Bridge3D's [prior]: width 256, depth 3, 4 heads, MLP ratio 2,
    drop-path 0.1. ``in_channels`` 3 = xyz only (6 with rgb). ``embed_norm``: mini-PointNet norm;
    ``embed_channels``: its hidden widths (Point-MAE: 128, 256, 512; smaller for CPU demos)."""

    width: int = 256
    depth: int = 3
    heads: int = 4
    mlp_ratio: float = 2.0
    drop_path: float = 0.1
    in_channels: int = 3
    qkv_bias: bool = False
    embed_norm: str = "batch"
    embed_channels: tuple[int, int, int] = POINT_MAE_EMBED_CHANNELS

    def build(self) -> TransformerEncoder:
        """A freshly initialised ``TransformerEncoder`` of these sizes."""
        return TransformerEncoder(**dataclasses.asdict(self))


@gin.register
@dataclasses.dataclass(frozen=True)
class DecoderSpec:
    """Masked-token decoder sizes: 2 blocks [prior], heads / ratio / drop-path as the encoder."""

    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 2.0
    drop_path: float = 0.1
    qkv_bias: bool = False

    def build(self, width: int) -> TransformerDecoder:
        """A decoder of the encoder's ``width``."""
        return TransformerDecoder(width=width, **dataclasses.asdict(self))

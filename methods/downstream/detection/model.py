"""3DETR-style detector on top of the token encoder (DESIGN.md 2.9) [prior: Misra et al. 2021].

    tokens --encoder--> memory (B, G, W);  FPS over valid token centres --> Q query positions
    query_pos = QueryProj(PosEmbed(query xyz)),  memory_pos = PosEmbed(token centres)
    x = 0;  for each pre-norm decoder layer:  x = layer(x, query_pos, memory, memory_pos)
            heads(LayerNorm(x))  -> one box set per layer (heads shared across layers, as 3DETR)

Box parameterisation [choice]: centre = query xyz + a free offset in metres (3DETR bounds the offset
with a sigmoid in scene-normalised coordinates); size = exp(log-extents) (3DETR predicts
sigmoid(x) * scene extent) -- log-extents need no scene range and keep sizes positive. Heading (when
``has_yaw``): bin logits + per-bin residual normalised by half the bin width (``boxes.py``); the decoded
yaw uses the arg-max bin, so gradients reach the residual of that bin only, as in 3DETR.

Decoder width = encoder width (3DETR projects the encoder output to its own decoder width first).
One ``PositionEmbed`` MLP embeds both token centres and query positions (3DETR shares its Fourier
embedding the same way); queries add 3DETR's query projection MLP. Initialisation as 3DETR:
xavier-uniform decoder layers, PyTorch defaults elsewhere; the (possibly pretrained) encoder is kept.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from methods.downstream.detection.boxes import heading_to_yaw
from methods.encoder import Dropout, PositionEmbed, TransformerEncoder
from methods.tokenizers.sampling import farthest_point_sampling

# exp() of the log-extent head is clamped to [e^-7, e^5] m (~1 mm .. 148 m): never 0 or inf.
_LOG_SIZE_RANGE = (-7.0, 5.0)


def sample_queries(centers: torch.Tensor, valid: torch.Tensor,
                   num_queries: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FPS over each scene's valid token centres -> (query xyz (B, Q, 3), query valid (B, Q) bool,
    token index of each query (B, Q) int64).

    FPS starts at the first valid token (3DETR's pointnet2 FPS starts at index 0). A scene with fewer
    than Q valid tokens gets one query per token; the remaining rows are padding (xyz 0, token 0, invalid).
    """
    b = centers.shape[0]
    xyz = centers.new_zeros(b, num_queries, 3)
    query_valid = torch.zeros(b, num_queries, dtype=torch.bool, device=centers.device)
    token = torch.zeros(b, num_queries, dtype=torch.int64, device=centers.device)
    for i in range(b):
        idx = torch.nonzero(valid[i]).squeeze(1)
        k = min(num_queries, len(idx))
        if k == 0:
            continue
        pts = centers[i, idx].detach()
        pick = torch.from_numpy(farthest_point_sampling(pts.float().cpu().numpy(), k)).to(pts.device)
        xyz[i, :k] = pts[pick]
        token[i, :k] = idx[pick]
        query_valid[i, :k] = True
    return xyz, query_valid, token


class _Attention(nn.Module):
    """Multi-head attention (separate q/k/v inputs) via ``scaled_dot_product_attention``."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.dropout = dropout
        self.q, self.k, self.v = (nn.Linear(width, width) for _ in range(3))
        self.proj = nn.Linear(width, width)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_valid: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.q(query)), self._split(self.k(key)), self._split(self.v(value))
        # A scene with no valid key would give NaN rows; let it attend to everything (its queries are
        # padding and ignored downstream).
        keys = key_valid | ~key_valid.any(dim=1, keepdim=True)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keys[:, None, None, :],
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).flatten(2))


class DecoderLayer(nn.Module):
    """3DETR pre-norm decoder layer: self-attn over queries, cross-attn to memory, ReLU MLP.

    The query position embedding is added to the self-attention queries/keys and to the
    cross-attention queries; the memory position embedding to the cross-attention keys.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(width) for _ in range(3))
        self.self_attn = _Attention(width, heads, dropout)
        self.cross_attn = _Attention(width, heads, dropout)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), Dropout(dropout),
                                 nn.Linear(hidden, width))
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, query_valid: torch.Tensor,
                memory: torch.Tensor, memory_pos: torch.Tensor, memory_valid: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.self_attn(h + pos, h + pos, h, query_valid))
        h = self.norm2(x)
        x = x + self.drop(self.cross_attn(h + pos, memory + memory_pos, memory, memory_valid))
        return x + self.drop(self.mlp(self.norm3(x)))


def _head(width: int, out: int, dropout: float) -> nn.Sequential:
    # 3DETR's GenericMLP: two hidden layers of the decoder width, ReLU, dropout. LayerNorm replaces
    # its BatchNorm so padded queries never enter normalisation statistics.
    return nn.Sequential(
        nn.Linear(width, width), nn.LayerNorm(width), nn.ReLU(), Dropout(dropout),
        nn.Linear(width, width), nn.LayerNorm(width), nn.ReLU(), Dropout(dropout),
        nn.Linear(width, out))


class Detector3D(nn.Module):
    """Token encoder + 3DETR decoder; ``forward(batch)`` -> one output dict per decoder layer.

    Defaults are 3DETR's [prior]: 256 queries, 8 decoder layers, 4 heads, dropout 0.1, head dropout
    0.3, 12 heading bins (SUN RGB-D). ``mlp_ratio`` 2 is the encoder's (3DETR: FFN 256 at width 256,
    i.e. 1). Each dict holds ``center`` (B, Q, 3), ``size`` (B, Q, 3) positive full extents,
    ``log_size``, ``logits`` (B, Q, C+1; last = no-object), ``yaw`` (B, Q) (0 without heading),
    ``query_xyz``, ``query_valid`` (B, Q), and with ``has_yaw`` ``heading_logits`` /
    ``heading_residual`` (B, Q, num_heading_bins; residual normalised by half the bin width).
    ``query_from_tokens`` starts each query from its sampled token's encoder feature (GroupFree3D-style
    [choice]) instead of 3DETR's zeros.
    """

    def __init__(self, encoder: TransformerEncoder, num_classes: int, has_yaw: bool,
                 num_queries: int = 256, decoder_depth: int = 8, heads: int = 4,
                 mlp_ratio: float = 2.0, dropout: float = 0.1, num_heading_bins: int = 12,
                 head_dropout: float = 0.3, query_from_tokens: bool = False):
        super().__init__()
        self.query_from_tokens = query_from_tokens
        width = encoder.width
        self.encoder = encoder
        self.num_classes = num_classes
        self.has_yaw = has_yaw
        self.num_queries = num_queries
        self.num_heading_bins = num_heading_bins
        self.pos_embed = PositionEmbed(width)
        # 3DETR's query_projection: one hidden layer and a ReLU on the output.
        self.query_proj = nn.Sequential(nn.Linear(width, width), nn.ReLU(),
                                        nn.Linear(width, width), nn.ReLU())
        self.layers = nn.ModuleList(
            DecoderLayer(width, heads, mlp_ratio, dropout) for _ in range(decoder_depth))
        self.norm = nn.LayerNorm(width)
        self.heads = nn.ModuleDict({
            "center": _head(width, 3, head_dropout),
            "size": _head(width, 3, head_dropout),
            "cls": _head(width, num_classes + 1, head_dropout),
        })
        if has_yaw:
            self.heads["heading_cls"] = _head(width, num_heading_bins, head_dropout)
            self.heads["heading_res"] = _head(width, num_heading_bins, head_dropout)
        # Small-std (0.02) init here would make every query's attention uniform at the start and
        # training very slow; the encoder is untouched (it may hold pretrained weights).
        for p in self.layers.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        centers, valid = batch["centers"], batch["valid"]
        memory = self.encoder(batch["rel"], centers, valid)
        memory_pos = self.pos_embed(centers)
        query_xyz, query_valid, query_token = sample_queries(centers, valid, self.num_queries)
        query_pos = self.query_proj(self.pos_embed(query_xyz))
        if self.query_from_tokens:
            # GroupFree3D-style: each query starts from its token's encoder feature, which converges far
            # faster than 3DETR's zero start on small budgets.
            x = memory.gather(1, query_token[..., None].expand(-1, -1, memory.shape[-1]))
            x = x * query_valid[..., None]
        else:
            x = torch.zeros_like(query_pos)  # 3DETR starts from zero targets; queries are positional
        outputs = []
        for layer in self.layers:
            x = layer(x, query_pos, query_valid, memory, memory_pos, valid)
            outputs.append(self._boxes(self.norm(x), query_xyz, query_valid))
        return outputs

    def _boxes(self, feat: torch.Tensor, query_xyz: torch.Tensor,
               query_valid: torch.Tensor) -> dict[str, torch.Tensor]:
        log_size = self.heads["size"](feat).clamp(*_LOG_SIZE_RANGE)
        out = {
            "center": query_xyz + self.heads["center"](feat),
            "log_size": log_size,
            "size": torch.exp(log_size),
            "logits": self.heads["cls"](feat),
            "query_xyz": query_xyz,
            "query_valid": query_valid,
        }
        if self.has_yaw:
            logits, residual = self.heads["heading_cls"](feat), self.heads["heading_res"](feat)
            out["heading_logits"], out["heading_residual"] = logits, residual
            out["yaw"] = heading_to_yaw(logits, residual, self.num_heading_bins)
        else:
            out["yaw"] = feat.new_zeros(feat.shape[:2])
        return out

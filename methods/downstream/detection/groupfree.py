"""GroupFree3D-style detector on top of the token encoder (DESIGN.md 2.9) [prior: Liu et al., ICCV 2021].

    tokens --encoder--> memory (B, G, W);  token objectness logit per token (trained densely, KPS)
    queries = the top-Q valid tokens by objectness (their features and centres)
    proposal head on the query features            -> box set 0 (centre = token centre + offset)
    for each post-norm decoder layer l = 1..L:
        pos_l = PosEmbed(previous centre) + SizeEmbed(previous log-extents)   (previous box, detached)
        x = layer(x, pos_l, memory, PosEmbed_l(token centres))
        head_l(x)                                  -> box set l = box set l-1 (detached) + correction

So ``forward(batch)`` returns L + 1 output dicts (the proposal, then one per layer), as GroupFree3D's
``proposal_`` / ``{i}head_`` / ``last_`` predictions; evaluation uses the last.

Box parameterisation [choice]: centre offsets in metres and class-agnostic log-extents (GroupFree3D's
ScanNet head predicts size-cluster classes + residuals, its SUN RGB-D head class-agnostic sizes in
metres). Refinement [choice]: layer l's centre and log-extents are layer l-1's (detached) plus its own
correction, as in Deformable DETR's box refinement; GroupFree3D's heads predict every layer's centre from
the query token and feed the previous box in only through the position embedding (kept here too, with
its ``loc_learned`` centre + size embedding [prior]). Heading bins + residual (when ``has_yaw``, as
``boxes.py``), class and objectness are predicted afresh by every head.

Class from size [choice: off, as GroupFree3D]: with ``class_from_size`` every head adds to its class logits
an MLP of its own (detached) predicted log-extents, so a query's class can follow its box's size before the
features learn shape. Measured on the synthetic demo (no pretraining, 20 epochs, 3 seeds): AP25 1.9 -> 4.0.

Class from the box's points [choice: off, an addition to GroupFree3D]: with ``roi_class`` one shared
``roi_class.RoiClassifier`` adds to every box set's class logits a function of the points inside that
set's (detached) boxes. Measured on the synthetic demo (no pretraining, 20 epochs, 3 seeds): AP25 1.9 ->
6.3 (``roi_class.py``); with ``class_from_size`` as well, seed 0: 4.7, as without it.

Layers are GroupFree3D's [prior]: post-norm, position embeddings added to queries, keys and values, one
learned self/cross position embedding per layer, xavier-uniform init, ReLU feed-forward. Prediction heads
are unshared (one per box set); LayerNorm replaces their BatchNorm so padded queries never enter
normalisation statistics.

More queries than valid tokens: every valid token becomes a query; the remaining rows are padding
(``query_valid`` False, token 0, features 0): they never act as attention keys and losses and decoding
skip them. A scene with no valid token has only padding queries and yields no detection.
"""
from __future__ import annotations

import torch
from torch import nn

from methods.downstream.detection.boxes import heading_to_yaw
# The 3DETR head's SDPA attention (separate q/k/v inputs, key padding mask), shared within this package.
from methods.downstream.detection.model import _LOG_SIZE_RANGE, _Attention
from methods.downstream.detection.roi_class import RoiClassifier
from methods.encoder import Dropout, PositionEmbed, TransformerEncoder


def select_queries(token_logits: torch.Tensor, valid: torch.Tensor,
                   num_queries: int) -> tuple[torch.Tensor, torch.Tensor]:
    """KPS query selection: the top ``num_queries`` valid tokens by objectness logit, per scene.

    Returns (token index of each query (B, Q) int64, query valid (B, Q) bool). Queries are ordered by
    decreasing objectness (ties: lower token index first); rows past a scene's valid token count are
    padding (token 0, invalid).
    """
    if num_queries < 1:
        raise ValueError(f"num_queries: expected >= 1, got {num_queries}")
    b, g = token_logits.shape
    k = min(num_queries, g)
    # Invalid tokens rank last whatever their logit (also when every logit is -inf or NaN).
    scores = torch.where(valid, token_logits.detach().float().nan_to_num(nan=-1e30), torch.full_like(
        token_logits, float("-inf"), dtype=torch.float32))
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    token = torch.zeros(b, num_queries, dtype=torch.int64, device=token_logits.device)
    query_valid = torch.zeros(b, num_queries, dtype=torch.bool, device=token_logits.device)
    token[:, :k] = order
    query_valid[:, :k] = valid.gather(1, order)
    return torch.where(query_valid, token, torch.zeros_like(token)), query_valid


class GroupFreeLayer(nn.Module):
    """GroupFree3D's post-norm decoder layer: self-attention over queries, cross-attention to the tokens,
    feed-forward; each sub-layer ``x = norm(x + drop(f(x)))``. ``pos`` is added to the self-attention
    queries/keys/values and the cross-attention queries; ``memory_pos`` to its keys and values [prior]."""

    def __init__(self, width: int, heads: int, feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = _Attention(width, heads, dropout)
        self.cross_attn = _Attention(width, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(width, feedforward), nn.ReLU(), Dropout(dropout),
                                 nn.Linear(feedforward, width))
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(width) for _ in range(3))
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, query_valid: torch.Tensor, memory: torch.Tensor,
                memory_pos: torch.Tensor, memory_valid: torch.Tensor) -> torch.Tensor:
        h = x + pos
        x = self.norm1(x + self.drop(self.self_attn(h, h, h, query_valid)))
        kv = memory + memory_pos
        x = self.norm2(x + self.drop(self.cross_attn(x + pos, kv, kv, memory_valid)))
        return self.norm3(x + self.drop(self.mlp(x)))


class BoxHead(nn.Module):
    """One prediction head: a two-layer trunk, then objectness, centre/size corrections, class and heading.

    ``forward(feat, base_center, base_log_size)`` -> dict with ``center`` = base + ``center_offset``,
    ``log_size`` = base + ``log_size_offset`` (clamped to the 3DETR head's range), ``size``,
    ``objectness_logits`` (B, Q), ``class_logits`` (B, Q, C), ``yaw`` and, with heading,
    ``heading_logits`` / ``heading_residual`` (B, Q, bins; residual normalised by half the bin width).
    With ``class_from_size`` the class logits also get an MLP of the detached ``log_size`` (module docstring).
    """

    def __init__(self, width: int, num_classes: int, num_heading_bins: int, dropout: float,
                 class_from_size: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.size_class = (nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, num_classes))
                           if class_from_size else None)
        self.num_heading_bins = num_heading_bins
        self.trunk = nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width), nn.ReLU(), Dropout(dropout),
                                   nn.Linear(width, width), nn.LayerNorm(width), nn.ReLU(), Dropout(dropout))
        self.out = nn.Linear(width, 1 + 3 + 3 + num_classes + 2 * num_heading_bins)

    def forward(self, feat: torch.Tensor, base_center: torch.Tensor,
                base_log_size: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = self.out(self.trunk(feat)).split(
            [1, 3, 3, self.num_classes, self.num_heading_bins, self.num_heading_bins], dim=-1)
        objectness, center_offset, log_size_offset, class_logits, heading_logits, heading_residual = parts
        log_size = (base_log_size + log_size_offset).clamp(*_LOG_SIZE_RANGE)
        if self.size_class is not None:
            class_logits = class_logits + self.size_class(log_size.detach())
        out = {
            "center": base_center + center_offset, "center_offset": center_offset,
            "log_size": log_size, "log_size_offset": log_size_offset, "size": torch.exp(log_size),
            "objectness_logits": objectness.squeeze(-1), "class_logits": class_logits,
        }
        if self.num_heading_bins:
            out["heading_logits"], out["heading_residual"] = heading_logits, heading_residual
            out["yaw"] = heading_to_yaw(heading_logits, heading_residual, self.num_heading_bins)
        else:
            out["yaw"] = feat.new_zeros(feat.shape[:2])
        return out


class GroupFreeDetector(nn.Module):
    """Token encoder + GroupFree3D decoder; ``forward(batch)`` -> L + 1 output dicts (module docstring).

    Defaults are GroupFree3D's [prior]: 256 queries, 6 decoder layers, 8 heads, feed-forward 2048,
    dropout 0.1, no head dropout, 12 heading bins (SUN RGB-D); ``class_from_size`` and ``roi_class`` off
    (``roi_points`` / ``roi_margin``: the ``RoiClassifier``'s, used with ``roi_class``). The decoder width
    is the encoder's (GroupFree3D: 288, its backbone's). Every dict holds the ``BoxHead`` keys plus ``base_center`` /
    ``base_log_size`` (the box it refines, detached), ``query_xyz``, ``query_valid``, ``query_token``
    (B, Q) and ``token_logits`` (B, G) (the per-token objectness that chose the queries).
    """

    def __init__(self, encoder: TransformerEncoder, num_classes: int, has_yaw: bool, num_queries: int = 256,
                 decoder_depth: int = 6, heads: int = 8, feedforward: int = 2048, dropout: float = 0.1,
                 head_dropout: float = 0.0, num_heading_bins: int = 12,
                 class_from_size: bool = False, roi_class: bool = False, roi_points: int = 64,
                 roi_margin: float = 0.1):
        super().__init__()
        if num_queries < 1 or decoder_depth < 0 or num_classes < 1:
            raise ValueError(f"num_queries >= 1, decoder_depth >= 0 and num_classes >= 1 expected, got "
                             f"{num_queries}, {decoder_depth}, {num_classes}")
        width = encoder.width
        self.encoder = encoder
        self.num_classes = num_classes
        self.has_yaw = has_yaw
        self.num_queries = num_queries
        bins = num_heading_bins if has_yaw else 0
        self.num_heading_bins = bins
        # GroupFree3D's PointsObjClsModule: two hidden layers, one logit per point.
        self.token_objectness = nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width), nn.ReLU(),
                                              nn.Linear(width, width), nn.LayerNorm(width), nn.ReLU(),
                                              nn.Linear(width, 1))
        self.proposal_head = BoxHead(width, num_classes, bins, head_dropout, class_from_size)
        self.query_proj = nn.Linear(width, width)
        self.key_proj = nn.Linear(width, width)
        self.layers = nn.ModuleList(GroupFreeLayer(width, heads, feedforward, dropout)
                                    for _ in range(decoder_depth))
        self.self_pos = nn.ModuleList(PositionEmbed(width) for _ in range(decoder_depth))
        self.size_pos = nn.ModuleList(PositionEmbed(width) for _ in range(decoder_depth))
        self.cross_pos = nn.ModuleList(PositionEmbed(width) for _ in range(decoder_depth))
        self.heads = nn.ModuleList(BoxHead(width, num_classes, bins, head_dropout, class_from_size)
                                   for _ in range(decoder_depth))
        for p in self.layers.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        # Built last, so the parameters above draw the same initial values with it or without it.
        self.roi_classifier = RoiClassifier(num_classes, width, roi_points, roi_margin) if roi_class else None

    def forward(self, batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        centers, valid = batch["centers"], batch["valid"]
        memory = self.encoder(batch["rel"], centers, valid)
        token_logits = self.token_objectness(memory).squeeze(-1)
        query_token, query_valid = select_queries(token_logits, valid, self.num_queries)
        index = query_token[..., None]
        feat = memory.gather(1, index.expand(-1, -1, memory.shape[-1])) * query_valid[..., None]
        query_xyz = centers.gather(1, index.expand(-1, -1, 3)) * query_valid[..., None]
        shared = {"query_xyz": query_xyz, "query_valid": query_valid, "query_token": query_token,
                  "token_logits": token_logits}
        points = batch["points"] if self.roi_classifier is not None else None
        prev = self._predict(self.proposal_head, feat, query_xyz, torch.zeros_like(query_xyz), shared, points)
        outputs = [prev]
        x, key = self.query_proj(feat), self.key_proj(memory)
        for i, layer in enumerate(self.layers):
            base_center, base_log_size = prev["center"].detach(), prev["log_size"].detach()
            pos = self.self_pos[i](base_center) + self.size_pos[i](base_log_size)
            x = layer(x, pos, query_valid, key, self.cross_pos[i](centers), valid)
            prev = self._predict(self.heads[i], x, base_center, base_log_size, shared, points)
            outputs.append(prev)
        return outputs

    def _predict(self, head: BoxHead, feat: torch.Tensor, base_center: torch.Tensor, base_log_size: torch.Tensor,
                 shared: dict[str, torch.Tensor], points: torch.Tensor | None) -> dict[str, torch.Tensor]:
        out = head(feat, base_center, base_log_size)
        if self.roi_classifier is not None:
            out["class_logits"] = out["class_logits"] + self.roi_classifier(points, out["center"], out["log_size"],
                                                                            out["yaw"])
        return {**out, "base_center": base_center, "base_log_size": base_log_size, **shared}

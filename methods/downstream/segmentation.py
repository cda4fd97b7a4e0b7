"""Semantic segmentation fine-tuning (DESIGN.md 2.9): encoder -> feature propagation -> point MLP head.

Token features of the (pretrained) encoder are interpolated to every point from the 3 nearest valid
token centres, weighted by inverse squared distance (PointNet++ feature propagation as in Point-MAE's
and Point-BERT's segmentation heads [prior]; 1/d is a parameter), concatenated with the point's own features
(centred xyz, rgb in [0,1]) and classified by a per-point MLP; cross-entropy ignores label -1.

Protocols [DESIGN 2.9]: ``"full"`` fine-tunes everything (default); ``"probe"`` freezes the encoder
(no gradients, and kept in eval mode so its dropout / drop-path / BatchNorm statistics never change)
and trains the head only. Batches come from ``methods.downstream.scene_batch``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datasets.types import IGNORE_INDEX, Scene
from infra.fingerprint import fingerprint
from infra.memory_cache import ByteBudgetCache
from methods.downstream.scene_batch import scene_sample, scene_tokens
from methods.encoder import Dropout, TransformerEncoder, init_weights

PROTOCOLS = ("full", "probe")
_FAR = 1e10  # metres: where padding centres are put for the neighbour search


def propagate_features(points: torch.Tensor, centers: torch.Tensor, valid: torch.Tensor,
                       features: torch.Tensor, k: int = 3, chunk: int | None = 16_384,
                       power: float = 2.0) -> torch.Tensor:
    """(B,N,W) features of every point: inverse-distance mix of its k nearest VALID token centres.

    Weights are 1/(d**power + 1e-8) normalised to sum 1. ``power=2`` is PointNet++'s feature
    propagation as Point-MAE and Point-BERT use it (``1 / (square_distance + 1e-8)`` [prior]);
    ``power=1`` is plain inverse distance (1/(d + 1e-8)). Padding centres are never
    used; with fewer than k valid centres only the valid ones count; a scene with none gets 0.
    Distances are computed without gradient (positions are data); the weights use exact distances
    (so a point on a centre gets that centre's feature), the neighbour search the faster matmul
    form, which may swap near-ties. Points go ``chunk`` at a time to bound the (B, chunk, G) matrix.
    """
    if points.shape[0] != centers.shape[0] or centers.shape[:2] != valid.shape or \
            features.shape[:2] != valid.shape:
        raise ValueError(f"points {tuple(points.shape)}, centers {tuple(centers.shape)}, valid "
                         f"{tuple(valid.shape)} and features {tuple(features.shape)} disagree on (B, G)")
    if not power > 0:
        raise ValueError(f"propagation power: expected > 0 (2 = PointNet++'s 1/d^2, 1 = 1/d), got {power}")
    n = points.shape[1]
    step = max(1, n if chunk is None or chunk <= 0 else chunk)
    parts = [mix_features(features, *point_neighbours(points[:, i:i + step], centers, valid, k, power))
             for i in range(0, n, step)]
    return torch.cat(parts, dim=1) if parts else features.new_zeros(points.shape[0], 0, features.shape[2])


def point_neighbours(points: torch.Tensor, centers: torch.Tensor, valid: torch.Tensor, k: int = 3,
                     power: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Each point's k nearest valid token centres (B,N,k') and their normalised weights (B,N,k'),
    k' = min(k, G), as ``propagate_features`` mixes them (no gradient: positions are data)."""
    b, n = points.shape[:2]
    with torch.no_grad():
        pts, ctr = points.float(), centers.float()
        # Padding centres are moved far away (cheaper than masking the (B,n,G) matrix) and get
        # weight 0 if still picked; the fast matmul distances pick the neighbours, exact distances
        # of those k set the weights.
        far = torch.where(valid.unsqueeze(-1), ctr, torch.full_like(ctr, _FAR))
        _, idx = torch.cdist(pts, far).topk(min(k, centers.shape[1]), dim=2, largest=False)
        picked = ctr.gather(1, idx.reshape(b, -1, 1).expand(-1, -1, 3)).reshape(b, n, -1, 3)
        squared = (pts.unsqueeze(2) - picked).square().sum(dim=-1)
        usable = valid.gather(1, idx.reshape(b, -1)).reshape(idx.shape)
        weight = torch.where(usable, 1.0 / (squared ** (power / 2) + 1e-8), 0.0)
        weight = weight / weight.sum(dim=2, keepdim=True).clamp_min(1e-30)
    return idx, weight


def mix_features(features: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(B,N,W): each point's weighted sum of the token features ``idx`` picks (``point_neighbours``)."""
    b, n, k = idx.shape
    tokens, width = features.shape[1:]
    # One index_select over the flattened batch: the same values and gradients as a gather along
    # dim 1, about ten times faster on CPU than gather with an expanded index.
    flat = (idx + torch.arange(b, device=idx.device).view(b, 1, 1) * tokens).reshape(-1)
    gathered = features.reshape(b * tokens, width).index_select(0, flat).reshape(b, n, k, width)
    return (weight.unsqueeze(-1).to(gathered.dtype) * gathered).sum(dim=2)


class NeighbourMemo:
    """``point_neighbours`` remembered by content, per process: for evaluation, where it repeats.

    Every model a row evaluates with one seed sees the same scenes and the same token centres (tokens
    come from a seeded point sample, not from the model), so the neighbour search, about half of a
    segmentation evaluation on CPU, needs to run once per scene and seed. Keys are the content
    fingerprints (``infra.fingerprint``) of the points, centres and validity with ``k`` and ``power``:
    another sample is never served. CPU tensors only (on a GPU the search is cheap and memory dear).
    First come first kept within ``max_bytes``.
    """

    def __init__(self, max_bytes: int):
        self.cache = ByteBudgetCache(max_bytes)

    def __call__(self, points: torch.Tensor, centers: torch.Tensor, valid: torch.Tensor, k: int,
                 power: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The same as ``point_neighbours(points, centers, valid, k, power)``."""
        if any(t.device.type != "cpu" for t in (points, centers, valid)):
            return point_neighbours(points, centers, valid, k, power)
        key = fingerprint(points, centers, valid, int(k), float(power))
        found = self.cache.get(key)
        if found is not None:
            return found
        idx, weight = point_neighbours(points, centers, valid, k, power)
        return self.cache.put(key, (idx, weight), idx.nbytes + weight.nbytes)


# [choice] 256 MB per process: every val scene x seed of the synthetic demo (about 1.8 MB each), a
# fixed part of ScanNet's val split.
EVAL_NEIGHBOURS = NeighbourMemo(256 << 20)


class PointSegmenter(nn.Module):
    """Per-point classifier on top of a ``TransformerEncoder`` (xyz tokens, as in pretraining).

    ``forward(batch)`` reads ``rel``, ``centers``, ``valid``, ``points`` and ``colors`` and returns
    logits (B,N,num_classes). Head: Linear -> BatchNorm (over all points of the batch) -> ReLU ->
    Dropout -> Linear [choice, PointNet++ / Point-MAE segmentation heads [prior]].
    ``point_channels`` 6 = xyz + rgb concatenated to the propagated features, 3 = xyz only.
    ``k`` and ``propagation_power`` set ``propagate_features`` (3 neighbours weighted 1/d^2 [prior]).
    """

    def __init__(self, encoder: TransformerEncoder, num_classes: int, point_channels: int = 6,
                 hidden: int = 256, dropout: float = 0.5, k: int = 3, protocol: str = "full",
                 propagation_power: float = 2.0):
        super().__init__()
        if encoder.in_channels != 3:
            raise ValueError(f"encoder.in_channels: tokens carry xyz only, expected 3, got {encoder.in_channels}")
        if point_channels not in (3, 6):
            raise ValueError(f"point_channels: expected 3 (xyz) or 6 (xyz + rgb), got {point_channels}")
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol: expected one of {PROTOCOLS}, got {protocol!r}")
        if not propagation_power > 0:
            raise ValueError(f"propagation_power: expected > 0 (2 = 1/d^2, 1 = 1/d), got {propagation_power}")
        self.encoder = encoder
        self.num_classes = int(num_classes)
        self.point_channels = point_channels
        self.k = int(k)
        self.propagation_power = float(propagation_power)
        self.encoder_frozen = False
        self.fc1 = nn.Linear(encoder.width + point_channels, hidden)
        self.norm = nn.BatchNorm1d(hidden)
        self.dropout = Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)
        for layer in (self.fc1, self.norm, self.fc2):
            layer.apply(init_weights)
        if protocol == "probe":
            freeze_encoder(self)

    def train(self, mode: bool = True) -> PointSegmenter:
        """Like ``nn.Module.train``, but a frozen encoder always stays in eval mode."""
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self

    def encode(self, rel: torch.Tensor, centers: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Token features (B,G,W); no autograd graph through a frozen encoder."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder_frozen):
            return self.encoder(rel, centers, valid)

    def classify(self, token_features: torch.Tensor, centers: torch.Tensor, valid: torch.Tensor,
                 points: torch.Tensor, colors: torch.Tensor, chunk: int | None = 16_384,
                 neighbours: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits (B,N,C) of ``points`` (+ ``colors``) from already-encoded tokens; ``neighbours``, when
        given, are the points' ``point_neighbours`` (then ``chunk`` is unused)."""
        if neighbours is None:
            propagated = propagate_features(points, centers, valid, token_features, self.k, chunk,
                                            self.propagation_power)
        else:
            propagated = mix_features(token_features, *neighbours)
        own = points if self.point_channels == 3 else torch.cat([points, colors], dim=-1)
        x = torch.cat([propagated, own.to(propagated.dtype)], dim=-1)
        b, n = x.shape[:2]
        x = self.fc1(x.reshape(b * n, -1))
        x = self.dropout(F.relu(self.norm(x)))
        return self.fc2(x).reshape(b, n, self.num_classes)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        features = self.encode(batch["rel"], batch["centers"], batch["valid"])
        return self.classify(features, batch["centers"], batch["valid"], batch["points"], batch["colors"])


def freeze_encoder(model: PointSegmenter) -> PointSegmenter:
    """Probe protocol: encoder parameters get ``requires_grad=False`` and the encoder stays in eval mode."""
    for param in model.encoder.parameters():
        param.requires_grad_(False)
    model.encoder_frozen = True
    model.encoder.eval()
    return model


class SegmentationObjective(nn.Module):
    """Training module for ``methods.train.train``: ``forward(batch) -> {"loss", "acc"}``.

    ``loss`` is cross-entropy over all labelled points of the batch (label ``ignore_index`` skipped;
    with ``class_weights`` the weighted mean, as ``F.cross_entropy``; 0 when no point is labelled);
    ``acc`` is the detached accuracy on labelled points.
    """

    def __init__(self, model: PointSegmenter, class_weights: Sequence[float] | torch.Tensor | None = None,
                 ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.model = model
        self.ignore_index = int(ignore_index)
        weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        if weights is not None and weights.shape != (model.num_classes,):
            raise ValueError(f"class_weights: expected {model.num_classes} values, got {tuple(weights.shape)}")
        self.register_buffer("class_weights", weights)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.model(batch)
        flat = logits.reshape(-1, logits.shape[-1]).float()
        labels = batch["labels"].reshape(-1)
        labelled = labels != self.ignore_index
        target = torch.where(labelled, labels, torch.zeros_like(labels))
        per_point = F.cross_entropy(flat, target, reduction="none")
        weight = labelled.float()
        if self.class_weights is not None:
            weight = weight * self.class_weights[target]
        loss = (per_point * weight).sum() / weight.sum().clamp_min(1e-12)
        with torch.no_grad():
            hits = (flat.argmax(dim=1) == labels) & labelled
            acc = hits.sum().float() / labelled.sum().clamp_min(1).float()
        return {"loss": loss, "acc": acc}


@torch.no_grad()
def predict_scene_labels(model: PointSegmenter, scene: Scene, tokenizer, num_points: int, seed: int,
                         chunk: int = 16_384) -> np.ndarray:
    """Label (N_scene,) int32 of EVERY point of ``scene``, in eval mode.

    Tokens come from a ``num_points`` sample (``scene_sample`` with ``seed``, no augmentation) and are
    encoded once; their features are propagated to all scene points, ``chunk`` points at a time (the
    neighbours of each chunk from ``EVAL_NEIGHBOURS``). One pass, no test-time voting. The model's
    train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        sample = scene_sample(scene, num_points, seed)
        tokens = {k: v[None].to(device) for k, v in scene_tokens(sample["xyz"], tokenizer, seed).items()}
        features = model.encode(tokens["rel"], tokens["centers"], tokens["valid"])
        xyz = torch.from_numpy(scene.points.astype(np.float32) - sample["offset"]).to(device)
        colors = torch.from_numpy(scene.colors.astype(np.float32) / 255.0).to(device)
        labels = []
        for start in range(0, len(xyz), chunk):
            part = slice(start, start + chunk)
            neighbours = EVAL_NEIGHBOURS(xyz[None, part], tokens["centers"], tokens["valid"], model.k,
                                         model.propagation_power)
            logits = model.classify(features, tokens["centers"], tokens["valid"], xyz[None, part],
                                    colors[None, part], neighbours=neighbours)
            labels.append(logits[0].argmax(dim=-1).cpu())
        return torch.cat(labels).numpy().astype(np.int32)
    finally:
        model.train(was_training)


def load_pretrained_encoder(encoder: TransformerEncoder, state_dict: dict[str, torch.Tensor] | None,
                            source: str) -> dict[str, list[str]]:
    """Load a pretrained encoder state, checking names and shapes (never a silent ``strict=False``).

    Every entry of ``encoder.state_dict()`` (parameters and BatchNorm buffers) must be present with
    the same shape, else ValueError (one line naming ``source`` and the keys). Keys the encoder does
    not have are ignored, returned as ``unexpected`` and reported in one warning line. ``None`` means
    no pretraining: the random initialisation is kept.
    """
    if state_dict is None:
        return {"missing": [], "unexpected": []}
    own = encoder.state_dict()
    missing = sorted(k for k in own if k not in state_dict)
    mismatched = sorted(f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
                        for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape))
    if missing or mismatched:
        problems = []
        if missing:
            problems.append(f"missing {len(missing)} keys {_short(missing)}")
        if mismatched:
            problems.append(f"shape mismatch (checkpoint vs encoder) in {len(mismatched)} keys {_short(mismatched)}")
        raise ValueError(f"{source}: pretrained encoder does not fit the encoder: {'; '.join(problems)}")
    unexpected = sorted(k for k in state_dict if k not in own)
    encoder.load_state_dict({k: state_dict[k] for k in own}, strict=True)
    if unexpected:
        print(f"warning: {source}: {len(unexpected)} unexpected keys ignored {_short(unexpected)}")
    return {"missing": [], "unexpected": unexpected}


def _short(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{f', ... (+{len(keys) - limit} more)' if len(keys) > limit else ''}]"

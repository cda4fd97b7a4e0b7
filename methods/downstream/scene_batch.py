"""From whole scenes to fine-tuning batches (DESIGN.md 2.9), shared by segmentation and detection.

One item = ``num_points`` points sampled from a scene, centred on the scene's point mean, plus its
KNN tokens (no SAM masks at fine-tune time) and its boxes in the same frame. Batch layout
(B scenes, N points, G tokens of K points, M boxes padded to the batch's most, M >= 1):

- ``points`` (B,N,3) float32 centred xyz, ``colors`` (B,N,3) float32 in [0,1], ``labels`` (B,N) int64
  (-1 = ignore), ``index`` (B,N) int64 the sampled scene point of each row, ``offset`` (B,3) the
  scene mean that was subtracted (scene xyz = points + offset when not augmented);
- ``rel`` (B,G,K,3), ``centers`` (B,G,3), ``valid`` (B,G) bool: tokens of ``points``;
- ``gt_boxes`` (B,M,7) ``[cx,cy,cz,dx,dy,dz,yaw]`` in the same frame as ``points``, ``gt_labels``
  (B,M) int64 (-1 = padding), ``gt_valid`` (B,M) bool.

Augmentation (training only) [choice]: a rotation about +z through the centred origin by an angle
uniform in [-max_rotation, max_rotation] (counter-clockwise seen from above, as yaw), then an
isotropic scaling by s uniform in ``scale_range``: points p -> s R p; boxes centre c -> s R c,
extents d -> s d, yaw -> yaw + angle wrapped to [-pi, pi). Colours and labels are unchanged.
"""
from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable, Sequence

import numpy as np
import torch

from datasets.types import IGNORE_INDEX, Scene
from methods.tokenizers.batched import (
    batched_or_note,
    collate_prefixed,
    tokenize_prefixed,
    tokenizer_inputs,
    with_prefix,
)


def scene_offset(scene: Scene) -> np.ndarray:
    """(3,) float32 mean of all the scene's points (accumulated in float64): where samples are centred."""
    return scene.points.astype(np.float64).mean(axis=0).astype(np.float32)


def scene_sample(scene: Scene, num_points: int, seed: int,
                 labelled: np.ndarray | None = None, offset: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``num_points`` points of ``scene`` (without replacement, or with it when the scene has fewer).

    The same seed gives the same sample. Coordinates are centred on the mean of ALL scene points
    (not of the sample), so the offset does not depend on the sample and maps predictions back.
    ``labelled`` (limited annotations): the indices of the only points whose labels count; they are
    all in the sample (the rest of it drawn from the other points) and every other point is labelled
    ``IGNORE_INDEX``. Returns numpy ``xyz`` (n,3) float32, ``colors`` (n,3) float32 in [0,1],
    ``labels`` (n,) int64, ``index`` (n,) int64 (sorted), ``offset`` (3,) float32, ``boxes`` (M,7)
    float32 shifted by the offset and ``box_labels`` (M,) int64. ``offset`` may pass ``scene_offset(scene)``
    when the caller keeps it (it does not depend on the sample).
    """
    n = scene.num_points
    if n == 0 or num_points < 1:
        raise ValueError(f"scene {scene.scene_id}: need points and num_points >= 1, got {n}, {num_points}")
    rng = np.random.default_rng(seed)
    labels = scene.semantic
    if labelled is None and n >= num_points:
        # Distinct indices in order: a mark per point is linear where sorting them is not (same indices).
        marked = np.zeros(n, dtype=bool)
        marked[rng.choice(n, size=num_points, replace=False)] = True
        index = np.flatnonzero(marked).astype(np.int64)
    elif labelled is None:
        index = np.sort(rng.choice(n, size=num_points, replace=True)).astype(np.int64)
    else:
        keep = np.unique(np.asarray(labelled, dtype=np.int64))[:num_points]
        rest = np.setdiff1d(np.arange(n), keep, assume_unique=True)
        more = num_points - len(keep)
        extra = rest[rng.choice(len(rest), size=more, replace=len(rest) < more)] if more and len(rest) else \
            np.zeros(0, np.int64)
        index = np.sort(np.concatenate([keep, extra])).astype(np.int64)
        labels = np.full(n, IGNORE_INDEX, dtype=np.int64)
        labels[keep] = scene.semantic[keep]
    offset = scene_offset(scene) if offset is None else offset
    boxes = np.asarray(scene.boxes, dtype=np.float32).reshape(-1, 7).copy()
    boxes[:, :3] -= offset
    return {
        "xyz": scene.points[index].astype(np.float32) - offset,
        "colors": scene.colors[index].astype(np.float32) / 255.0,
        "labels": labels[index].astype(np.int64),
        "index": index,
        "offset": offset,
        "boxes": boxes,
        "box_labels": np.asarray(scene.box_labels, dtype=np.int64).reshape(-1),
    }


def augment_sample(sample: dict[str, np.ndarray], rng: np.random.Generator, max_rotation: float = math.pi,
                   scale_range: tuple[float, float] = (0.8, 1.2)) -> dict[str, np.ndarray]:
    """A copy of ``sample`` rotated about +z and scaled, points and boxes alike (module docstring)."""
    angle = float(rng.uniform(-max_rotation, max_rotation))
    scale = float(rng.uniform(*scale_range))
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])  # counter-clockwise about +z
    out = dict(sample)
    out["xyz"] = (scale * sample["xyz"].astype(np.float64) @ rot.T).astype(np.float32)
    boxes = sample["boxes"].astype(np.float64).copy()
    boxes[:, :3] = scale * boxes[:, :3] @ rot.T
    boxes[:, 3:6] *= scale
    boxes[:, 6] = np.mod(boxes[:, 6] + angle + math.pi, 2 * math.pi) - math.pi
    out["boxes"] = boxes.astype(np.float32)
    return out


def scene_tokens(xyz: np.ndarray | torch.Tensor, tokenizer, seed: int) -> dict[str, torch.Tensor]:
    """Tokens of one sampled scene: ``rel`` (G,K,3), ``centers`` (G,3) float32, ``valid`` (G,) bool.

    The tokenizer gets ``None`` regions: downstream sees no masks (DESIGN 2.9). ``seed`` seeds its
    sampler (the FPS start point).
    """
    xyz = torch.as_tensor(xyz, dtype=torch.float32)
    tokens = tokenizer(xyz, None, seed=seed)
    return {"rel": tokens.rel.float(), "centers": tokens.centers.float(), "valid": tokens.valid.bool()}


def collate_scenes(items: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Stack items (``scene_sample`` keys + ``scene_tokens`` keys, or tokenizer inputs) into a batch; boxes
    padded to M >= 1."""
    if not items:
        raise ValueError("items: expected at least one scene sample, got none")
    stack = {"points": "xyz", "colors": "colors", "labels": "labels", "index": "index", "offset": "offset"}
    tokens_made = "rel" in items[0]
    if tokens_made:
        stack.update(rel="rel", centers="centers", valid="valid")
    batch = {out: torch.stack([torch.as_tensor(item[key]) for item in items]) for out, key in stack.items()}
    for key in ("points", "colors", "offset", "rel", "centers"):
        if key in batch:
            batch[key] = batch[key].float()
    if not tokens_made:
        batch.update(collate_prefixed(items))
    batch["labels"], batch["index"] = batch["labels"].long(), batch["index"].long()
    m = max([1] + [len(item["box_labels"]) for item in items])
    gt_boxes = torch.zeros(len(items), m, 7)
    gt_labels = torch.full((len(items), m), -1, dtype=torch.int64)
    for b, item in enumerate(items):
        count = len(item["box_labels"])
        gt_boxes[b, :count] = torch.as_tensor(item["boxes"], dtype=torch.float32).reshape(-1, 7)
        gt_labels[b, :count] = torch.as_tensor(item["box_labels"], dtype=torch.int64)
    batch.update(gt_boxes=gt_boxes, gt_labels=gt_labels, gt_valid=gt_labels >= 0)
    return batch


class SceneSamples(torch.utils.data.Dataset):
    """Scenes seen as fine-tuning items: a fresh sample (+ augmentation) and tokens every epoch.

    ``scenes_source`` is any sequence of ``Scene`` (e.g. a cached list). The item seed mixes
    ``seed``, ``epoch`` (set by the training loop) and the item index; it drives the point sample,
    the augmentation and the tokenizer's FPS start. ``augment`` is for training; evaluation passes
    False (the sample then still follows the seed, but no rotation or scaling is applied).
    """

    def __init__(self, scenes_source: Sequence[Scene], num_points: int, tokenizer, seed: int = 0,
                 augment: bool = True, max_rotation: float = math.pi,
                 scale_range: tuple[float, float] = (0.8, 1.2), indices: Sequence[int] | None = None,
                 labelled: Callable[[Scene], np.ndarray | None] | None = None):
        self.scenes = scenes_source
        # A protocol's subset of the scenes (limited reconstructions) and of their labels (limited annotations).
        self.indices = list(range(len(scenes_source))) if indices is None else list(indices)
        self.labelled = labelled
        self.num_points = int(num_points)
        self.tokenizer = tokenizer
        self.seed = int(seed)
        self.augment = augment
        self.max_rotation = float(max_rotation)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.epoch = 0
        self.on_device = False
        self._offsets: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.indices)

    def item_seed(self, index: int) -> int:
        """The seed of item ``index`` at the current epoch."""
        return zlib.crc32(f"{self.seed}/{self.epoch}/{index}".encode())

    def __getitem__(self, index: int) -> dict:
        seed = self.item_seed(index)
        scene = self.scenes[self.indices[index]]
        if index not in self._offsets:  # a scene's mean is a pass over all its points: once per scene
            self._offsets[index] = scene_offset(scene)
        sample = scene_sample(scene, self.num_points, seed, self.labelled(scene) if self.labelled else None,
                              offset=self._offsets[index])
        if self.augment:
            # Its own stream, so turning augmentation on does not change which points are sampled.
            rng = np.random.default_rng([seed, 1])
            sample = augment_sample(sample, rng, self.max_rotation, self.scale_range)
        if self.on_device:
            xyz = torch.as_tensor(sample["xyz"], dtype=torch.float32)
            return {**sample, **with_prefix(tokenizer_inputs(self.tokenizer, xyz, None, seed))}
        return {**sample, **scene_tokens(sample["xyz"], self.tokenizer, seed)}

    def tokens_on_device(self) -> Callable[[dict], dict] | None:
        """Items carry the tokenizer's inputs instead of tokens; returns what tokenizes their batch where it
        is (or None, with a note, when the tokenizer has no batched form: items keep their tokens)."""
        if not batched_or_note(self.tokenizer, "scene tokens"):
            return None
        self.on_device = True
        return functools.partial(scene_tokens_from_inputs, tokenizer=self.tokenizer)


def scene_tokens_from_inputs(batch: dict[str, torch.Tensor], tokenizer) -> dict[str, torch.Tensor]:
    """A batch of ``collate_scenes`` with tokenizer inputs, tokenized where it is: ``scene_tokens``'s keys."""
    tokens, out = tokenize_prefixed(tokenizer, batch)
    out.update(rel=tokens.rel.float(), centers=tokens.centers.float(), valid=tokens.valid.bool())
    return out

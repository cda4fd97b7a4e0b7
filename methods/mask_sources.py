"""Mask sources: a frame -> an (H, W) int32 label map, 0 = no mask (DESIGN.md 2.2).

Every source is a plain class registered with gin, called as ``source(frame)``, and carries a
``description`` that tables print, so a row made with a simulation or a classical segmenter can
never pass for SAM. All sources return one label per pixel; where the underlying masks overlap,
each source states the rule it applies.

- ``SamMaskSource``: real SAM (``segment_anything``'s automatic mask generator, a checkpoint file).
- ``PrecomputedMaskSource``: label maps written elsewhere (e.g. a GPU job), one file per frame.
- ``ClassicalMaskSource``: Felzenszwalb graph segmentation, weight-free, not SAM.
- ``RenderedMaskSource``: the synthetic benchmark's rendered instances, optionally perturbed to
  imitate SAM's over/under-segmentation; a simulation.
"""
from __future__ import annotations

import importlib.util
import pathlib
import time
import zlib
from typing import Callable, Sequence

import gin
import numpy as np

from datasets.types import Frame
from infra.checks import check_choice
from infra.errors import HarnessError
from infra.fingerprint import file_digest
from methods.model_weights import load_weights, resolve_device
from methods.sam_phases import SamPhases, encode_in_bf16

_INT32_MAX = np.iinfo(np.int32).max


def check_label_map(label_map: np.ndarray, hw: tuple[int, int], where: str) -> np.ndarray:
    """Validate a label map against the frame size and return it as int32 (shared by all sources)."""
    label_map = np.asarray(label_map)
    if label_map.shape != tuple(hw):
        raise ValueError(f"{where}: mask map has shape {label_map.shape}, expected the frame's (H, W) = {tuple(hw)}")
    if not np.issubdtype(label_map.dtype, np.integer):
        raise ValueError(f"{where}: mask map has dtype {label_map.dtype}, expected an integer label map")
    if label_map.size and (label_map.min() < 0 or label_map.max() > _INT32_MAX):
        raise ValueError(f"{where}: mask labels span [{label_map.min()}, {label_map.max()}], expected 0..{_INT32_MAX}")
    return label_map.astype(np.int32, copy=False)


def paint_masks(masks: Sequence[np.ndarray] | np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Resolve overlapping binary masks into one label map: the smaller mask wins.

    Masks are painted in descending area (ties: input order), so a smaller mask overwrites the
    larger ones it overlaps. Labels are 1..R in that order, renumbered after painting so that masks
    left with no visible pixel take no label.
    """
    masks = [np.asarray(m, dtype=bool) for m in masks]
    label_map = np.zeros(hw, dtype=np.int32)
    areas = np.array([m.sum() for m in masks], dtype=np.int64)
    for label, k in enumerate(np.argsort(-areas, kind="stable"), start=1):
        label_map[masks[k]] = label
    present, compact = np.unique(label_map, return_inverse=True)
    if present[0] != 0:  # every pixel covered: keep labels starting at 1
        compact = compact + 1
    return compact.reshape(hw).astype(np.int32)


class MaskSource:
    """Base class: subclasses implement ``_labels``; ``__call__`` validates what they return."""

    @property
    def description(self) -> str:
        raise NotImplementedError

    def _labels(self, frame: Frame) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, frame: Frame) -> np.ndarray:
        """(H, W) int32 label map of ``frame``, 0 = no mask."""
        return check_label_map(self._labels(frame), frame.hw, f"{self.description} on frame {frame.frame_id!r}")


# --------------------------------------------------------------------------------------------- SAM


def _import_segment_anything():
    """Import segment_anything on first use: it imports torchvision, which not every install has."""
    try:
        import segment_anything
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] == "torchvision":
            raise ImportError("SamMaskSource needs torchvision (segment_anything imports it): "
                              "pip install torchvision matching your torch version") from None
        if err.name and err.name.split(".")[0] == "segment_anything":
            raise ImportError("SamMaskSource needs segment_anything: pip install segment-anything") from None
        raise
    return segment_anything


@gin.register
class SamMaskSource(MaskSource):
    """Real SAM automatic masks; overlap rule: the smaller mask wins (``paint_masks``).

    Defaults are Bridge3D's generator settings (ViT-H, 32 points per side, pred_iou 0.86,
    stability 0.92, one crop layer, min region area 100) [prior]. ``min_mask_region_area > 0``
    needs OpenCV, as in segment_anything itself.

    The model is built without weights and the checkpoint loaded by ``methods.model_weights.load_weights``
    (``weights_only=True`` on torch >= 2.6, or safetensors; strict keys and shapes), never by
    segment_anything's own ``torch.load``, which unpickles anything on torch < 2.6.

    Args:
      checkpoint: SAM checkpoint file (state dict), e.g. ``sam_vit_h_4b8939.pth``, or its conversion to
        ``.safetensors`` (the only form accepted on torch < 2.6).
      model_type: key of ``segment_anything.sam_model_registry`` (vit_h, vit_l, vit_b, default).
      device: ``'auto'`` (CUDA when ``torch.cuda.is_available()``, else CPU), ``'cpu'``, ``'cuda'`` or
        ``'cuda:N'``; resolved when the source is built, kept in ``device`` and shown in ``description``.
      model_builder: optional ``builder(checkpoint=None) -> Sam`` (the registry's signature) replacing
        the registry lookup (custom or tiny models); ``model_type`` is then only a label.
      encoder_bf16: run the image encoder (most of a frame's GPU time) under bf16 autocast [choice: off;
        the masks change slightly, so it is part of the preparation's key; meant for CUDA].
      The remaining arguments are ``SamAutomaticMaskGenerator``'s, passed through unchanged.
    """

    def __init__(self, checkpoint: str, model_type: str = "vit_h", device: str = "auto",
                 points_per_side: int = 32, points_per_batch: int = 64, pred_iou_thresh: float = 0.86,
                 stability_score_thresh: float = 0.92, stability_score_offset: float = 1.0,
                 box_nms_thresh: float = 0.7, crop_n_layers: int = 1, crop_nms_thresh: float = 0.7,
                 crop_overlap_ratio: float = 512 / 1500, crop_n_points_downscale_factor: int = 1,
                 min_mask_region_area: int = 100, model_builder: Callable | None = None,
                 encoder_bf16: bool = False):
        self.checkpoint = pathlib.Path(checkpoint)
        if not self.checkpoint.is_file():
            raise HarnessError(f"SamMaskSource.checkpoint: SAM checkpoint not found: {self.checkpoint} "
                               "(expected a state dict file such as sam_vit_h_4b8939.pth)")
        # Resolved now: the preparation cache key and the tables then name the device the masks come from.
        self.device = resolve_device(device, "SamMaskSource.device")
        self.model_type, self.model_builder = model_type, model_builder
        check_choice("SamMaskSource.encoder_bf16", encoder_bf16, (True, False))
        self.encoder_bf16 = encoder_bf16
        self.generator_kwargs = dict(
            points_per_side=points_per_side, points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
            stability_score_offset=stability_score_offset, box_nms_thresh=box_nms_thresh,
            crop_n_layers=crop_n_layers, crop_nms_thresh=crop_nms_thresh,
            crop_overlap_ratio=crop_overlap_ratio,
            crop_n_points_downscale_factor=crop_n_points_downscale_factor,
            min_mask_region_area=min_mask_region_area, output_mode="binary_mask")
        self._generator, self._phases, self._last_phases = None, None, {}

    @property
    def description(self) -> str:
        bf16 = ", image encoder in bf16" if self.encoder_bf16 else ""
        return f"SAM {self.model_type} (checkpoint {self.checkpoint.name}, on {self.device}{bf16})"

    def cache_state(self) -> dict:
        """What the masks depend on (``infra.fingerprint``): the weights' content, the model, every generator
        setting but the prompts' batch size; not the checkpoint's path, nor the device."""
        settings = {k: v for k, v in self.generator_kwargs.items() if k != "points_per_batch"}
        return {"weights": file_digest(self.checkpoint), "model_type": self.model_type,
                "model_builder": self.model_builder, "encoder_bf16": self.encoder_bf16, **settings}

    def frame_memory(self, image_hw: tuple[int, int]) -> tuple[float, str]:
        """(bytes on ``device``, what sets them) of one frame's masks: the model with its image encoder's
        activations (about 4.5 / 3 / 1.5 GiB for vit_h / vit_l / vit_b), and each batch of prompts' masks at
        the frame's size (3 candidates a prompt, float32, and their upscaling)."""
        model = {"vit_h": 4.5, "vit_l": 3.0, "vit_b": 1.5}.get(self.model_type, 4.5) * 2**30
        batch = self.generator_kwargs["points_per_batch"] * 3 * image_hw[0] * image_hw[1] * 8.0
        return model + batch, f"SamMaskSource.points_per_batch = {self.generator_kwargs['points_per_batch']}"

    def _build_generator(self):
        sam = _import_segment_anything()
        if self.generator_kwargs["min_mask_region_area"] > 0 and importlib.util.find_spec("cv2") is None:
            raise ImportError("SamMaskSource(min_mask_region_area > 0) needs OpenCV: "
                              "pip install opencv-python-headless, or set min_mask_region_area = 0")
        builder = self.model_builder
        if builder is None:
            if self.model_type not in sam.sam_model_registry:
                raise HarnessError(f"SamMaskSource.model_type: unknown SAM model_type {self.model_type!r}; "
                                   f"valid: {', '.join(sorted(sam.sam_model_registry))}")
            builder = sam.sam_model_registry[self.model_type]
        model = load_weights(builder(checkpoint=None), self.checkpoint, f"SAM {self.model_type}")
        model = model.to(self.device).eval()
        if self.encoder_bf16:
            encode_in_bf16(model.image_encoder, self.device)
        self._phases = SamPhases(model, self.device)
        return sam.SamAutomaticMaskGenerator(model, **self.generator_kwargs)

    def _labels(self, frame: Frame) -> np.ndarray:
        if self._generator is None:
            self._generator = self._build_generator()
        clock = time.perf_counter()
        records = self._generator.generate(np.ascontiguousarray(frame.rgb))
        label_map = paint_masks([r["segmentation"] for r in records], frame.hw)
        self._last_phases = self._phases.take(time.perf_counter() - clock)
        return label_map

    def frame_phases(self) -> dict[str, float]:
        """Seconds of the last frame's masks in SAM's image encoder, its prompt decoding and the generator's
        post-processing (``methods.sam_phases``), which the preparation records beside ``masks``."""
        return dict(self._last_phases)


# ------------------------------------------------------------------------------------- precomputed


def _read_label_file(path: pathlib.Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    from PIL import Image  # Pillow comes with matplotlib

    with Image.open(path) as image:
        return np.array(image)


def save_mask_map(path: str | pathlib.Path, label_map: np.ndarray) -> None:
    """Write a label map where ``PrecomputedMaskSource`` reads it: .npy (int32) or 16-bit .png."""
    path = pathlib.Path(path)
    label_map = np.asarray(label_map)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, label_map.astype(np.int32))
    elif path.suffix == ".png":
        if label_map.max(initial=0) > 65535:
            raise ValueError(f"{path}: {label_map.max()} masks do not fit a 16-bit PNG; use .npy")
        from PIL import Image

        Image.fromarray(label_map.astype(np.uint16)).save(path)
    else:
        raise ValueError(f"{path}: unsupported mask file type {path.suffix!r}; expected .npy or .png")


@gin.register
class PrecomputedMaskSource(MaskSource):
    """Label maps produced elsewhere, one file per frame at ``root / pattern.format(frame_id=...)``.

    Files are .npy integer arrays or 16-bit .png; 0 = no mask. The overlap rule is whatever the
    producer applied (for SAM jobs, use ``paint_masks``: smaller mask wins).
    """

    def __init__(self, root: str, pattern: str = "{frame_id}.npy"):
        self.root, self.pattern = pathlib.Path(root), pattern
        if pathlib.Path(pattern).suffix not in (".npy", ".png"):
            raise ValueError(f"PrecomputedMaskSource.pattern {pattern!r}: expected a .npy or .png file pattern")
        if not self.root.is_dir():
            raise FileNotFoundError(f"PrecomputedMaskSource.root is not a directory: {self.root}")

    @property
    def description(self) -> str:
        return f"precomputed masks ({self.root / self.pattern})"

    def _labels(self, frame: Frame) -> np.ndarray:
        path = self.root / self.pattern.format(frame_id=frame.frame_id)
        if not path.is_file():
            raise FileNotFoundError(f"precomputed mask file not found for frame {frame.frame_id!r}: {path}")
        return check_label_map(_read_label_file(path), frame.hw, f"mask file {path}")


# --------------------------------------------------------------------------------------- classical


@gin.register
class ClassicalMaskSource(MaskSource):
    """Felzenszwalb graph segmentation (scikit-image): weight-free, for real images without SAM.

    Not SAM: it over-segments texture and follows colour edges, not objects. It partitions the
    image, so there is no overlap and every pixel gets a label >= 1 (label 0 is unused).
    """

    def __init__(self, scale: float = 200.0, sigma: float = 0.8, min_size: int = 200):
        self.scale, self.sigma, self.min_size = scale, sigma, min_size

    @property
    def description(self) -> str:
        return f"classical segmenter (Felzenszwalb, scale {self.scale:g}) — not SAM"

    def _labels(self, frame: Frame) -> np.ndarray:
        return self.segment_image(frame.rgb)

    def segment_image(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W) int32 labels >= 1 of an (H, W, 3) image."""
        try:
            from skimage.segmentation import felzenszwalb
        except ModuleNotFoundError:
            raise ImportError("ClassicalMaskSource needs scikit-image: pip install scikit-image") from None
        labels = felzenszwalb(rgb, scale=self.scale, sigma=self.sigma, min_size=self.min_size, channel_axis=-1)
        return labels.astype(np.int32) + 1


# ---------------------------------------------------------------------------------------- rendered


def frame_rng_seed(seed: int, frame_id: str) -> np.random.SeedSequence:
    """Seed sequence fixed by (seed, frame_id), independent of frame order and of the process."""
    return np.random.SeedSequence([int(seed), zlib.crc32(frame_id.encode("utf-8"))])


def _touching_pairs(label_map: np.ndarray) -> np.ndarray:
    """(P, 2) sorted pairs of distinct non-zero labels that are 4-neighbours somewhere."""
    pairs = []
    for a, b in ((label_map[:, :-1], label_map[:, 1:]), (label_map[:-1, :], label_map[1:, :])):
        touch = (a != b) & (a > 0) & (b > 0)
        pairs.append(np.sort(np.stack([a[touch], b[touch]], axis=1), axis=1))
    return np.unique(np.concatenate(pairs), axis=0)


def _merge_neighbours(label_map: np.ndarray, prob: float, rng: np.random.Generator) -> np.ndarray:
    """With probability ``prob`` per instance, merge it with a random touching neighbour."""
    ids = np.unique(label_map[label_map > 0])
    pairs = _touching_pairs(label_map)
    parent = {int(i): int(i) for i in ids}

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, u in zip(ids, rng.random(len(ids))):  # one draw per id keeps the stream stable
        neighbours = np.concatenate([pairs[pairs[:, 0] == i, 1], pairs[pairs[:, 1] == i, 0]])
        if u < prob and len(neighbours):
            a, b = root(int(i)), root(int(rng.choice(neighbours)))
            parent[max(a, b)] = min(a, b)  # a merged region keeps its smallest instance id
    lookup = np.zeros(int(label_map.max()) + 1, dtype=np.int32)
    for i in parent:
        lookup[i] = root(i)
    return lookup[label_map]


def _split_by_lines(label_map: np.ndarray, prob: float, rng: np.random.Generator) -> np.ndarray:
    """With probability ``prob`` per region, cut it in two by a random line through its centroid."""
    out = label_map.copy()
    next_id = int(label_map.max()) + 1
    ids = np.unique(label_map[label_map > 0])
    for i, u, angle in zip(ids, rng.random(len(ids)), rng.uniform(0.0, np.pi, len(ids))):
        if u >= prob:
            continue
        rows, cols = np.nonzero(label_map == i)
        side = (rows - rows.mean()) * np.sin(angle) + (cols - cols.mean()) * np.cos(angle) > 0
        if side.any() and not side.all():
            out[rows[side], cols[side]] = next_id
            next_id += 1
    return out


@gin.register
class RenderedMaskSource(MaskSource):
    """Simulated SAM for the synthetic benchmark: the frame's rendered instance map, optionally
    perturbed (DESIGN.md 4). Not SAM.

    Perturbations, applied in this order, deterministic per (seed, frame_id):
      merge_prob: chance per instance of merging with a random touching neighbour (SAM's
        under-segmentation); the merged region keeps the smallest id.
      split_prob: chance per region of being cut by a random line through its centroid (SAM's
        over-segmentation); the new part takes a fresh id above the map's maximum.
      drop_small: regions smaller than this many pixels become 0 (SAM's missed small objects).
    Instances partition the pixels, so there is no overlap; instance 0 stays 0.
    """

    def __init__(self, split_prob: float = 0.0, merge_prob: float = 0.0, drop_small: int = 0, seed: int = 0):
        self.split_prob, self.merge_prob, self.drop_small, self.seed = split_prob, merge_prob, drop_small, seed

    @property
    def description(self) -> str:
        if not (self.split_prob or self.merge_prob or self.drop_small):
            return "simulated SAM: rendered instances, unperturbed"
        return (f"simulated SAM: rendered instances with noise (split {self.split_prob:g}, "
                f"merge {self.merge_prob:g}, drop < {self.drop_small} px)")

    def _labels(self, frame: Frame) -> np.ndarray:
        if frame.instance is None:
            raise ValueError(f"RenderedMaskSource: frame {frame.frame_id!r} has no instance map "
                             "(it simulates SAM from rendered instances; use another mask source)")
        labels = check_label_map(frame.instance, frame.hw, f"instance map of frame {frame.frame_id!r}").copy()
        merge_rng, split_rng = (np.random.default_rng(s) for s in frame_rng_seed(self.seed, frame.frame_id).spawn(2))
        if self.merge_prob > 0:
            labels = _merge_neighbours(labels, self.merge_prob, merge_rng)
        if self.split_prob > 0:
            labels = _split_by_lines(labels, self.split_prob, split_rng)
        if self.drop_small > 0:
            ids, counts = np.unique(labels, return_counts=True)
            labels[np.isin(labels, ids[counts < self.drop_small])] = 0
        return labels

"""2D teachers: a frame -> (C, h, w) float32 patch features of the full frame (DESIGN.md 2.2).

The patch grid always spans the whole image (no centre crop: Bridge3D's processor cropped and so
misaligned features and masks [prior]); ``methods.regions`` upsamples it to pixels.

- ``Dinov2Teacher``: DINOv2 from a local Hugging Face directory (never downloads).
- ``SimulatedTeacher``: a stand-in for a foundation model on the synthetic benchmark, whose
  features encode class and instance identity plus noise; a simulation.
"""
from __future__ import annotations

import json
import pathlib
import struct
import zipfile

import gin
import numpy as np
import torch
import torch.nn.functional as F

from datasets.types import Frame
from infra.errors import DataError
from infra.fingerprint import file_digest
from methods.mask_sources import frame_rng_seed
from methods.model_weights import resolve_device

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                 "pytorch_model.bin.index.json")


class Teacher:
    """Base class: subclasses implement ``_features``; ``__call__`` checks what they return."""

    @property
    def dim(self) -> int:
        raise NotImplementedError

    @property
    def description(self) -> str:
        raise NotImplementedError

    def _features(self, frame: Frame) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, frame: Frame) -> torch.Tensor:
        """(C, h, w) float32 patch features of the whole ``frame``."""
        feats = self._features(frame)
        if feats.ndim != 3 or feats.shape[0] != self.dim or feats.dtype != torch.float32:
            raise ValueError(f"{self.description}: returned {feats.dtype} {tuple(feats.shape)}, "
                             f"expected float32 ({self.dim}, h, w)")
        return feats


# ------------------------------------------------------------------------------------------ DINOv2


def _read_json(path: pathlib.Path) -> dict:
    """A JSON object from ``path``; DataError in one line naming the file when it is not one."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not readable as JSON ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        "expected the file save_pretrained writes") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: holds a JSON {type(value).__name__}, expected an object")
    return value


def check_safetensors(path: pathlib.Path) -> None:
    """DataError in one line unless ``path`` is a complete safetensors file: an 8-byte header length, a
    JSON header naming every tensor's byte range, and the bytes they end at (a truncated download fails)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        try:
            if not 2 <= length <= size - 8:
                raise ValueError("bad header length")
            header = json.loads(f.read(length))
            ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"]
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            raise DataError(f"{path}: not a safetensors file (its header is unreadable); expected the weights "
                            "save_pretrained writes") from None
    if 8 + length + max(ends, default=0) > size:
        raise DataError(f"{path}: truncated ({size} bytes, its header needs {8 + length + max(ends)}); "
                        "copy the weights again")


def _check_weights(model_dir: pathlib.Path) -> None:
    """The weights in ``model_dir`` look complete (without loading them); DataError naming the file if not."""
    single = model_dir / "model.safetensors"
    if single.is_file():
        check_safetensors(single)
        return
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
        for shard in shards:
            if not (model_dir / shard).is_file():
                raise DataError(f"{index}: names the weights file {shard}, which is missing")
            check_safetensors(model_dir / shard)
        return
    binary = model_dir / "pytorch_model.bin"
    if binary.is_file() and not zipfile.is_zipfile(binary):
        raise DataError(f"{binary}: not a torch.save archive (truncated or another format); copy the weights again")


@gin.register
class Dinov2Teacher(Teacher):
    """DINOv2 patch tokens (transformers ``Dinov2Model`` / ``Dinov2WithRegistersModel``).

    The image is resized (bilinear, antialiased, aspect kept) so both sides are multiples of the
    patch size, normalised with the processor's mean/std (``preprocessor_config.json``, else
    ImageNet's), and the output drops the CLS and any register tokens.

    Args:
      model_dir: local directory with ``config.json`` and weights (model.safetensors or
        pytorch_model.bin), as written by ``save_pretrained``; loaded with ``local_files_only``.
      image_size: target short side in pixels (rounded to a patch multiple); None keeps the frame's
        own size, each side rounded to the nearest patch multiple.
      device: ``'auto'`` (CUDA when ``torch.cuda.is_available()``, else CPU), ``'cpu'``, ``'cuda'`` or
        ``'cuda:N'``; resolved when the teacher is built, kept in ``device`` and shown in ``description``.
    """

    def __init__(self, model_dir: str, image_size: int | None = None, device: str = "auto"):
        self.model_dir, self.image_size = pathlib.Path(model_dir), image_size
        # Resolved now: the preparation cache key and the tables then name the device the features come from.
        self.device = resolve_device(device, "Dinov2Teacher.device")
        if not self.model_dir.is_dir():
            raise FileNotFoundError(f"DINOv2 model directory not found: {self.model_dir}")
        if not any((self.model_dir / name).is_file() for name in _WEIGHT_FILES):
            raise FileNotFoundError(f"DINOv2 model directory {self.model_dir} has no weights: expected "
                                    "model.safetensors or pytorch_model.bin (from save_pretrained)")
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"DINOv2 model directory {self.model_dir} has no config.json")
        config = _read_json(self.model_dir / "config.json")
        self.model_type = config.get("model_type", "dinov2")
        if self.model_type not in ("dinov2", "dinov2_with_registers"):
            raise ValueError(f"{self.model_dir}/config.json: model_type {self.model_type!r}, "
                             "expected 'dinov2' or 'dinov2_with_registers'")
        try:
            self._dim, self.patch_size = int(config["hidden_size"]), int(config["patch_size"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{self.model_dir}/config.json: expected integer hidden_size and patch_size "
                            "(a DINOv2 config from save_pretrained)") from None
        _check_weights(self.model_dir)
        self.num_prefix_tokens = 1 + int(config.get("num_register_tokens", 0) or 0)
        processor = self.model_dir / "preprocessor_config.json"
        processor = _read_json(processor) if processor.is_file() else {}
        self.mean = tuple(processor.get("image_mean", IMAGENET_MEAN))
        self.std = tuple(processor.get("image_std", IMAGENET_STD))
        self._model = None

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def description(self) -> str:
        size = "native size" if self.image_size is None else f"short side {self.image_size}"
        return (f"DINOv2 {self.model_dir.name} ({self.dim}-d, patch {self.patch_size}, {size}, full frame, "
                f"on {self.device})")

    def cache_state(self) -> dict:
        """What the features depend on (``infra.fingerprint``): the model folder's files by content (config,
        weights, preprocessor) and the input size; not the folder's path, nor the device."""
        files = sorted(p for p in self.model_dir.iterdir()
                       if p.is_file() and p.suffix in (".json", ".safetensors", ".bin"))
        return {"files": {p.name: file_digest(p) for p in files}, "image_size": self.image_size}

    def frame_memory(self, image_hw: tuple[int, int]) -> tuple[float, str]:
        """(bytes on ``device``, what sets them) of one frame's features: the weights (their file's size) and
        the tokens through the layers (inference keeps a few (tokens x width) tensors a layer alive)."""
        weights = sum(p.stat().st_size for p in self.model_dir.glob("*.safetensors")) or \
            sum(p.stat().st_size for p in self.model_dir.glob("*.bin"))
        h, w = self.input_hw(image_hw)
        tokens = (h // self.patch_size) * (w // self.patch_size) + self.num_prefix_tokens
        return (weights + 8.0 * tokens * self.dim * 4 + 3.0 * h * w * 4,
                f"Dinov2Teacher ({self.model_dir.name}, image_size = {self.image_size}) on {h} x {w} input")

    def input_hw(self, hw: tuple[int, int]) -> tuple[int, int]:
        """Size the frame is resized to: sides multiples of the patch size, aspect kept."""
        p = self.patch_size
        scale = 1.0 if self.image_size is None else self.image_size / min(hw)
        return tuple(max(p, int(round(side * scale / p)) * p) for side in hw)

    def _load(self):
        from transformers import Dinov2Model, Dinov2WithRegistersModel

        cls = Dinov2WithRegistersModel if self.model_type == "dinov2_with_registers" else Dinov2Model
        # local_files_only: a local directory is read as is and nothing is ever downloaded.
        return cls.from_pretrained(str(self.model_dir), local_files_only=True).to(self.device).eval()

    @torch.no_grad()
    def _features(self, frame: Frame) -> torch.Tensor:
        if self._model is None:
            self._model = self._load()
        h, w = self.input_hw(frame.hw)
        image = torch.from_numpy(np.array(frame.rgb, copy=True)).permute(2, 0, 1)[None].float() / 255.0  # images may be read-only
        image = F.interpolate(image, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        image = (image - torch.tensor(self.mean).view(1, 3, 1, 1)) / torch.tensor(self.std).view(1, 3, 1, 1)
        tokens = self._model(pixel_values=image.to(self.device)).last_hidden_state[0, self.num_prefix_tokens:]
        grid = (h // self.patch_size, w // self.patch_size)
        return tokens.reshape(*grid, self.dim).permute(2, 0, 1).float().cpu().contiguous()


# --------------------------------------------------------------------------------------- simulated


_CLASS, _INSTANCE = 0, 1  # embedding families, part of each embedding's seed


def _cell_index(n: int, cells: int) -> np.ndarray:
    """Cell of each of ``n`` pixels when ``cells`` near-equal cells span them all."""
    return (np.arange(n) * cells) // n


@gin.register
class SimulatedTeacher(Teacher):
    """Simulated 2D foundation model for the synthetic benchmark (DESIGN.md 4). Not a real model.

    Per pixel: ``class_weight * E_class[semantic] + instance_weight * E_inst[instance] + noise``,
    averaged over each patch cell. Embeddings are N(0, 1/dim) per channel (norm ~1), fixed by
    (seed, id) so the same class or instance id always maps to the same vector; unlabelled pixels
    (-1) have their own class vector and instance 0 contributes nothing. ``noise`` is the per-pixel,
    per-channel std, sampled per (seed, frame_id); its cell average is drawn directly with std
    ``noise / sqrt(pixels in the cell)`` (same distribution, no H x W x C array).
    The grid has round(H / patch_size) x round(W / patch_size) near-equal cells spanning the image.
    """

    def __init__(self, dim: int = 64, patch_size: int = 8, class_weight: float = 1.0,
                 instance_weight: float = 0.5, noise: float = 0.3, seed: int = 0):
        # Public, so the preparation's cache key (the teacher's fingerprint) covers the feature width.
        self.channels, self.patch_size, self.seed = int(dim), patch_size, seed
        self.class_weight, self.instance_weight, self.noise = class_weight, instance_weight, noise

    @property
    def dim(self) -> int:
        return self.channels

    @property
    def description(self) -> str:
        return (f"simulated teacher ({self.dim}-d, patch {self.patch_size}, class {self.class_weight:g} "
                f"+ instance {self.instance_weight:g} + noise {self.noise:g})")

    def frame_memory(self, image_hw: tuple[int, int]) -> tuple[float, str]:
        """(bytes, what sets them) of one frame's features while they are made: float64 cell sums, noise and
        the float32 copy (about four (cells x dim) arrays), and the classes' and instances' embeddings."""
        cells = max(1, round(image_hw[0] / self.patch_size)) * max(1, round(image_hw[1] / self.patch_size))
        return (4 * cells + 256) * self.dim * 8.0, f"SimulatedTeacher.dim = {self.dim}, patch_size = {self.patch_size}"

    def _embeddings(self, kind: int, ids: np.ndarray) -> np.ndarray:
        rows = [np.random.default_rng([self.seed, kind, int(i) + 1]).standard_normal(self.dim) for i in ids]
        return np.stack(rows) / np.sqrt(self.dim) if rows else np.zeros((0, self.dim))

    def _pooled(self, labels: np.ndarray, cell: np.ndarray, n_cells: int, kind: int) -> np.ndarray:
        """(n_cells, dim) sum over each cell of the embeddings of ``labels``."""
        ids, inverse = np.unique(labels, return_inverse=True)
        embeddings = self._embeddings(kind, ids)
        if kind == _INSTANCE:
            embeddings[ids == 0] = 0.0  # instance 0 = no instance: no instance vector
        counts = np.bincount(cell * len(ids) + inverse.reshape(-1), minlength=n_cells * len(ids))
        return counts.reshape(n_cells, len(ids)) @ embeddings

    def _features(self, frame: Frame) -> torch.Tensor:
        if frame.semantic is None or frame.instance is None:
            raise ValueError(f"SimulatedTeacher: frame {frame.frame_id!r} needs both semantic and instance "
                             "maps (it simulates a teacher from rendered labels)")
        H, W = frame.hw
        h, w = max(1, round(H / self.patch_size)), max(1, round(W / self.patch_size))
        cell = (_cell_index(H, h)[:, None] * w + _cell_index(W, w)[None, :]).reshape(-1)
        n_pixels = np.bincount(cell, minlength=h * w)[:, None].astype(np.float64)
        feats = self.class_weight * self._pooled(np.asarray(frame.semantic).reshape(-1), cell, h * w, _CLASS)
        feats += self.instance_weight * self._pooled(np.asarray(frame.instance).reshape(-1), cell, h * w, _INSTANCE)
        feats /= n_pixels
        rng = np.random.default_rng(frame_rng_seed(self.seed, frame.frame_id))
        feats += rng.standard_normal((h * w, self.dim)) * (self.noise / np.sqrt(n_pixels))
        return torch.from_numpy(feats.T.reshape(self.dim, h, w).astype(np.float32))

"""On-disk cache of whole-scene point clouds (points, colours, labels, boxes; no frames) for fine-tuning.

Fine-tuning reads every training scene once per epoch; generating (synthetic) or parsing (real) a scene
each time would dominate. The cache folder is keyed by the dataset's content fingerprint; every file is
written atomically, a scene whose file is missing or fails validation is regenerated, never used.
"""
from __future__ import annotations

import io
import pathlib
import zipfile
import zlib

import numpy as np
from tqdm import tqdm

from bench.fingerprint import fingerprint
from bench.io import atomic_write_bytes
from datasets.types import Scene

_FIELDS = {"points": (np.float32, 2), "colors": (np.uint8, 2), "semantic": (np.int32, 1),
           "instance": (np.int32, 1), "boxes": (np.float32, 2), "box_labels": (np.int32, 1),
           "box_instance": (np.int32, 1)}


def _scene_bytes(scene: Scene) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, scene_id=np.array(scene.scene_id), **{k: getattr(scene, k) for k in _FIELDS})
    return buffer.getvalue()


def _load_scene(path: pathlib.Path) -> Scene | None:
    """The cached scene, or None when the file is missing, unreadable or malformed."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in (*_FIELDS, "scene_id")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return None
    if any(arrays[k].dtype != dtype or arrays[k].ndim != ndim for k, (dtype, ndim) in _FIELDS.items()):
        return None
    return Scene(scene_id=str(arrays.pop("scene_id")), **arrays)


class CachedScenes:
    """The scenes of one split as a sequence, generated once and then read from the cache.

    Args:
      dataset: anything with ``info``, ``num_scenes(split)``, ``scene_id(split, i)``, ``scene(split, i)``.
      split: the split to cache.
      cache_root: the cache folder (``<results_dir>/cache``).
    """

    def __init__(self, dataset, split: str, cache_root: pathlib.Path):
        self.dataset = dataset
        self.split = split
        key = fingerprint(dataset)
        self.folder = pathlib.Path(cache_root) / "scenes" / f"{dataset.info.name}-{split}-{key}"
        self.ids = [dataset.scene_id(split, i) for i in range(dataset.num_scenes(split))]
        missing = [i for i, sid in enumerate(self.ids) if not (self.folder / f"{sid}.npz").is_file()]
        for i in tqdm(missing, desc=f"cache scenes {dataset.info.name}/{split}", disable=not missing):
            self._write(i)

    def _write(self, index: int) -> Scene:
        scene = self.dataset.scene(self.split, index)
        atomic_write_bytes(self.folder / f"{scene.scene_id}.npz", _scene_bytes(scene))
        return without_frames(scene)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Scene:
        scene = _load_scene(self.folder / f"{self.ids[index]}.npz")
        if scene is None or scene.scene_id != self.ids[index]:
            print(f"warning: cached scene {self.ids[index]} in {self.folder} is unreadable; regenerating")
            return self._write(index)
        return scene


def without_frames(scene: Scene) -> Scene:
    """The scene with its frames dropped (what the cache stores)."""
    return Scene(**{k: getattr(scene, k) for k in ("scene_id", *_FIELDS)})

"""On-disk cache of whole-scene point clouds (points, colours, labels, boxes; no frames) for fine-tuning.

Fine-tuning reads every training scene once per epoch; generating (synthetic) or parsing (real) a scene
each time would dominate. The cache folder is keyed by the dataset's content fingerprint (its whole
configuration, split sizes included); every file is written atomically with a checksum (``infra.io``),
a scene whose file is missing, changed since it was written or malformed is regenerated, never used.
Each file's record keeps the seconds its scene took to generate (``infra.steps``).
"""
from __future__ import annotations

import io
import pathlib
import zipfile
import zlib

import numpy as np

from datasets.types import Scene
from infra import progress, timing
from infra.cached_step import CachedStep, UnusableCacheFile, make_missing
from infra.fingerprint import fingerprint
from infra.io import read_cache_meta
from infra.memory_cache import ByteBudgetCache, array_bytes, file_key, freeze_arrays

_FIELDS = {"points": (np.float32, 2), "colors": (np.uint8, 2), "semantic": (np.int32, 1),
           "instance": (np.int32, 1), "boxes": (np.float32, 2), "box_labels": (np.int32, 1),
           "box_instance": (np.int32, 1)}
_LOADED = ByteBudgetCache()  # scenes this process has read, shared by every CachedScenes of the process


def _scene_bytes(scene: Scene) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, scene_id=np.array(scene.scene_id), **{k: getattr(scene, k) for k in _FIELDS})
    return buffer.getvalue()


def _decode_scene(data: bytes, scene_id: str) -> Scene:
    """A cached scene file's bytes as a Scene; UnusableCacheFile if a field is missing or of the wrong type, or
    the file holds another scene."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in (*_FIELDS, "scene_id")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise UnusableCacheFile(f"unreadable ({type(e).__name__})") from None
    if any(arrays[k].dtype != dtype or arrays[k].ndim != ndim for k, (dtype, ndim) in _FIELDS.items()):
        raise UnusableCacheFile("malformed (a field has the wrong type)")
    if str(arrays["scene_id"]) != scene_id:
        raise UnusableCacheFile(f"holds scene {arrays['scene_id']}")
    return Scene(scene_id=str(arrays.pop("scene_id")), **arrays)


class CachedScenes:
    """The scenes of one split as a sequence, generated once and then read from the cache.

    Scenes read once stay in this process's memory (read-only, within a byte budget: see
    ``infra.memory_cache``), so later epochs and rows do not decode the files again. Concurrent
    processes split the generation of missing scenes between them (``infra.locks``).

    Args:
      dataset: anything with ``info``, ``num_scenes(split)``, ``scene_id(split, i)``, ``scene(split, i)``.
      split: the split to cache.
      cache_root: the cache folder (``<results_dir>/cache``).
    """

    def __init__(self, dataset, split: str, cache_root: pathlib.Path):
        self.dataset = dataset
        self.split = split
        self.folder = self.folder_for(dataset, split, cache_root)
        self.ids = [dataset.scene_id(split, i) for i in range(dataset.num_scenes(split))]
        self._fill()

    @staticmethod
    def folder_for(dataset, split: str, cache_root: pathlib.Path) -> pathlib.Path:
        """The cache folder of ``split``, keyed by the dataset's content fingerprint (nothing is generated)."""
        return pathlib.Path(cache_root) / "scenes" / f"{dataset.info.name}-{split}-{fingerprint(dataset)}"

    def _path(self, index: int) -> pathlib.Path:
        return self.folder / f"{self.ids[index]}.npz"

    def _step(self, index: int) -> CachedStep:
        return CachedStep(self._path(index), name=f"scenes/{self.folder.name}/{self.ids[index]}",
                          lock=self.folder / "locks" / f"{self.ids[index]}.lock", what="cached scene",
                          redo="regenerating")

    def _fill(self) -> None:
        """Generate the scenes missing from the cache; a scene another process is generating is waited
        for at the end, so two processes split the work instead of repeating it."""
        missing = [i for i in range(len(self.ids)) if not self._path(i).is_file()]
        for i in set(range(len(self.ids))) - set(missing):
            self._step(i).report((read_cache_meta(self._path(i)) or {}).get("seconds"))
        if not missing:
            return
        clock = timing.Stopwatch()
        with timing.span("scene cache"):
            bar = progress.bar(missing, desc=f"cache scenes {self.dataset.info.name}/{self.split}")
            made, others = make_missing(bar, self._step, self._generated, self._generate)
        progress.step(f"scenes {self.dataset.info.name}/{self.split}",
                      f"{len(made) - others} generated in {progress.duration(clock.seconds)}"
                      + (f" ({others} by another process)" if others else ""))

    def _generated(self, index: int) -> bool | None:
        return True if self._path(index).is_file() else None

    def _generate(self, index: int) -> bool:
        self._write(index)  # the scene is read back from the cache when it is used
        return True

    def _write(self, index: int) -> Scene:
        clock = timing.Stopwatch()
        with timing.span("scene generation"):
            scene = self.dataset.scene(self.split, index)
        self._step(index).save(_scene_bytes(scene), clock.seconds)
        return without_frames(scene)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Scene:
        path = self._path(index)
        key = file_key(path)
        scene = _LOADED.get(key)
        if scene is not None:
            return scene
        scene = self._step(index).load(lambda data: _decode_scene(data, self.ids[index]))
        if scene is None:  # missing, changed since it was written or malformed (said by load)
            return self._write(index)
        return _LOADED.put(key, freeze_arrays(scene), array_bytes(scene))


def without_frames(scene: Scene) -> Scene:
    """The scene with its frames dropped (what the cache stores)."""
    return Scene(**{k: getattr(scene, k) for k in ("scene_id", *_FIELDS)})

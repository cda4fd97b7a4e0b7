"""The dataset protocol for datasets whose splits are lists of scene ids, read from disk one at a time.

Every reader answers ``info``, ``splits``, ``num_scenes(split)``, ``scene_id(split, i)``, ``scene(split, i)``
and a lazy ``scenes(split)`` (the runner, the caches and ``verify`` rely on exactly these).
"""
from __future__ import annotations

from collections.abc import Iterator

from bench.errors import DataError
from datasets.types import DatasetInfo, Scene

# What readers raise for a missing, unreadable or malformed file; their messages already name the file
# and the expected layout, so the CLI can print them as one line instead of a traceback.
READ_ERRORS = (OSError, ValueError, EOFError)


class SceneListDataset:
    """Subclasses set ``info``, fill ``self.scene_ids`` (split -> ids) in ``__init__``, and implement
    ``read_scene(scene_id)``; nothing is kept in memory between calls."""

    info: DatasetInfo
    scene_ids: dict[str, list[str]]

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.scene_ids)

    def _ids(self, split: str) -> list[str]:
        if split not in self.scene_ids:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(self.splits)}")
        return self.scene_ids[split]

    def num_scenes(self, split: str) -> int:
        """Number of scenes in ``split``."""
        return len(self._ids(split))

    def scene_id(self, split: str, index: int) -> str:
        """The id of the ``index``-th scene of ``split``."""
        ids = self._ids(split)
        if not 0 <= index < len(ids):
            raise IndexError(f"scene index {index} out of range for split {split!r} with {len(ids)} scenes")
        return ids[index]

    def scene(self, split: str, index: int) -> Scene:
        """Read one scene from disk; a reader's file error becomes a one-line ``DataError``."""
        scene_id = self.scene_id(split, index)
        try:
            return self.read_scene(scene_id)
        except DataError:
            raise
        except READ_ERRORS as e:
            raise DataError(f"{type(self).__name__} scene {scene_id!r}: {e}") from e

    def scenes(self, split: str) -> Iterator[Scene]:
        """Lazily read the scenes of ``split`` in order (one in memory at a time)."""
        for index in range(self.num_scenes(split)):
            yield self.scene(split, index)

    def read_scene(self, scene_id: str) -> Scene:
        raise NotImplementedError

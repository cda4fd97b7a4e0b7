"""The dataset protocol for datasets whose splits are lists of scene ids, read from disk one at a time.

Every reader answers ``info``, ``splits``, ``num_scenes(split)``, ``scene_id(split, i)``, ``scene(split, i)``
and a lazy ``scenes(split)`` (the runner, the caches and ``verify`` rely on exactly these).

Every scene a reader returns is checked here, once for every reader, field by field
(``datasets.scene_checks``): a problem is a one-line ``DataError`` naming the scene and the file.

Points with a NaN or infinite coordinate are handled here too, by the reader's
``non_finite`` policy (``NON_FINITE_POLICIES``): ``"drop"`` [choice, the default] removes them from every
per-point field with one warning line naming the scene and counting them; ``"error"`` refuses the scene
with a one-line ``DataError``. Left in, NaNs in a third of one ScanNet scene's points took mIoU from 19.7
to 0.7 with nothing but a numpy RuntimeWarning to show for it.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np

from datasets.scene_checks import field_problems
from datasets.types import DatasetInfo, Scene, select_points
from infra.errors import DataError

log = logging.getLogger(__name__)

# What readers raise for a missing, unreadable or malformed file; their messages already name the file
# and the expected layout, so the CLI can print them as one line instead of a traceback.
READ_ERRORS = (OSError, ValueError, EOFError)

NON_FINITE_POLICIES = ("drop", "error")


def non_finite_policy(policy: str) -> str:
    """``policy`` if it is one of ``NON_FINITE_POLICIES``; a one-line ``DataError`` otherwise."""
    if policy not in NON_FINITE_POLICIES:
        raise DataError(f"non_finite must be one of {', '.join(map(repr, NON_FINITE_POLICIES))}, got {policy!r}")
    return policy


def drop_non_finite(scene: Scene, policy: str, where: str, source: str) -> Scene:
    """``scene`` without its points that have a NaN or infinite coordinate, as ``policy`` says.

    ``where`` names the scene in messages (``"ScanNetExport scene 'scene0000_00'"``) and ``source`` the
    file its coordinates came from. ``"drop"``: the other points are kept, every per-point field alike,
    boxes unchanged, with one warning line; ``"error"``, or no finite point at all: a ``DataError``.
    """
    finite = np.isfinite(scene.points).all(axis=1)
    bad = int(finite.size - np.count_nonzero(finite))
    if bad == 0:
        return scene
    what = f"{where}: {source}: {bad} of {finite.size} points have non-finite (NaN/inf) coordinates"
    if policy == "error":
        raise DataError(f"{what}; expected finite x, y, z for every point (non_finite='error'; 'drop' skips them)")
    if bad == finite.size:
        raise DataError(f"{what}; expected at least one finite point")
    log.warning("%s; dropped them (non_finite='drop')", what)
    return select_points(scene, finite)


class SceneListDataset:
    """Subclasses set ``info``, fill ``self.scene_ids`` (split -> ids) and ``self.non_finite`` (checked
    with ``non_finite_policy``) in ``__init__``, and implement ``read_scene(scene_id)`` and
    ``points_source(scene_id)``; nothing is kept in memory between calls."""

    info: DatasetInfo
    scene_ids: dict[str, list[str]]
    non_finite: str = "drop"

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
        """Read one scene from disk, its non-finite points handled by ``self.non_finite``; a reader's file
        error becomes a one-line ``DataError``."""
        scene_id = self.scene_id(split, index)
        where = f"{type(self).__name__} scene {scene_id!r}"
        try:
            scene = self.read_scene(scene_id)
        except DataError:
            raise
        except READ_ERRORS as e:
            raise DataError(f"{where}: {e}") from e
        scene = drop_non_finite(scene, self.non_finite, where, self.points_source(scene_id))
        problems = field_problems(scene, self.info)
        if problems:
            field, message = problems[0]
            more = f" (and {len(problems) - 1} more problems: python -m datasets verify)" if len(problems) > 1 else ""
            raise DataError(f"{where}: {self.field_source(scene_id, field)}: {message}{more}")
        return scene

    def scenes(self, split: str) -> Iterator[Scene]:
        """Lazily read the scenes of ``split`` in order (one in memory at a time)."""
        for index in range(self.num_scenes(split)):
            yield self.scene(split, index)

    def read_scene(self, scene_id: str) -> Scene:
        raise NotImplementedError

    def points_source(self, scene_id: str) -> str:
        """The file (or folder) the coordinates of ``scene_id`` are read from, for messages."""
        raise NotImplementedError

    def field_source(self, scene_id: str, field: str) -> str:
        """The file a Scene field (``semantic``, ``boxes``, ...) of ``scene_id`` is read from, for messages;
        readers that keep fields in files of their own say which (default: the points' file)."""
        return self.points_source(scene_id)

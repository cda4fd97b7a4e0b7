"""A scene's frames, read from disk one at a time when they are used.

Real scenes have hundreds to thousands of RGB-D frames; reading them all whenever a scene is read would
cost minutes and gigabytes for work that only needs the points (fine-tuning, evaluation, the scene
cache). ``LazyFrames`` knows the frame ids up front and loads a frame only when it is indexed or
iterated, so at most one frame of a scene is in memory while preparation streams over them.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from datasets.types import Frame


class LazyFrames(Sequence):
    """A read-only sequence of frames; ``load(i)`` reads the ``i``-th of ``frame_ids`` on access."""

    def __init__(self, frame_ids: Sequence[str], load: Callable[[int], Frame]):
        self.frame_ids = list(frame_ids)
        self._load = load

    def __len__(self) -> int:
        return len(self.frame_ids)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"frame index {index} out of range for {len(self)} frames")
        return self._load(index % len(self))

    def __iter__(self) -> Iterator[Frame]:
        for index in range(len(self)):
            yield self._load(index)

    def __repr__(self) -> str:
        return f"LazyFrames({len(self)} frames)"

"""The real model, objective, data and optimiser groups of a training step, captured without training.

A pretraining stage (``PretrainStage.run``) and a fine-tuning run (``FinetuneSpec._fit``) build what they train
inside their own code (a fine-tuning spec's model is built in a closure) and hand it to ``methods.train.train``.
``captured_training`` has that function record its arguments and return an empty history instead of
training (``methods.train.recording_instead``): the stage or spec then runs exactly as a table would run it,
up to the first epoch, and no checkpoint is read or written. A plan times its steps on what was recorded
(``bench.plan_timing``), so the model, the tokenizer, the batch layout and the optimiser groups are the
run's own. The stand-ins below give those steps data without a cache: the frames the plan prepared, the
scenes it read, at the split's length.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from methods.reweighting import group_weights
from methods.train import recording_instead


@dataclasses.dataclass
class CapturedTraining:
    """The arguments of one ``methods.train.train`` call."""

    name: str
    module: object
    dataset: object
    collate: object
    schedule: object
    seed: int
    param_groups: list | None = None


@contextlib.contextmanager
def captured_training() -> Iterator[list[CapturedTraining]]:
    """Within the block, stages and fine-tuning specs record their ``train`` call (appended to the list given)
    instead of training; each gets a one-epoch history of zero loss back."""
    calls: list[CapturedTraining] = []

    def record(module, dataset, collate, schedule, checkpoint, seed, log=None, name="train", extra_state=None,
               param_groups=None, epoch_hook=None):
        calls.append(CapturedTraining(name, module, dataset, collate, schedule, seed, param_groups))
        return [{"loss": 0.0}]

    with recording_instead(record):
        yield calls


class StandInFrames:
    """A prepared split as a pretraining stage reads it: ``length`` frames (the split's count), each one of the
    few ``frames`` the plan prepared, with their regions spread over ``num_groups`` equal groups."""

    def __init__(self, frames: Sequence, length: int, num_groups: int):
        self.frames = [dataclasses.replace(f, region_groups=np.arange(len(f.region_ids), dtype=np.int64) % num_groups)
                       for f in frames]
        self.length = max(1, int(length))
        self.groups = {"weights": group_weights(np.ones(num_groups, np.int64))}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        return self.frames[index % len(self.frames)]


class StandInScenes:
    """A split's scenes as a fine-tuning run reads them: its real ids and cache folder (protocols pick scenes by
    id), every item one of the few ``scenes`` the plan read."""

    def __init__(self, scenes: Sequence, ids: Sequence[str], folder):
        self.scenes = list(scenes)
        self.ids = list(ids)
        self.folder = folder

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        return self.scenes[index % len(self.scenes)]

"""The training loop's data loader: built once per training, its workers kept across epochs.

Loading, sampling, augmentation (and, unless tokens are made on the device, tokenization) run in
``TrainSchedule.num_workers`` worker processes that live for the whole training (``persistent_workers``),
with pinned memory on CUDA so that ``non_blocking`` copies overlap the step. Workers that outlive an
epoch cannot see the main process set ``dataset.epoch``, so the sampler names every item as
``(epoch, index)`` and ``EpochItems`` sets the epoch in whichever process reads it: an item depends on
(seed, epoch, index) alone, whatever the number of workers, and a resumed run reads what an
uninterrupted one would.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch


class EpochShuffle(torch.utils.data.Sampler):
    """One epoch's shuffle of ``size`` items as ``(epoch, index)`` pairs; this rank's share under torchrun.

    One process: the order a ``DataLoader(shuffle=True, generator=Generator().manual_seed(seed + epoch))``
    gives (a DataLoader draws its workers' base seed from that generator before shuffling; the draw is
    kept so single-process runs keep the order they always had). Several: ``DistributedSampler``'s
    (the shuffle of ``seed + epoch``, padded by repeating its start to a multiple of the world size, every
    ``world``-th item from ``rank``), so every rank runs the same number of steps.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1):
        self.size, self.seed, self.rank, self.world = int(size), int(seed), int(rank), int(world)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(self.size / self.world)

    def order(self) -> list[int]:
        """This rank's item indices of the current epoch, in the order they are read."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.world == 1:
            torch.empty((), dtype=torch.int64).random_(generator=generator)
            return torch.randperm(self.size, generator=generator).tolist()
        indices = torch.randperm(self.size, generator=generator).tolist()
        total = len(self) * self.world
        indices += (indices * math.ceil(total / max(1, len(indices))))[: total - len(indices)]
        return indices[self.rank:total:self.world]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return iter([(epoch, index) for index in self.order()])


class EpochItems(torch.utils.data.Dataset):
    """``dataset[index]`` as of ``epoch`` for a key ``(epoch, index)``: sets ``dataset.epoch`` where it exists."""

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        if hasattr(self.dataset, "epoch"):
            self.dataset.epoch = epoch
        return self.dataset[index]


def training_loader(dataset: torch.utils.data.Dataset, collate: Callable, batch_size: int, sampler: EpochShuffle,
                    num_workers: int, device: torch.device, seed: int,
                    prefetch_factor: int = 2) -> torch.utils.data.DataLoader:
    """The loader of a whole training (``set_epoch`` on ``sampler`` before iterating it each epoch).

    Its own generator gives the workers' base seeds, so loading never draws from the global stream that
    the model's dropout and drop-path use (items are seeded by (seed, epoch, index), never by worker).
    """
    workers = int(num_workers)
    return torch.utils.data.DataLoader(
        EpochItems(dataset), batch_size=batch_size, sampler=sampler, collate_fn=collate, num_workers=workers,
        persistent_workers=workers > 0, prefetch_factor=prefetch_factor if workers > 0 else None,
        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(int(seed)))

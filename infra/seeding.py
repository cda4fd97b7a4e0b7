"""Seeds: every global generator for a row, and a step's own seed that no other step can disturb.

A step (a pretraining stage, a fine-tuning run) takes all of its randomness -- initialisation, data
order, augmentation, token sampling, masks, dropout -- from ``derive_seed(row_seed, role)``, never from
whatever state the global generators were left in by the steps that ran (or were read from the cache)
before it. So a table's cells do not depend on what the cache held, on the order of the rows, or on
which process ran a step.

The role is what the step is in its row (``pretrain/0`` for the first stage of a chain,
``finetune/seg``), not its content key: rows that share a seed then share their random draws (the same
head initialisation, data order and masks), so the paired differences between rows measure the
components, not different draws (common random numbers).
"""
from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator

import numpy as np


def seed_everything(seed: int) -> None:
    """Seed Python, numpy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    import torch

    torch.manual_seed(seed)


def derive_seed(seed: int, *parts: object) -> int:
    """A 31-bit seed from ``seed`` and the ``parts`` that name a step; the same in every process."""
    text = "/".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "little") & 0x7FFF_FFFF


@contextlib.contextmanager
def torch_seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU generator seeded with ``seed``; its previous state is restored after.

    Models are built on the CPU (then moved), so their initialisation depends on ``seed`` alone.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield

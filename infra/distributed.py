"""Multi-process runs under torchrun: one process per GPU (or per CPU slot), DistributedDataParallel.

``torchrun`` sets WORLD_SIZE / RANK / LOCAL_RANK; ``init_from_env`` joins the process group (nccl on
CUDA, gloo on CPU) when there is more than one process. Every helper is a no-op in a single process, so
``python run_bench.py`` never touches torch.distributed.

Roles: every rank runs the whole experiment, rows and seeds in the same order, so the collectives line
up; each training step is sharded over the ranks (``methods.train``); rank 0 alone fills the shared
on-disk caches (then the other ranks read them, see ``main_first``), writes checkpoints, evaluates, talks
to MLflow and writes the results folder.
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import os
from collections.abc import Iterator, Mapping

import torch
import torch.distributed as dist

from infra.errors import HarnessError

# Ranks > 0 wait at a collective while rank 0 prepares caches, evaluates and writes the report; the
# default timeout (10 min for nccl) would end a paper-scale run there. Minutes, overridable.
TIMEOUT_ENV = "SAM3D_DIST_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 120


def is_initialized() -> bool:
    """Whether this process is one of several in a torch.distributed process group."""
    return dist.is_available() and dist.is_initialized()


def init_from_env() -> None:
    """Join the process group torchrun describes (WORLD_SIZE > 1); nothing in a single process.

    On CUDA each process uses the GPU ``LOCAL_RANK`` and the nccl backend; on CPU, gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or is_initialized():
        return
    if not dist.is_available():
        raise HarnessError(f"WORLD_SIZE={world} but this torch build has no torch.distributed")
    try:
        minutes = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_MIN))
    except ValueError:
        raise HarnessError(f"{TIMEOUT_ENV}={os.environ[TIMEOUT_ENV]!r} is not a number of minutes") from None
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda and local_rank >= torch.cuda.device_count():
        raise HarnessError(f"torchrun process LOCAL_RANK={local_rank} has no GPU ({torch.cuda.device_count()} "
                           "visible): use --nproc_per_node <= the number of GPUs")
    if cuda:
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=minutes))
    except Exception as e:  # e.g. WORLD_SIZE set by something else than torchrun, without MASTER_ADDR
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise HarnessError(f"WORLD_SIZE={world} but joining the process group failed (run under torchrun): "
                           f"{first}") from None


def shutdown() -> None:
    """Leave the process group (after a run that finished; on errors the process exit cleans up).

    Every rank first waits for the others, and the DistributedDataParallel wrappers of finished
    trainings (kept alive by reference cycles) are collected, so the group and its gloo worker threads
    go while the interpreter is whole: left to interpreter exit, a worker thread that still held work
    aborted the process (``terminate called without an active exception``: 5 of 70 runs of
    ``tests/bench/test_distributed.py``'s worker before, 0 of 60 after).
    """
    if is_initialized():
        barrier()
        gc.collect()
        dist.destroy_process_group()


def world_size() -> int:
    """Number of processes (1 without torchrun)."""
    return dist.get_world_size() if is_initialized() else 1


def local_world_size() -> int:
    """Number of processes on this machine (torchrun's LOCAL_WORLD_SIZE; 1 without torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without torchrun)."""
    return dist.get_rank() if is_initialized() else 0


def is_main() -> bool:
    """Whether this process is rank 0, the one that writes, evaluates and logs."""
    return rank() == 0


def backend() -> str | None:
    """The process group's backend ("nccl", "gloo"), None in a single process."""
    return str(dist.get_backend()) if is_initialized() else None


def _device() -> torch.device:
    # nccl reduces CUDA tensors only; init_from_env has set this process's GPU.
    return torch.device("cuda", torch.cuda.current_device()) if backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    """Wait until every rank gets here."""
    if not is_initialized():
        return
    if backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def all_reduce_mean(values: Mapping[str, float]) -> dict[str, float]:
    """The mean over ranks of each value (every rank must pass the same keys); a copy in one process."""
    if not is_initialized():
        return dict(values)
    keys = sorted(values)  # the same order on every rank, whatever order the dicts were built in
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_device())
    dist.all_reduce(tensor)
    means = dict(zip(keys, (tensor / world_size()).tolist()))
    return {k: means[k] for k in values}


def _broadcast_from_main(value):
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0, then (once it is done) on the other ranks; in one process, just run it.

    For work that fills a shared on-disk cache: rank 0 writes it once and the others then find it
    complete and only read it, so all ranks train on the same bytes and no GPU repeats the work.
    If the block fails on rank 0, the other ranks raise ``HarnessError`` with its one-line message
    instead of running the block. Every rank must enter the block at the same point of the run.
    """
    if not is_initialized():
        yield
        return
    if not is_main():
        error = _broadcast_from_main(None)
        if error is not None:
            raise HarnessError(error)
        yield
        return
    try:
        yield
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        _broadcast_from_main(first if isinstance(e, HarnessError) else f"rank 0 failed: {type(e).__name__}: {first}")
        raise
    _broadcast_from_main(None)

"""Multi-process runs under torchrun: one process per GPU (or per CPU slot), DistributedDataParallel.

``torchrun`` sets WORLD_SIZE / RANK / LOCAL_RANK; ``init_from_env`` joins the process group (nccl on
CUDA, gloo on CPU) when there is more than one process. Every helper is a no-op in a single process, so
``python run_bench.py`` never touches torch.distributed.

Roles: every rank runs the whole experiment, rows and seeds in the same order, so the collectives line
up; each training step is sharded over the ranks (``methods.train``), and so is each evaluation
(``gather_in_order``: every rank predicts its share of the scenes, rank 0 computes the metrics once from
the gathered records, ``from_main``); rank 0 alone writes checkpoints, talks to MLflow and writes the
results folder. Shared on-disk caches are filled under file locks by whichever ranks get there (the
scenes, the prepared frames), or by rank 0 first (``main_first``).

Multi-node: one torchrun launcher per node (``--nnodes N --rdzv-backend c10d --rdzv-endpoint HOST:PORT
--rdzv-id JOB``), every node on one results folder; ``RANK`` is the global rank, so "rank 0" is one process
of the whole job, and only it prints progress (``infra.progress``).
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import os
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

import torch
import torch.distributed as dist

from infra import progress
from infra.errors import HarnessError

# How long a rank waits at a collective for the others (minutes; TIMEOUT_ENV overrides it). Every rank
# trains and evaluates its share, so a rank waits for another one only while that one is (a) a step
# behind -- the imbalance of one training step or of an evaluation shard (a scene or two) -- or (b) rank 0
# alone doing what is short by construction: checking the results folder and reaching the tracking store
# (seconds; MLflow's HTTP retries back off for a few minutes when a server is down), writing a checkpoint
# and a learning-curve point (``LearningCurve.scenes`` scenes, 8 by default) after an epoch, computing a
# row's metrics from the gathered records and logging it, writing the tables and plots at the end (each
# seconds to a minute at the paper's scale). 30 minutes bounds all of these with room to spare (it is
# gloo's own default, 3x nccl's). What it does not bound: rank 0 waiting on the file lock of a training
# step that another invocation on the same results folder is running -- raise TIMEOUT_ENV for that.
TIMEOUT_ENV = "SAM3D_DIST_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 30.0

T = TypeVar("T")


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
    minutes = timeout_minutes()
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


def timeout_minutes() -> float:
    """How long a rank waits at a collective: ``SAM3D_DIST_TIMEOUT_MIN`` or ``DEFAULT_TIMEOUT_MIN`` (its
    comment says what the default bounds)."""
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT_MIN
    try:
        minutes = float(text)
    except ValueError:
        minutes = float("nan")
    if not minutes > 0 or minutes == float("inf"):
        raise HarnessError(f"{TIMEOUT_ENV}={text!r} is not a positive number of minutes")
    return minutes


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


def broadcast_module_state(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers into ``module`` on every rank; nothing in one process.

    For the end of a DistributedDataParallel training: the parameters are then equal on every rank, but
    BatchNorm running statistics are not -- DDP sends rank 0's buffers before each forward pass, and each
    rank's last forward pass updates its own from its own batch. A rank that goes on to evaluate its share
    of the scenes must hold the model rank 0 saved, or its predictions differ from rank 0's. Every rank
    must call it with the same module structure.
    """
    if not is_initialized():
        return
    for tensor in (*module.parameters(), *module.buffers()):
        dist.broadcast(tensor.data, src=0)


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
        _broadcast_from_main(_one_line(e, 0))
        raise
    _broadcast_from_main(None)


def shard(count: int) -> range:
    """The indices of ``count`` items this rank handles: i with i % world_size == rank (all in one process)."""
    return range(rank(), count, world_size())


def gather_in_order(work: Callable[[int], T], count: int, desc: str = "") -> list[T]:
    """``[work(i) for i in range(count)]``, each rank computing its ``shard``; every rank gets the whole list.

    The results come back in index order, so whatever is computed from them (a float sum, a ranking with
    ties) is what one process computing them all in order gets. ``desc`` names the progress bar (rank 0,
    on a terminal). Every rank must call it at the same point of the run, with the same ``count``. If
    ``work`` fails on any rank, every rank raises once all have stopped: that rank its own exception, the
    others ``HarnessError`` with its one-line message.
    """
    if not is_initialized():
        return [work(i) for i in progress.bar(range(count), desc=desc)] if desc else [work(i) for i in range(count)]
    mine, failure = [], None
    indices = shard(count)
    try:
        for index in progress.bar(indices, desc=desc) if desc else indices:
            mine.append(work(index))
    except Exception as e:  # sent to the others, then raised here below
        failure = e
    shards: list = [None] * world_size()
    dist.all_gather_object(shards, (_one_line(failure, rank()) if failure else None, mine))
    if failure is not None:
        raise failure
    errors = [error for error, _ in shards if error is not None]
    if errors:
        raise HarnessError(errors[0])
    world = world_size()
    return [shards[i % world][1][i // world] for i in range(count)]  # item i is rank i % world's (i // world)-th


def from_main(compute: Callable[[], T]) -> T:
    """``compute()`` run on rank 0 alone and its value (picklable) sent to every rank; in one process, just
    ``compute()``. For a short step whose result every rank needs (metrics from gathered records). If it
    fails on rank 0, the other ranks raise ``HarnessError`` with its one-line message."""
    if not is_initialized():
        return compute()
    if not is_main():
        error, value = _broadcast_from_main(None)
        if error is not None:
            raise HarnessError(error)
        return value
    try:
        value = compute()
    except Exception as e:
        _broadcast_from_main((_one_line(e, 0), None))
        raise
    _broadcast_from_main((None, value))
    return value


def _one_line(error: Exception, where: int) -> str:
    """What the other ranks say for ``error`` raised on rank ``where``: a HarnessError's own first line."""
    first = (str(error).strip().splitlines() or [""])[0]
    return first if isinstance(error, HarnessError) else f"rank {where} failed: {type(error).__name__}: {first}"

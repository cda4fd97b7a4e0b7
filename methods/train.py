"""The training loop shared by every pretraining stage.

AdamW with a linear warm-up then cosine decay per step, gradient-norm clipping, a checkpoint after every
epoch (written atomically; loads with ``torch.load(weights_only=True)``), resumption from the last
checkpoint, per-epoch loss curves through a logging callback, one progress line per finished run (and a
bar per epoch on a terminal), and the time of every step's phases for the run's profile. CPU and CUDA; bf16 autocast
only on CUDA (it is much slower than float32 on CPUs).

Under torchrun (``infra.distributed``) the module is wrapped in DistributedDataParallel and each rank
takes ``batch_size / world_size`` samples of every global batch (a shuffle as random as, but not equal to,
the one a single process draws), so the steps per epoch and the LR schedule are those of one process;
epoch means are averaged over ranks, so every rank returns the same history; rank 0 alone writes the
checkpoint, which holds the unwrapped module, so 1-process and torchrun runs resume each other's
checkpoints. Modules with a ``begin_epoch(epoch, rank)`` method (the objectives' mask samplers) hear of
every epoch's start, so each rank can draw its own masks and still resume exactly.

The data loader (``methods.data_loading``) is built once, its workers persistent; a dataset with a
``tokens_on_device()`` method (``methods.batching``, ``methods.downstream.scene_batch``) hands its
tokenization to the training device when ``TrainSchedule.device_tokenization`` says so: its workers then
load, sample and augment, and the batch is tokenized on the device after the copy.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import io
import math
import pathlib
from collections.abc import Callable, Iterator, Mapping

import gin
import torch

from infra import distributed, progress, timing
from infra.cached_step import CachedStep, UnusableCacheFile
from infra.checks import check_choice, check_integer, check_number
from infra.errors import HarnessError
from methods.data_loading import EpochShuffle, training_loader

# Per-rank offset of the global seed of an epoch (drop-path): ranks see different data and should not
# draw the same noise; rank 0 keeps the single-process seed. Token masks come from the objectives' own
# generators (MaskSampler), told of each epoch and rank through ``begin_epoch``.
_RANK_SEED_STRIDE = 1_000_003


@gin.register
@dataclasses.dataclass(frozen=True)
class TrainSchedule:
    """Optimisation hyperparameters of one stage [prior: Point-MAE/Bridge3D pretraining, AdamW, cosine].

    Warm-up: ``warmup_epochs`` epochs of steps, unless ``warmup_fraction`` is set: then that fraction of all
    steps (rounded, at least 1), so a short schedule can warm up for less than one epoch.
    """

    epochs: int = 100
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 10
    grad_clip: float = 10.0  # max gradient L2 norm; 0 = no clipping
    num_workers: int = 0  # data-loader worker processes per training process (persistent)
    device: str = "auto"  # "auto" = cuda if available, else cpu; under torchrun "auto" or "cuda" (LOCAL_RANK's GPU)
    bf16: bool = True  # bf16 autocast, used on CUDA only
    warmup_fraction: float | None = None  # of all steps, in (0, 1); None = use warmup_epochs
    device_tokenization: bool | None = None  # tokens made on the device; None = on when it is CUDA [choice]

    # How fast or where a training computes, never what (tokens equal up to exact distance ties, items
    # independent of the workers): out of every cache key.
    SPEED_ONLY = ("num_workers", "device_tokenization")

    def warmup_steps(self, steps_per_epoch: int) -> int:
        """Warm-up length in optimiser steps (class docstring)."""
        if self.warmup_fraction is None:
            return self.warmup_epochs * steps_per_epoch
        return max(1, round(self.warmup_fraction * self.epochs * steps_per_epoch))

    def __post_init__(self):
        if self.warmup_fraction is not None and not 0.0 < self.warmup_fraction < 1.0:
            raise ValueError(f"TrainSchedule.warmup_fraction: expected a value in (0, 1) or None, "
                             f"got {self.warmup_fraction!r}")
        check_integer("TrainSchedule.epochs", self.epochs, 1)
        check_integer("TrainSchedule.batch_size", self.batch_size, 1)
        check_number("TrainSchedule.lr", self.lr, low=0.0, low_open=True)
        check_number("TrainSchedule.weight_decay", self.weight_decay, low=0.0)
        check_integer("TrainSchedule.warmup_epochs", self.warmup_epochs, 0)
        check_number("TrainSchedule.grad_clip", self.grad_clip, low=0.0)
        check_integer("TrainSchedule.num_workers", self.num_workers, 0)
        check_choice("TrainSchedule.bf16", self.bf16, (True, False))
        check_choice("TrainSchedule.device_tokenization", self.device_tokenization, (None, True, False))
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise ValueError(f"TrainSchedule.device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', "
                                 f"got {self.device!r}") from None

    def cache_state(self) -> dict:
        """What a training's result depends on (``infra.fingerprint``): every field but ``SPEED_ONLY``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in self.SPEED_ONLY}

    def resolve_device(self) -> torch.device:
        """The device this process trains on; under torchrun a GPU index is the launcher's (LOCAL_RANK)."""
        check_device_for_world(self.device, distributed.world_size())
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.device)
        if device.type == "cuda" and device.index is None and distributed.world_size() > 1:
            return torch.device("cuda", torch.cuda.current_device())
        return device

    def tokenizes_on_device(self, device: torch.device) -> bool:
        """Whether batches are tokenized on ``device`` (``device_tokenization``; None = on CUDA only)."""
        return device.type == "cuda" if self.device_tokenization is None else bool(self.device_tokenization)


def check_device_for_world(device: str, world: int) -> None:
    """Refuse a GPU index under torchrun: every rank would train on that one GPU (one line)."""
    if world > 1 and device.startswith("cuda:"):
        raise HarnessError(f"TrainSchedule.device = {device!r} under torchrun ({world} processes) would put every "
                           "rank on that GPU; use 'auto' or 'cuda' (each rank takes its LOCAL_RANK's GPU)")


def per_rank_batch(name: str, batch_size: int, world: int) -> int:
    """``batch_size`` (the global batch of step ``name``) split over ``world`` processes; one line if it cannot be."""
    if batch_size % world or batch_size < world:
        raise HarnessError(f"{name}: TrainSchedule.batch_size = {batch_size} (the global batch) is not divisible by "
                           f"the {world} torchrun processes; set it to a multiple of {world}")
    return batch_size // world


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up from 1/warmup to 1, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


_CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "history")


def checkpoint_step(path: pathlib.Path) -> CachedStep:
    """The cached step of a training checkpoint ``<cache>/<kind>/<key>/checkpoint.pt``: reported as
    ``<kind>/<key>``, claimed by a lock beside the checkpoint's folder (which then holds the checkpoint alone)."""
    return CachedStep(path, name=f"{path.parent.parent.name}/{path.parent.name}",
                      lock=path.parent.parent / f"{path.parent.name}.{path.stem}.lock",
                      what="checkpoint", redo="training from scratch")


def _decode_checkpoint(data: bytes) -> dict:
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or any(k not in state for k in _CHECKPOINT_KEYS) \
            or not isinstance(state["history"], list):
        raise UnusableCacheFile(f"not a training checkpoint (expected a dict with {', '.join(_CHECKPOINT_KEYS)})")
    return state


def load_checkpoint(path: pathlib.Path) -> dict | None:
    """The checkpoint at ``path``, or None if absent, changed since it was written (its checksum,
    ``infra.io``), unreadable or not a training checkpoint (then training starts afresh, with a warning).
    Its ``seconds`` are the training time of every invocation that wrote it."""
    found = checkpoint_step(path).load_with_record(_decode_checkpoint)
    if found is None:
        return None
    state, record = found
    state["seconds"] = float(record.get("seconds") or 0.0)
    return state


def _misfit(module: torch.nn.Module, saved) -> str | None:
    """Why ``saved`` cannot be loaded into ``module`` (missing, unexpected or reshaped keys), or None."""
    if not isinstance(saved, Mapping):
        return f"its model is a {type(saved).__name__}, not a state dict"
    own = module.state_dict()
    missing = sorted(k for k in own if k not in saved)
    unexpected = sorted(k for k in saved if k not in own)
    # extra states (e.g. a mask generator's) are not tensors: compare shapes where there are any
    reshaped = sorted(k for k in own
                      if k in saved and getattr(saved[k], "shape", None) != getattr(own[k], "shape", None))
    for what, keys in (("lacks", missing), ("has unexpected", unexpected), ("has reshaped", reshaped)):
        if keys:
            return f"it {what} keys {keys[:3]}{' ...' if len(keys) > 3 else ''} for this model"
    return None


def _fitting(module: torch.nn.Module, state: dict | None, path: pathlib.Path) -> dict | None:
    """``state`` if its model fits ``module``, else None with a warning (e.g. a checkpoint of another model)."""
    if state is None:
        return None
    problem = _misfit(module, state["model"])
    if problem is not None:
        print(f"warning: checkpoint {path} does not fit ({problem}); training from scratch")
        return None
    return state


# What ``train`` hands its arguments to instead of training, within ``recording_instead`` (a plan, ``bench.plan``).
_RECORDER: contextvars.ContextVar[Callable[..., list[dict[str, float]]] | None] = \
    contextvars.ContextVar("training_recorder", default=None)


@contextlib.contextmanager
def recording_instead(record: Callable[..., list[dict[str, float]]]) -> Iterator[None]:
    """Within the block, ``train`` trains nothing and reads no checkpoint: it calls ``record`` with its own
    arguments and returns what ``record`` returns, so a caller builds everything a training would use."""
    token = _RECORDER.set(record)
    try:
        yield
    finally:
        _RECORDER.reset(token)


def train(module: torch.nn.Module, dataset: torch.utils.data.Dataset, collate: Callable,
          schedule: TrainSchedule, checkpoint: pathlib.Path, seed: int,
          log: Callable[[dict[str, float], int], None] | None = None, name: str = "train",
          extra_state: dict | None = None, param_groups: list[dict] | None = None,
          epoch_hook: Callable[[int], dict[str, float]] | None = None) -> list[dict[str, float]]:
    """Train ``module`` (its ``forward(batch)`` returns a dict with a scalar ``loss``) and return the
    per-epoch mean of every returned value. Resumes from ``checkpoint`` if it exists; a finished
    checkpoint trains nothing (it is loaded into ``module``). ``dataset`` may have an ``epoch``
    attribute, set before each epoch. While one process trains a checkpoint, another one that wants
    the same checkpoint waits for it (``infra.locks``). Time goes to ``name`` in the run's profile,
    split into the phases of every step: data, forward, backward, optimizer. ``param_groups`` (each
    ``{"params": [...], "lr_scale": s}``) trains groups at ``s`` times the schedule's learning rate;
    None = every trainable parameter at 1. ``epoch_hook(epoch)`` (rank 0) adds values to an epoch's
    history after its steps, e.g. a learning curve's point (``methods.learning_curve``).
    """
    record = _RECORDER.get()
    if record is not None:
        return record(module, dataset, collate, schedule, checkpoint, seed, log=log, name=name,
                      extra_state=extra_state, param_groups=param_groups, epoch_hook=epoch_hook)
    device = schedule.resolve_device()
    module.to(device)
    clock = timing.Stopwatch()
    step = checkpoint_step(checkpoint)
    # Under torchrun only rank 0 claims the step: the others follow it through collectives, never through
    # the cache.
    with step.claim() if distributed.is_main() else contextlib.nullcontext(), timing.span(name):
        # under torchrun every rank loads the file rank 0 wrote
        state = _fitting(module, load_checkpoint(checkpoint), checkpoint)
        if state is not None and len(state["history"]) >= schedule.epochs:
            module.load_state_dict(state["model"])
            progress.step(name, f"cached ({schedule.epochs} epochs)")
            return list(state["history"])
        history, seconds = _train_epochs(module, dataset, collate, schedule, step, seed, log, name,
                                         extra_state, state, device, param_groups, epoch_hook)
    step.report(seconds)
    first = len(state["history"]) if state is not None else 0
    resumed = f" (resumed from the checkpoint of epoch {first})" if first else ""
    progress.step(name, f"trained epochs {first + 1}-{schedule.epochs} of {schedule.epochs}{resumed} "
                        f"in {progress.duration(clock.seconds)}")
    return history


def _train_epochs(module, dataset, collate, schedule: TrainSchedule, checkpoint: CachedStep, seed: int,
                  log, name: str, extra_state, state: dict | None, device: torch.device,
                  param_groups: list[dict] | None = None,
                  epoch_hook=None) -> tuple[list[dict[str, float]], float]:
    """The training epochs after those in ``state``; returns the history and the training seconds of
    every invocation so far (the checkpoint's record carries them on)."""
    clock = timing.Stopwatch()
    seconds = seconds_before = state["seconds"] if state is not None else 0.0
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [{"params": params}] if param_groups is None else \
        [{"params": g["params"], "lr": schedule.lr * g["lr_scale"]} for g in param_groups]
    # foreach: one fused call per update instead of one per tensor; bitwise the same updates on CPU.
    optimizer = torch.optim.AdamW(groups, lr=schedule.lr, weight_decay=schedule.weight_decay, foreach=True)
    world = distributed.world_size()
    batch_size = per_rank_batch(name, schedule.batch_size, world)
    sampler = EpochShuffle(len(dataset), seed, distributed.rank(), world)
    steps_per_epoch = math.ceil(len(sampler) / batch_size)
    total, warmup = schedule.epochs * steps_per_epoch, schedule.warmup_steps(steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warmup))
    history: list[dict[str, float]] = []
    if state is not None:
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = list(state["history"])
    model = _wrap(module, device) if world > 1 else module
    autocast = device.type == "cuda" and schedule.bf16
    finish = dataset.tokens_on_device() if schedule.tokenizes_on_device(device) and \
        hasattr(dataset, "tokens_on_device") else None
    loader = training_loader(dataset, collate, batch_size, sampler, schedule.num_workers, device, seed)
    phases = {phase: f"{name}{timing.PHASE_SEPARATOR}{phase}"
              for phase in ("data", "tokenize", "forward", "backward", "optimizer")}
    for epoch in range(len(history), schedule.epochs):
        # resumable: an epoch's randomness depends on its number (and the rank)
        torch.manual_seed(seed * 100_003 + epoch + _RANK_SEED_STRIDE * distributed.rank())
        # a new shuffle each epoch (seed + epoch); the items' epoch travels with their index into every worker
        sampler.set_epoch(epoch)
        for part in module.modules():
            if hasattr(part, "begin_epoch"):
                part.begin_epoch(epoch, distributed.rank())
        model.train()
        sums: dict[str, float] = {}
        batches = iter(progress.bar(loader, desc=f"{name} epoch {epoch + 1}/{schedule.epochs}")
                       if distributed.is_main() else loader)
        while True:
            with timing.span(phases["data"]):
                batch = next(batches, None)
                if batch is not None:
                    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            if batch is None:
                break
            if finish is not None:
                with timing.span(phases["tokenize"]):
                    batch = finish(batch)
            with timing.span(phases["forward"]), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                out = model(batch)
            with timing.span(phases["backward"]):
                optimizer.zero_grad(set_to_none=True)
                out["loss"].backward()
            with timing.span(phases["optimizer"]):
                if schedule.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, schedule.grad_clip)
                optimizer.step()
                scheduler.step()
            for key, value in out.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
        epoch_means = distributed.all_reduce_mean({k: v / max(1, len(loader)) for k, v in sums.items()})
        epoch_means["lr"] = scheduler.get_last_lr()[0]
        if epoch_hook is not None and distributed.is_main():
            # Scoring must not move the training's random streams: the weights are the same without it.
            with torch.random.fork_rng(devices=[]), timing.span("learning curves"):
                epoch_means.update(epoch_hook(epoch))
        history.append(epoch_means)
        seconds = seconds_before + clock.seconds  # what the checkpoint records, and the step reports
        if distributed.is_main():
            _save(checkpoint, module, optimizer, scheduler, history, extra_state, seconds)
        distributed.barrier()  # no rank goes on (and may read the checkpoint) before it is complete
        if log is not None:
            log({f"{name}/{k}": v for k, v in epoch_means.items()}, epoch)
    if world > 1:  # every rank ends with rank 0's module, BatchNorm statistics included (it evaluates with it)
        distributed.broadcast_module_state(module)
    return history, seconds


def _wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP around ``module`` (it broadcasts rank 0's parameters, so every rank starts identical).

    Every shipped objective gives every trainable parameter a gradient at every step (empty selections
    contribute ``x.sum() * 0``), so ``find_unused_parameters`` stays off.
    """
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=[index])
    if distributed.backend() == "nccl":
        raise HarnessError("TrainSchedule.device is 'cpu' but torchrun processes use nccl (CUDA); "
                           "use TrainSchedule.device = 'auto'")
    return torch.nn.parallel.DistributedDataParallel(module)


def _save(step: CachedStep, module, optimizer, scheduler, history, extra_state, seconds: float) -> None:
    buffer = io.BytesIO()
    torch.save({"model": module.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "history": history, **(extra_state or {})}, buffer)
    step.save(buffer.getvalue(), seconds)

"""What a plan measures on this machine: a training step of each kind and a scene's evaluation (the preparation
of frames: ``bench.plan_preparation``). Every figure comes from the real code path at the table's shapes:

- a training step: the model, objective, data set and optimiser groups a stage or spec builds
  (``bench.plan_capture``), a batch from its own data set and collate function (items of the epoch's
  shuffle, tokenized as in training), then forward, backward, gradient clipping and AdamW as
  ``methods.train`` runs them: two steps of one sample (a warm-up, then the cost of a sample), then up to
  three timed steps, their median kept; a step of one sample slower than half the budget is timed once
  (the paper's fine-tuning on a CPU: tens of seconds a sample, its one-off costs a small part of it). The
  timed batch is the per-rank batch, or fewer samples where three steps of the full batch would not fit
  the time budget or one would not fit half the free memory (``methods.step_memory``'s estimate); data and
  forward/backward are then scaled by per-rank batch / timed batch (a CPU step is linear in its samples; on
  a GPU this over-estimates), the optimiser step is not; then the checkpoint an epoch writes, once;
- evaluation: one evaluation scene through every task of a model's kind, twice where the first pass was
  quick (the second one is served by the segmentation neighbour memo, as a later model of the same seed is
  in a run).
"""
from __future__ import annotations

import dataclasses
import io
import math
import pathlib
import statistics
import time

import torch

from infra.io import write_cache_file
from infra.machine import available_memory_bytes
from infra.timing import Stopwatch
from methods.data_loading import EpochItems, EpochShuffle

MAX_TIMED_STEPS = 3


@dataclasses.dataclass
class StepTiming:
    """Seconds of one training step at the full per-rank batch, by part, and how they were measured."""

    data: float  # reading, sampling, augmenting, tokenizing and collating the batch
    forward_backward: float  # forward and backward (and tokens made on the device)
    optimiser: float  # clipping and the optimiser step, whatever the batch
    timed_batch: int
    per_rank_batch: int
    timed_steps: int
    checkpoint: float = 0.0  # what an epoch adds: its checkpoint (model, optimiser) serialised and written

    @property
    def compute(self) -> float:
        return self.forward_backward + self.optimiser

    def seconds(self, num_workers: int, fill: float = 1.0) -> float:
        """One step of ``fill`` x the per-rank batch: data then compute in one process; with data-loader
        workers the data is made ahead in ``num_workers`` processes, so the slower of the two sets the pace."""
        data, compute = self.data * fill, self.forward_backward * fill + self.optimiser
        return max(compute, data / num_workers) if num_workers > 0 else data + compute

    def epoch_seconds(self, samples: int, num_workers: int) -> tuple[int, float]:
        """(steps, seconds) of an epoch over ``samples`` (one rank's): its steps, a short last batch costing
        its share of the samples, and the epoch's checkpoint."""
        steps = max(1, math.ceil(samples / self.per_rank_batch))
        fill = samples / (steps * self.per_rank_batch)
        return steps, steps * self.seconds(num_workers, fill) + self.checkpoint

    @property
    def how(self) -> str:
        scaled = "" if self.timed_batch == self.per_rank_batch else \
            f", timed at batch {self.timed_batch} and scaled x{self.per_rank_batch / self.timed_batch:g}"
        return f"data {self.data:.3g} s + compute {self.compute:.3g} s a step ({self.timed_steps} timed{scaled})"


def time_training(call, per_rank: int, world: int, budget: float, memory_per_step: float | None,
                  scratch: pathlib.Path) -> StepTiming:
    """Time the captured training ``call`` (``bench.plan_capture.CapturedTraining``) as a rank of ``world``
    with ``per_rank`` samples a step, within about ``budget`` seconds; ``memory_per_step`` (bytes, the full
    per-rank batch) caps the timed batch at half the free memory. Its checkpoint is written once, as every
    epoch writes it (``infra.io.write_cache_file``), to a file in ``scratch`` (never the cache)."""
    schedule, dataset, module = call.schedule, call.dataset, call.module
    device = schedule.resolve_device()
    module.to(device)
    if call.param_groups is None:
        groups = [{"params": [p for p in module.parameters() if p.requires_grad]}]
    else:
        groups = [{"params": g["params"], "lr": schedule.lr * g["lr_scale"]} for g in call.param_groups]
    optimizer = torch.optim.AdamW(groups, lr=schedule.lr, weight_decay=schedule.weight_decay, foreach=True)
    params = [p for g in groups for p in g["params"]]
    finish = dataset.tokens_on_device() if schedule.tokenizes_on_device(device) and \
        hasattr(dataset, "tokens_on_device") else None
    for part in module.modules():
        if hasattr(part, "begin_epoch"):
            part.begin_epoch(0, 0)
    module.train()
    items, order = EpochItems(dataset), list(EpochShuffle(len(dataset), call.seed, 0, world))
    position = 0

    def step(batch_size: int) -> tuple[float, float, float]:
        nonlocal position
        clock = Busy(cpu=one_cpu_thread(device.type))
        keys = [order[(position + i) % len(order)] for i in range(batch_size)]
        position += batch_size
        batch = call.collate([items[key] for key in keys])
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        data = clock.lap()
        if finish is not None:
            batch = finish(batch)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and schedule.bf16):
            out = module(batch)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        _synchronize(device)
        forward_backward = clock.lap()
        if schedule.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, schedule.grad_clip)
        optimizer.step()
        _synchronize(device)
        return data, forward_backward, clock.lap()

    clock = Stopwatch()
    first = step(1)  # a warm-up: lazy initialisation, the allocator, the first kernels
    if first[0] + first[1] > budget / 2:  # a slow step: its one-off costs are a small part of it; timed once
        return StepTiming(first[0] * per_rank, first[1] * per_rank, first[2], 1, per_rank, 1,
                          _checkpoint_seconds(module, optimizer, scratch / f"{call.name.replace('/', '-')}.pt"))
    sample = step(1)  # a sample's cost, which sets the batch the budget allows
    batch = min(per_rank, max(1, int(budget / (MAX_TIMED_STEPS * max(1e-6, sample[0] + sample[1])))))
    free = available_memory_bytes(device.type)
    if memory_per_step and free:
        batch = min(batch, max(1, int(per_rank * 0.5 * free / memory_per_step)))
    timed = [sample] if batch == 1 else []  # a slow step is timed once, on one sample
    while len(timed) < MAX_TIMED_STEPS and (not timed or clock.seconds < budget):
        timed.append(step(batch))
    data, forward_backward, optimiser = (statistics.median(part) for part in zip(*timed))
    scale = per_rank / batch
    return StepTiming(data * scale, forward_backward * scale, optimiser, batch, per_rank, len(timed),
                      _checkpoint_seconds(module, optimizer, scratch / f"{call.name.replace('/', '-')}.pt"))


def _checkpoint_seconds(module, optimizer, path: pathlib.Path) -> float:
    """Seconds to serialise and write a checkpoint as ``methods.train`` does after every epoch."""
    clock = Stopwatch()
    buffer = io.BytesIO()
    torch.save({"model": module.state_dict(), "optimizer": optimizer.state_dict(), "history": []}, buffer)
    write_cache_file(path, buffer.getvalue(), 0.0)
    return clock.seconds


class Busy:
    """Seconds of work between laps: the wall clock's, or this thread's CPU time where that is less (the thread
    waited for a core that other processes held: a plan prices the work, not the machine's other load at the
    moment it is measured). ``cpu=False`` (work on a GPU, whose CPU thread only waits) keeps the wall clock."""

    def __init__(self, cpu: bool = True):
        self.cpu = cpu
        self._wall, self._thread = time.perf_counter(), time.thread_time()

    def lap(self) -> float:
        wall, thread = time.perf_counter(), time.thread_time()
        spent = min(wall - self._wall, thread - self._thread) if self.cpu else wall - self._wall
        self._wall, self._thread = wall, thread
        return spent


def one_cpu_thread(device: str) -> bool:
    """Whether work on ``device`` runs in the calling thread alone (the CPU with one torch thread): then that
    thread's CPU time is the work's (``Busy``)."""
    return device.startswith("cpu") and torch.get_num_threads() == 1


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclasses.dataclass
class EvaluationTiming:
    """Seconds of one evaluation scene for a model's tasks: with the segmentation neighbour memo cold and warm
    (the same where there is no memo: detection, or a model on a GPU), and the bytes the memo keeps a scene."""

    cold: float
    warm: float
    memo_bytes: float = 0.0


class _Predictor:
    """A fine-tuned model as the evaluation tasks ask for it (``predict_segmentation`` / ``predict_detection``)."""

    def __init__(self, spec, model, seed: int):
        self.spec, self.model, self.seed = spec, model, seed

    def predict_segmentation(self, scene):
        return self.spec.predict(self.model, scene, self.seed)

    def predict_detection(self, scene, head: str = ""):
        return self.spec.predict(self.model, scene, self.seed)


def time_evaluation(spec, model, task_factories, scene, seed: int, budget: float) -> EvaluationTiming:
    """One evaluation scene through the tasks that score ``spec``'s model; ``seed`` should be one no other
    measurement used (the neighbour memo is keyed by the sample it draws). A second pass, where the first was
    quick, gives the warm figure (its one-off costs gone, the memo's neighbours found)."""
    tasks = [task for task in (make() for make in task_factories) if task.key == spec.task_key]
    method = _Predictor(spec, model, seed)

    device = next(model.parameters()).device

    def once() -> float:
        clock = Busy(cpu=one_cpu_thread(device.type))
        for task in tasks:
            task.scene_record(method, scene)
        return clock.lap()

    cold = once()
    warm = once() if cold < budget / 2 else cold
    if spec.task_key != "seg" or device.type != "cpu":  # the memo serves segmentation on the CPU only
        return EvaluationTiming(warm, warm)
    neighbours = getattr(model, "k", 3)  # a point's token neighbours, an int64 index and a float32 weight each
    return EvaluationTiming(cold, warm, float(scene.num_points * neighbours * 12))

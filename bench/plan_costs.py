"""The seconds of every step of a plan: each kind of work measured once (``bench.plan_timing``), then scaled.

- scenes: the scenes left x one scene read (generated, for the synthetic benchmark), split over a torchrun's
  processes;
- preparation: the scenes left x one scene read + their frames x one frame's preparation, split over a
  torchrun's processes, + the models' loading once;
- groups: streaming the prepared frames twice (read back at the measured speed), the k-means fit and the
  assignment of every region, at the rate measured for the harness's k-means (``methods.region_groups``:
  200,000 x 768 features into 32 groups, 4 Lloyd iterations, 10 s on one thread); peak memory scaled from
  the groups step's measured +3.1 GB at that sample (``python -m bench.perf kmeans``), which is dominated by
  arrays of sample x feature size;
- training: epochs left x (steps per epoch x one step + one checkpoint), steps per epoch
  ``ceil(ceil(samples / world) / per-rank batch)`` as ``methods.train`` counts them;
- learning curves: the curve's due epochs left x its scenes x one evaluation scene of the model;
- evaluation: the evaluation scenes / world x one scene of each of the job's models, each segmentation model's
  neighbour search where the process's memo does not hold it (``bench.plan_schedule``).

A kind is what sets a step's cost: a stage's objective (without its re-weighting, which only changes weights),
tokenizer and batch; a fine-tuning spec's model, tokens and batch, and whether its encoder is frozen. Two rows
that differ elsewhere share the measurement; the number of samples is each step's own.
"""
from __future__ import annotations

import math
import pathlib
import tempfile
from concurrent.futures import ThreadPoolExecutor

import torch

from bench.plan_capture import StandInFrames, StandInScenes, captured_training
from bench.plan_preparation import frames_in_split, prepared_timing, read_scene, time_preparation
from bench.plan_steps import TableSteps
from bench.plan_timing import time_evaluation, time_training
from bench.workers import available_cores
from infra.fingerprint import fingerprint
from infra.progress import note_once
from methods.step_memory import RUNTIME_BYTES, SAFETY

# The harness's k-means (methods.region_groups docstring, measured 2026-12-07, one thread): 200,000 x 768
# features, 32 groups, converged in 4 Lloyd iterations in 10 s; the groups step peaked +3.1 GB over it.
KMEANS_DISTANCES_PER_SECOND = 4 * 200_000 * 768 * 32 / 10.0
KMEANS_ITERATIONS = 4
GROUPS_PEAK_BYTES_PER_VALUE = 3.1e9 / (200_000 * 768)
HEAVY_BYTES = 2**28  # activations a sample (``methods.step_memory``) above which a step is timed beside another


def stage_kind(stage, pretrain, per_rank: int) -> str:
    """What sets a pretraining step's cost (module docstring)."""
    objective = {k: v for k, v in vars(stage.objective).items() if not k.startswith("_") and k != "balancing"}
    schedule = stage.schedule
    return fingerprint(type(stage.objective).__name__, objective, stage.tokenizer, per_rank, schedule.device,
                       schedule.bf16, schedule.device_tokenization, pretrain.preparation.points_per_frame)


def spec_kind(spec, per_rank: int) -> str:
    """What sets a fine-tuning step's cost (module docstring)."""
    skip = ("schedule", "curve", "protocol", "encoder_lr_scale", "layer_decay", "head")
    state = {k: v for k, v in vars(spec).items() if not k.startswith("_") and k not in skip}
    schedule = spec.schedule
    return fingerprint(type(spec).__name__, state, spec.protocol.freeze_encoder, per_rank, schedule.device,
                       schedule.bf16, schedule.device_tokenization)


class Costs:
    """Measures each kind of work once, on demand, and prices the steps of a ``TableSteps``."""

    def __init__(self, dataset, train_split: str, eval_split: str, task_factories, world: int, budget: float):
        self.dataset, self.train_split, self.eval_split = dataset, train_split, eval_split
        self.task_factories, self.world, self.budget = task_factories, world, budget
        self.measured: dict[str, dict] = {}  # what was timed, for plan.json and the printout
        self._scenes: dict[str, tuple] = {}
        self._preparations: dict[str, object] = {}
        self._steps: dict[str, object] = {}
        self._seed = 1_000_003  # a seed per evaluation measurement, so none finds another's neighbours
        # Scratch, never the cache: the captured stages' and fine-tunings' folders (nothing is written there, their
        # training is captured) and the checkpoints timed.
        self._folder = tempfile.TemporaryDirectory(prefix="sam3d-plan-")

    def close(self) -> None:
        self._folder.cleanup()

    # --- what is measured

    def scene(self, split: str) -> tuple:
        """(first scene of ``split``, seconds to read it)."""
        if split not in self._scenes:
            self._scenes[split] = read_scene(self.dataset, split)
            self.measured[f"scene read {self.dataset.info.name}/{split}"] = {"seconds": self._scenes[split][1]}
        return self._scenes[split]

    def preparation(self, key: str, table: TableSteps):
        """The figures of preparation ``key``: from its scenes prepared already, else measured now."""
        if key not in self._preparations:
            preparation, dataset, split, _ = table.preparations[key]
            files = table.prepared[key]
            timed = prepared_timing(files, preparation) if files else \
                time_preparation(preparation, dataset, split, self.budget)
            self._preparations[key] = timed
            self.measured[f"preparation {dataset.info.name}/{split}"] = {
                "scene_read_seconds": timed.read_seconds, "frame_seconds": timed.frame_seconds,
                "first_frame_extra_seconds": timed.first_frame_extra, "frames_timed": timed.timed,
                "frames_skipped": timed.frames_skipped, "bytes_per_frame": timed.bytes_per_frame,
                "regions_per_frame": timed.regions_per_frame, "phases": timed.phases, "how": timed.how}
        return self._preparations[key]

    def measure(self, table: TableSteps) -> None:
        """Time every kind of training step the table's steps need (and the evaluation of each fine-tuning
        kind). Steps of large tensors (``HEAVY_BYTES`` of activations a sample) are timed side by side, one per
        CPU core, each on one core as a run's worker process is: their time is in torch's kernels, which run
        outside Python's lock. Smaller steps are Python-bound and are timed one at a time (two threads would
        queue on that lock, which the run's processes do not), and so is every step on a GPU."""
        evaluated: set[str] = set()  # the steps of jobs still to evaluate: their fine-tuned models are timed
        for job in table.jobs.values():
            if any(table.steps[key].kind == "evaluate" and table.steps[key].left for key in job):
                evaluated.update(job)
        tasks: dict[str, _StageTask] = {}
        for key, step in table.steps.items():
            if step.kind == "pretrain" and step.left:
                kind = self._kind(table, key)
                if kind not in tasks:
                    tasks[kind] = self._stage_task(table, key)
            elif step.kind == "finetune" and (step.left or key in evaluated):
                kind = self._kind(table, key)
                if kind not in tasks:
                    tasks[kind] = self._finetune_task(table, key)
                tasks[kind].train |= step.left > 0  # a model trained already is only evaluated
        light = [kind for kind in tasks if not tasks[kind].heavy or torch.cuda.is_available()]
        heavy = [kind for kind in tasks if kind not in light]
        results = {kind: tasks[kind]() for kind in light}
        threads = max(1, min(available_cores(), len(heavy)))
        with ThreadPoolExecutor(threads, initializer=torch.set_num_threads, initargs=(torch.get_num_threads(),)) \
                as pool:
            results.update(zip(heavy, pool.map(lambda kind: tasks[kind](), heavy)))
        for kind in tasks:  # recorded in a fixed order, whichever finished first
            self._steps[kind] = results[kind]
            tasks[kind].record(self, results[kind])

    def _kind(self, table: TableSteps, key: str) -> str:
        step = table.steps[key]
        if step.kind == "pretrain":
            stage, pretrain, _, _ = table.stages[key]
            return stage_kind(stage, pretrain, step.params["per_rank_batch"])
        return spec_kind(table.specs[key][0], step.params["per_rank_batch"])

    def _stage_task(self, table: TableSteps, key: str) -> _StageTask:
        """The training call of a stage, captured now (``bench.plan_capture``) on the prepared frames."""
        stage, pretrain, _, seed = table.stages[key]
        step = table.steps[key]
        preparation, _, _, data_key = table.preparations[step.params["prepare"]]
        timed = self.preparation(step.params["prepare"], table)
        frames = StandInFrames(timed.frames, self.frames(step.params["prepare"], table)[0], preparation.num_groups)
        with captured_training() as calls:
            stage.run(frames, data_key, pathlib.Path(self._folder.name), seed)
        call = next(c for c in calls if c.name == f"pretrain/{stage.name}")
        memory = stage.step_memory(preparation.points_per_frame, self.world).total
        return _StageTask(f"pretrain/{stage.name}", call, step.params["per_rank_batch"], self.world, self.budget,
                          memory, pathlib.Path(self._folder.name))

    def _finetune_task(self, table: TableSteps, key: str) -> _FinetuneTask:
        """The training call and model of a fine-tuning spec, captured now, with an evaluation scene."""
        spec, _, _, seed = table.specs[key]
        with captured_training() as calls:
            model, _ = spec.fit(None, "none", self.training_scenes(), self.dataset.info,
                                pathlib.Path(self._folder.name), seed)
        memory = spec.step_memory(self.dataset.info, self.world).total
        self._seed += 1
        return _FinetuneTask(f"finetune/{spec.metric_key}", calls[-1], table.steps[key].params["per_rank_batch"],
                             self.world, self.budget, memory, pathlib.Path(self._folder.name), spec, model,
                             self.task_factories, self.scene(self.eval_split)[0], self._seed)

    def stage_step(self, table: TableSteps, key: str):
        """The timing of a pretraining stage's step (``StepTiming``; ``measure`` made it)."""
        return self._steps[self._kind(table, key)]

    def finetune_step(self, table: TableSteps, key: str):
        """(step timing, evaluation timing) of a fine-tuning run (``measure`` made them)."""
        return self._steps[self._kind(table, key)]

    def training_scenes(self) -> StandInScenes:
        """The training split as a fine-tuning run sees it: its ids, each item the first scene."""
        scene, _ = self.scene(self.train_split)
        ids = [self.dataset.scene_id(self.train_split, i) for i in range(self.dataset.num_scenes(self.train_split))]
        return StandInScenes([scene], ids, pathlib.Path(self._folder.name) / "scenes" / self.train_split)

    def frames(self, prepare_key: str, table: TableSteps) -> tuple[int, str]:
        _, dataset, split, _ = table.preparations[prepare_key]
        return frames_in_split(dataset, split, self.preparation(prepare_key, table))

    # --- the price of each step

    def price(self, table: TableSteps) -> None:
        """Measure what ``table`` needs, then set ``seconds`` and the cost params of every step with work left."""
        self.measure(table)
        for key, step in table.steps.items():
            if step.kind == "evaluate":
                continue  # priced by job, after the fine-tunings it evaluates (price_evaluation)
            if step.left == 0:
                continue
            getattr(self, f"_price_{step.kind}")(table, key, step)
        for key, step in table.steps.items():
            if step.kind == "evaluate" and step.left:
                self._price_evaluate(table, key, step)

    def _price_scenes(self, table, key, step) -> None:
        _, seconds = self.scene(step.params["split"])
        step.seconds = step.left * seconds / self.world  # torchrun's processes split the scenes (file locks)
        step.cost = f"{seconds:.3g} s a scene"

    def _price_prepare(self, table, key, step) -> None:
        timed = self.preparation(key, table)
        frames, how = self.frames(key, table)
        frames_left = math.ceil(frames * step.left / step.total)
        # torchrun's processes split the scenes (file locks); each loads the models once
        step.seconds = (step.left * timed.read_seconds + frames_left * timed.frame_seconds) / self.world \
            + timed.first_frame_extra
        step.params.update(frames=frames, frames_left=frames_left, frames_counted=how,
                           disk_bytes=frames_left * timed.bytes_per_frame)
        step.cost = (f"{timed.frame_seconds:.3g} s a frame + {timed.read_seconds:.3g} s a scene read "
                     f"({timed.how}); {timed.bytes_per_frame / 2**20:.2f} MB a frame")

    def _price_groups(self, table, key, step) -> None:
        preparation = table.preparations[step.params["prepare"]][0]
        timed = self.preparation(step.params["prepare"], table)
        frames, _ = self.frames(step.params["prepare"], table)
        regions = frames * timed.regions_per_frame
        sample = min(preparation.max_kmeans_regions, regions)
        values = sample * timed.feature_dim * preparation.num_groups
        fit = KMEANS_ITERATIONS * values / KMEANS_DISTANCES_PER_SECOND
        assign = regions * timed.feature_dim * preparation.num_groups / KMEANS_DISTANCES_PER_SECOND
        stream = 2 * frames * timed.decode_seconds_per_frame
        step.seconds = fit + assign + stream
        step.params.update(regions=round(regions), sample=round(sample), feature_dim=timed.feature_dim,
                           peak_bytes=GROUPS_PEAK_BYTES_PER_VALUE * sample * timed.feature_dim)
        step.cost = (f"k-means of {sample:,.0f} x {timed.feature_dim} into {preparation.num_groups}: fit {fit:.3g} s, "
                     f"assign {regions:,.0f} regions {assign:.3g} s, read {stream:.3g} s")

    def _price_pretrain(self, table, key, step) -> None:
        self._price_training(step, self.stage_step(table, key), self.frames(step.params["prepare"], table)[0])

    def _price_finetune(self, table, key, step) -> None:
        timing, evaluation = self.finetune_step(table, key)
        spec = table.specs[key][0]
        self._price_training(step, timing, len(spec.protocol.scene_indices(self.training_scenes())))
        if spec.curve is not None:
            due = sum(spec.curve.due(epoch, step.total) for epoch in range(step.done, step.total))
            scenes = min(spec.curve.scenes, self.dataset.num_scenes(self.eval_split))
            curve = due * scenes * evaluation.warm
            step.seconds += curve
            step.params["curve_points"] = due
            step.cost += f"; learning curve {due} x {scenes} scenes {curve:.3g} s"

    def _price_training(self, step, timing, samples: int) -> None:
        steps_per_epoch, epoch = timing.epoch_seconds(math.ceil(samples / self.world), step.params["num_workers"])
        seconds = timing.seconds(step.params["num_workers"])
        step.seconds = step.left * epoch
        step.params.update(samples=samples, steps_per_epoch=steps_per_epoch, step_seconds=seconds,
                           epoch_seconds=epoch)
        step.cost = (f"{_count(step.left, 'epoch')} x {epoch:.3g} s ({_count(steps_per_epoch, 'step')} over "
                     f"{_count(samples, 'sample')}, "
                     f"{seconds:.3g} s a full batch: {timing.how}; checkpoint {timing.checkpoint:.2g} s)")

    def _price_evaluate(self, table, key, step) -> None:
        """Every model of the job on the evaluation scenes (a torchrun rank's share): ``seconds`` with the
        neighbour memo warm, and what each segmentation model's neighbour search adds where it is not
        (``bench.plan_schedule`` decides which)."""
        scenes = math.ceil(self.dataset.num_scenes(self.eval_split) / self.world)
        finetunes = [k for k in table.jobs[_job_of(table, key)] if table.steps[k].kind == "finetune"]
        warm = search = memo_bytes = 0.0
        uses = 0
        for finetune in finetunes:
            evaluation = self.finetune_step(table, finetune)[1]
            warm += evaluation.warm
            if evaluation.memo_bytes:
                uses += 1
                if uses == 1:  # the models of a job draw the same samples: one search serves them all
                    search, memo_bytes = max(0.0, evaluation.cold - evaluation.warm), evaluation.memo_bytes
        step.seconds = scenes * (warm + uses * search)  # none served by the memo (the simulation refines it)
        step.params.update(scenes=scenes, memo_search=scenes * search, memo_uses=uses, memo_bytes=scenes * memo_bytes,
                           warm_seconds=scenes * warm)
        step.cost = f"{scenes} scenes x {warm:.3g} s" + (f", + {search:.3g} s a scene for each segmentation model "
                                                          "whose neighbours are not in the memo" if search else "")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'s' if number != 1 else ''}"


def _job_of(table: TableSteps, key: str) -> tuple:
    return next(job for job, keys in table.jobs.items() if key in keys)


def torch_threads(threads: int) -> int:
    """Set torch's intra-op threads (the run's ``Experiment.torch_threads``); returns the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    return previous


class _StageTask:
    """Times a captured training call (in whichever thread runs it) and records what it measured."""

    def __init__(self, name: str, call, per_rank: int, world: int, budget: float, memory: float,
                 scratch: pathlib.Path):
        self.name, self.call, self.per_rank, self.world, self.budget, self.memory = \
            name, call, per_rank, world, budget, memory
        self.scratch = scratch
        self.heavy = (memory / SAFETY - RUNTIME_BYTES) / per_rank > HEAVY_BYTES
        self.train = True

    def __call__(self):
        return time_training(self.call, self.per_rank, self.world, self.budget, self.memory, self.scratch)

    def record(self, costs: Costs, timing) -> None:
        if timing is None:
            return
        costs.measured.setdefault(f"training step {self.name}", {
            "data_seconds": timing.data, "compute_seconds": timing.compute, "timed_batch": timing.timed_batch,
            "per_rank_batch": timing.per_rank_batch, "timed_steps": timing.timed_steps,
            "checkpoint_seconds": timing.checkpoint})
        if timing.timed_batch < timing.per_rank_batch:
            note_once(f"plan: {self.name} timed at batch {timing.timed_batch} of {timing.per_rank_batch} (time or "
                      "memory) and scaled linearly")


class _FinetuneTask(_StageTask):
    """A fine-tuning step's timing, then one evaluation scene of its model."""

    def __init__(self, name, call, per_rank, world, budget, memory, scratch, spec, model, task_factories, scene,
                 seed):
        super().__init__(name, call, per_rank, world, budget, memory, scratch)
        self.spec, self.model, self.task_factories, self.scene, self.seed = spec, model, task_factories, scene, seed
        self.train = False  # set where a step of this kind has epochs left

    def __call__(self):
        timing = super().__call__() if self.train else None
        return timing, time_evaluation(self.spec, self.model.eval(), self.task_factories, self.scene, self.seed,
                                       self.budget)

    def record(self, costs: Costs, result) -> None:
        timing, evaluation = result
        super().record(costs, timing)
        costs.measured[f"evaluation scene {self.spec.task_key} ({self.spec.metric_key})"] = {
            "cold_seconds": evaluation.cold, "warm_seconds": evaluation.warm}

"""The steps of a table as the runner would run them, each once, with its cache status read from disk.

A (row, seed) job of a ``FinetuneRow`` runs, in order: the training scenes' cache, the pretraining data
(prepared frames, then their k-means groups), each pretraining stage of its chain, each fine-tuning run (its
learning curve reads the evaluation scenes), the evaluation scenes' cache and the evaluation. Rows share
what has the same content key (a preparation, a stage, a fine-tuned model, a split's scenes), so a step is
listed once with every job that uses it. A job whose cached result is on disk runs nothing but that read.

The status of each step comes from the files alone (records, sizes, a checkpoint's history length): nothing
is locked, written or claimed, so a plan may run beside a table that is filling the same cache.
"""
from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Sequence

import torch

from bench.training_steps import step_name
from infra.io import read_cache_meta
from methods.finetune import FinetuneRow
from methods.pretrain import PretrainRow
from methods.train import per_rank_batch

DONE, PARTLY, TODO = "done", "partly done", "to do"


@dataclasses.dataclass
class PlanStep:
    """One step of the table: what it is, whether the cache has it, what it is set to, what it costs.

    ``done`` / ``total`` count its units (epochs, scenes); ``params`` are what a reader checks (epochs, batch,
    steps per epoch ...); ``cost`` names the measured kind its seconds come from (``bench.plan_timing``);
    ``seconds`` is the estimate of what is left, in one process (a torchrun rank's share for training)."""

    key: str
    kind: str  # scenes, prepare, groups, pretrain, finetune, evaluate
    label: str
    done: int = 0
    total: int = 1
    params: dict = dataclasses.field(default_factory=dict)
    jobs: list[str] = dataclasses.field(default_factory=list)
    cost: str = ""
    seconds: float = 0.0
    shared: bool = True  # processes that meet it split it (scenes, frames) rather than wait for one

    @property
    def status(self) -> str:
        if self.done >= self.total:
            return DONE
        return PARTLY if self.done > 0 else TODO

    @property
    def left(self) -> int:
        return max(0, self.total - self.done)

    def describe_status(self) -> str:
        unit = {"pretrain": "epochs", "finetune": "epochs", "scenes": "scenes", "prepare": "scenes"}.get(self.kind)
        return f"{PARTLY} ({unit} {self.done} of {self.total})" if self.status == PARTLY and unit else self.status


@dataclasses.dataclass
class TableSteps:
    """Every step once (by key, in first-use order) and each job's steps in the order it runs them."""

    steps: dict[str, PlanStep]
    jobs: dict[tuple[str, int], list[str]]
    specs: dict[str, tuple]  # finetune key -> (spec, row object, row name, seed)
    stages: dict[str, tuple]  # pretrain key -> (stage, PretrainRow, row name, seed)
    preparations: dict[str, tuple]  # prepare key -> (FramePreparation, dataset, split, data_key)
    prepared: dict[str, list[pathlib.Path]]  # prepare key -> the scene files already complete
    unplanned: list[str]  # rows of a kind the plan cannot take apart


def table_steps(rows: dict[str, object], jobs: Sequence[tuple[str, int]], context_of: Callable,
                world: int) -> TableSteps:
    """The steps of ``jobs`` (``(row, seed)`` in the runner's order) of the built ``rows``; ``context_of(row,
    seed)`` is the job's ``RowContext`` and ``world`` the torchrun processes planned for (whose batches
    ``bench.training_steps.check_batches`` has checked)."""
    table = TableSteps({}, {}, {}, {}, {}, {}, [])
    for row_name, seed in jobs:
        row, context = rows[row_name], context_of(row_name, seed)
        label = f"{row_name} seed={seed}"
        order: list[str] = []

        def add(step: PlanStep) -> PlanStep:
            kept = table.steps.setdefault(step.key, step)
            if step.key not in order:
                kept.jobs.append(label)
                order.append(step.key)
            return kept

        if isinstance(row, FinetuneRow):
            _finetune_job(table, add, row, row_name, context, world, label)
        elif isinstance(row, PretrainRow):
            _pretrain_steps(table, add, row, row_name, context, world)
        elif row_name not in table.unplanned:
            table.unplanned.append(row_name)
        table.jobs[(row_name, seed)] = order
    return table


def _finetune_job(table: TableSteps, add, row: FinetuneRow, row_name: str, context, world: int, label: str) -> None:
    evaluation = PlanStep(f"evaluate/{label}", "evaluate", f"evaluate {label}", shared=False,
                          done=int(context.has_cached_result(row.result_parts(context))))
    if evaluation.status == DONE:  # the runner answers the whole job from the row's cached result
        add(evaluation).params.update(note="cached result: no model is loaded")
        return
    add(_scenes_step(context, context.train_split))
    pretrain_key = "none"
    if row.pretrain is not None:
        _pretrain_steps(table, add, row.pretrain, row_name, context, world)
        pretrain_key = row.pretrain.key(context)
    scenes_key = context.scene_folder(context.train_split).name
    curve_key = context.scene_folder(context.eval_split).name
    specs = [s for s in (row.segmentation, row.detection, *row.detection_heads.values(), *row.protocols)
             if s is not None]
    for spec in specs:
        if spec.curve is not None:  # its learning curve reads the evaluation scenes
            add(_scenes_step(context, context.eval_split))
        key = spec.key(pretrain_key, scenes_key, context.seed, curve_key)
        folder = pathlib.Path(context.cache_root) / "finetune" / f"{spec.metric_key}-{key}"
        step = add(_training_step(f"finetune/{spec.metric_key}-{key}", "finetune",
                                  f"{step_name(spec)} {label}", spec.schedule, folder / "checkpoint.pt", world))
        table.specs.setdefault(step.key, (spec, row, row_name, context.seed))
    add(_scenes_step(context, context.eval_split))
    evaluation.params.update(models=", ".join(spec.metric_key for spec in specs))
    add(evaluation)


def _pretrain_steps(table: TableSteps, add, pretrain: PretrainRow, row_name: str, context, world: int) -> None:
    """The preparation, its groups and every stage of ``pretrain``'s chain, first stage first."""
    dataset = context.dataset if pretrain.dataset is None else pretrain.dataset  # as PretrainRow reads its frames
    split = context.train_split if pretrain.split is None else pretrain.split
    preparation = pretrain.preparation
    folder = preparation.cache_dir(dataset, split, context.cache_root)
    data_key = preparation.data_key(dataset, split, context.cache_root)
    scenes = dataset.num_scenes(split)
    files = [folder / "scenes" / f"{dataset.scene_id(split, i)}.npz" for i in range(scenes)]
    done = [path for path in files if _prepared_scene(path)]
    prepare = add(PlanStep(f"prepare/{folder.name}", "prepare", f"prepare {dataset.info.name}/{split}",
                           done=len(done), total=scenes))
    table.preparations.setdefault(prepare.key, (preparation, dataset, split, data_key))
    table.prepared.setdefault(prepare.key, done)
    groups_key = data_key[len(folder.name) + 1:]
    groups = folder / f"groups-k{preparation.num_groups}-{groups_key}.npz"
    add(PlanStep(f"groups/{data_key}", "groups", f"groups k={preparation.num_groups} of {dataset.info.name}/{split}",
                 done=int(groups.is_file() and read_cache_meta(groups) is not None), shared=False,
                 params={"prepare": prepare.key}))
    chain, stage = [], pretrain.stage
    while stage is not None:
        chain.insert(0, stage)
        stage = stage.previous
    for stage in chain:
        key = stage.key(data_key, context.seed)
        path = pathlib.Path(context.cache_root) / "stages" / f"{stage.name}-{key}" / "checkpoint.pt"
        step = add(_training_step(f"stages/{stage.name}-{key}", "pretrain",
                                  f"pretrain/{stage.name} seed={context.seed}", stage.schedule, path, world))
        step.params["prepare"] = prepare.key
        table.stages.setdefault(step.key, (stage, pretrain, row_name, context.seed))


def _scenes_step(context, split: str) -> PlanStep:
    folder = context.scene_folder(split)
    dataset = context.dataset
    ids = [dataset.scene_id(split, i) for i in range(dataset.num_scenes(split))]
    done = sum((folder / f"{scene_id}.npz").is_file() for scene_id in ids)
    return PlanStep(f"scenes/{folder.name}", "scenes", f"scenes {dataset.info.name}/{split}", done=done,
                    total=len(ids), params={"split": split})


def _training_step(key: str, kind: str, label: str, schedule, checkpoint: pathlib.Path, world: int) -> PlanStep:
    per_rank = per_rank_batch(label, schedule.batch_size, world)
    return PlanStep(key, kind, label, done=min(schedule.epochs, checkpoint_epochs(checkpoint)), total=schedule.epochs,
                    shared=False, params={"epochs": schedule.epochs, "batch": schedule.batch_size,
                                          "per_rank_batch": per_rank, "world_size": world,
                                          "num_workers": schedule.num_workers})


def checkpoint_epochs(path: pathlib.Path) -> int:
    """Epochs a training checkpoint holds (its history's length), read without loading its tensors; 0 when
    it is absent, of another size than recorded or unreadable (the run then trains from scratch)."""
    record = read_cache_meta(path)
    try:
        if record is None or path.stat().st_size != record.get("bytes"):
            return 0
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001  absent, truncated, not a checkpoint: what the run would train afresh
        return 0
    history = state.get("history") if isinstance(state, dict) else None
    return len(history) if isinstance(history, list) else 0


def _prepared_scene(path: pathlib.Path) -> bool:
    """Whether a scene's prepared file is complete (its size is the one recorded beside it)."""
    record = read_cache_meta(path)
    try:
        return record is not None and isinstance(record.get("frames"), list) and \
            path.stat().st_size == record.get("bytes")
    except FileNotFoundError:
        return False

"""Everything an experiment will use, checked before any work, each problem in one line.

``validate_rows`` builds every row: a component that cannot be built, a value its constructor refuses
(``infra.checks``) or an input file it reads when built (a SAM checkpoint, a DINOv2 directory) is a
one-line error naming the row and the parameter or file. It then checks that every split a row reads
has scenes (reading the dataset's split lists, so a wrong root fails here too), and warns when a token
would repeat most of its points (``group_size`` far above the points it is drawn from).
"""
from __future__ import annotations

import dataclasses
import inspect
import pathlib
from collections.abc import Callable, Iterator, Mapping

import numpy as np

from bench.config import describe_gin_error, did_you_mean
from infra.errors import DataError, HarnessError


def build_row(name: str, factory: Callable) -> object:
    """``factory()``, or a one-line HarnessError naming the row and (through gin) the parameter."""
    try:
        return factory()
    except Exception as e:  # gin passes constructors' errors through with the configurable's name
        raise HarnessError(describe_gin_error(e, source=f"row {name!r} cannot be built")) from None


def components(obj, _seen: set | None = None) -> Iterator[object]:
    """``obj`` and every object reachable from it through public attributes, lists, tuples and dicts."""
    seen = set() if _seen is None else _seen
    if id(obj) in seen or obj is None or isinstance(obj, (bool, int, float, str, bytes, pathlib.PurePath,
                                                          np.ndarray, np.generic, type)):
        return
    seen.add(id(obj))
    if isinstance(obj, (list, tuple, set)):
        values = list(obj)
    elif isinstance(obj, Mapping):
        values = list(obj.values())
    elif hasattr(obj, "__dict__") and not (inspect.isroutine(obj) or inspect.ismodule(obj)):
        if type(obj).__module__.startswith("torch"):  # built models hold nothing configured
            return
        yield obj
        values = [v for k, v in vars(obj).items() if not k.startswith("_")]
    else:
        return
    for value in values:
        yield from components(value, seen)


def validate_rows(rows: Mapping[str, Callable], dataset, train_split: str, eval_split: str) -> dict[str, object]:
    """Build and check every row (module docstring); returns row name -> built row."""
    from methods.pretrain import PretrainRow

    built = {name: build_row(name, factory) for name, factory in rows.items()}
    needed = {(id(dataset), train_split): (dataset, train_split, "the experiment's train split")}
    if any(not isinstance(row, PretrainRow) for row in built.values()):  # some row is evaluated
        needed[(id(dataset), eval_split)] = (dataset, eval_split, "the experiment's evaluation split")
    warnings: list[str] = []
    for name, row in built.items():
        for component in components(row):
            if isinstance(component, PretrainRow):
                source = (component.dataset or dataset, component.split or train_split)
                needed.setdefault((id(source[0]), source[1]), (*source, f"row {name!r} pretrains on its frames"))
        warnings += token_warnings(row)
    for source, split, why in needed.values():
        _check_split(source, split, why)
    for line in dict.fromkeys(warnings):
        print(f"warning: {line}")
    return built


def check_table(table, built: Mapping[str, object], dataset_name: str, task_factories):
    """``table`` (a ``TableSpec``) as this invocation can fill it; HarnessError in one line where it cannot.

    A table row the experiment does not run is a typo when it is close to a row that runs and that the table
    does not name (error, with the nearest name); otherwise the invocation runs a subset of the table's rows
    and the table leaves the others out (said once). The baseline row must run. Every column must be a
    metric some row reports (the rows' ``metric_keys`` with the experiment's tasks).
    """
    unknown = [row for row in table.rows if row not in built]
    for row in unknown:
        nearest = did_you_mean(row, [name for name in built if name not in table.rows])
        if nearest or row == table.baseline_row:
            raise HarnessError(f"TableSpec.rows: {row!r} is not a row of the experiment{nearest}; expected some "
                               f"of Experiment.rows {list(built)}"
                               + (" (the baseline row must run)" if row == table.baseline_row else ""))
    if unknown:
        print(f"note: the table leaves out {', '.join(map(repr, unknown))}, which this invocation does not run")
        table = dataclasses.replace(table, rows={k: v for k, v in table.rows.items() if k in built})
    tasks = [make_task() for make_task in task_factories]
    reported: set[str] = set()
    for row in built.values():
        if not hasattr(row, "metric_keys"):  # a row that does not say what it reports: nothing to check against
            return table
        reported |= row.metric_keys(dataset_name, tasks)
    unknown = [column for column in table.columns if column not in reported]
    if unknown:
        raise HarnessError(f"TableSpec.columns: no row reports {unknown[0]!r}{did_you_mean(unknown[0], reported)}; "
                           f"expected metric keys of the rows, e.g. {', '.join(sorted(reported)[:4])}")
    return table


def check_memory(built: Mapping[str, object], dataset, processes: int, world_size: int,
                 available: float | None) -> None:
    """HarnessError in one line when a training step of some row (``methods.step_memory``'s estimate) or the
    making of a scene would need more memory than each of the ``processes`` processes of this machine has
    (``available`` bytes, None = unknown: not checked), naming what holds the most."""
    if available is None:
        return
    budget = available / processes
    info = dataset.info
    _check_generation(dataset, budget, processes)
    worst = None
    for row_name, row in built.items():
        if hasattr(row, "step_memories"):
            for step, memory in row.step_memories(info, world_size).items():
                if memory.total > budget and (worst is None or memory.total > worst[2].total):
                    worst = (row_name, step, memory)
        for component in components(row):  # what makes the data (a dataset of the row's own, e.g. pretraining's)
            _check_generation(component, budget, processes)
            if hasattr(component, "preparation") and hasattr(component.preparation, "frame_memory"):
                source = getattr(component, "dataset", None) or dataset
                if hasattr(source, "image_hw"):  # frames of a known size: checked now (others at their first)
                    cpu = component.preparation.frame_memory(source.image_hw).get("cpu")
                    _check_bytes(*cpu, budget, processes)
    if worst is not None:
        row_name, step, memory = worst
        raise HarnessError(f"row {row_name!r}, {step}: one training step would hold about "
                           f"{memory.total / 2**30:.1f} GiB, most of it {memory.largest} "
                           f"({memory.parts[memory.largest] / 2**30:.1f} GiB), more than the {budget / 2**30:.1f} GiB "
                           f"this machine has free{_share(processes)}; lower that size or TrainSchedule.batch_size"
                           + (" or Experiment.workers" if processes > 1 else ""))


def _check_generation(dataset, budget: float, processes: int) -> None:
    """HarnessError in one line when ``dataset`` (a component with ``generation_memory``) would hold more
    than ``budget`` bytes while it makes a scene."""
    if not hasattr(dataset, "generation_memory"):
        return
    _check_bytes(*dataset.generation_memory(), budget, processes)


def _check_bytes(needed: float, what: str, budget: float, processes: int) -> None:
    if needed > budget:
        raise HarnessError(f"{what} would hold about {needed / 2**30:.1f} GiB, more than the {budget / 2**30:.1f} "
                           f"GiB this machine has free{_share(processes)}; lower it")


def _share(processes: int) -> str:
    return f" for each of the {processes} worker processes" if processes > 1 else ""


def _check_split(dataset, split: str, why: str) -> None:
    """DataError in one line unless ``split`` of ``dataset`` has at least one scene."""
    kind = type(dataset).__name__
    try:
        count = dataset.num_scenes(split)
    except HarnessError:
        raise
    except Exception as e:  # a reader's unknown split, missing list file...
        raise DataError(f"{kind}: cannot list the scenes of split {split!r} ({why}): {_first_line(e)}") from None
    if count < 1:
        setting = f" ({kind}.num_{split} = {count})" if hasattr(dataset, f"num_{split}") else ""
        raise DataError(f"{kind}: split {split!r} has no scene{setting}; expected at least one ({why})")


def token_warnings(row) -> list[str]:
    """Where a tokenizer's ``group_size`` is more than twice the points its tokens are drawn from, so
    that each token would repeat most of its points (``group_size`` points from at most that many)."""
    from methods.finetune import FinetuneRow
    from methods.pretrain import PretrainRow

    pairs = []  # (tokenizer, where it is set, points, where they are set)
    for component in components(row):
        if isinstance(component, PretrainRow):
            stage = component.stage
            while stage is not None:
                pairs.append((stage.tokenizer, f"{stage.name} stage", component.preparation.points_per_frame,
                              "FramePreparation.points_per_frame"))
                stage = stage.previous
        elif isinstance(component, FinetuneRow):
            for spec in (component.segmentation, component.detection):
                if spec is not None:
                    pairs.append((spec.tokenizer, type(spec).__name__, spec.num_points,
                                  f"{type(spec).__name__}.num_points"))
    lines = []
    for tokenizer, where, points, points_name in pairs:
        size = getattr(tokenizer, "group_size", None)
        if isinstance(size, int) and size > 2 * points:
            lines.append(f"{type(tokenizer).__name__}.group_size = {size} ({where}) but {points_name} = {points}: "
                         f"each token would repeat most of its {size} points (at most {points} are distinct)")
    return lines


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]

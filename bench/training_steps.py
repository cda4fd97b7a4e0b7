"""The training steps of a table's rows, checked against the world size before any work.

A row trains in pretraining stages (``PretrainStage``) and fine-tunings (the ``FinetuneSpec`` heads), each
with its ``TrainSchedule``; ``TrainSchedule.batch_size`` is the global batch, split over the torchrun
processes. On 2 nodes x 8 GPUs, a detection batch of 8 would otherwise fail after every pretraining stage
has run: here every step of every row is checked when the run starts, one line naming the step.
"""
from __future__ import annotations

from collections.abc import Mapping

from bench.validation import components
from infra.errors import HarnessError
from methods.train import TrainSchedule, check_device_for_world, per_rank_batch


def step_name(component) -> str:
    """How the training loop names the step of ``component`` (``pretrain/<stage>``, ``finetune/<task>``)."""
    if hasattr(component, "metric_key"):
        return f"finetune/{component.metric_key}"
    if hasattr(component, "name") and isinstance(component.name, str):
        return f"pretrain/{component.name}"
    return type(component).__name__


def training_steps(row) -> dict[str, TrainSchedule]:
    """Every training step ``row`` can run (step name -> its schedule), the chain before it included."""
    return {step_name(c): c.schedule for c in components(row) if isinstance(getattr(c, "schedule", None),
                                                                              TrainSchedule)}


def check_batches(built: Mapping[str, object], world: int) -> None:
    """HarnessError in one line for the first step of any row whose global batch does not split over ``world``
    processes, or whose device names one GPU under torchrun."""
    for row_name, row in built.items():
        for name, schedule in training_steps(row).items():
            try:
                check_device_for_world(schedule.device, world)
                per_rank_batch(name, schedule.batch_size, world)
            except HarnessError as e:
                raise HarnessError(f"row {row_name!r}, {e}") from None


def training_params(row, world: int) -> dict[str, str]:
    """Each step's world size, batch per process and learning rate, as a run's params. The global batch is
    the schedule's whatever the world size, so the effective learning rate is the schedule's: no scaling."""
    out: dict[str, str] = {}
    for name, schedule in training_steps(row).items():
        out[f"{name}/world_size"] = str(world)
        out[f"{name}/batch_per_rank"] = str(schedule.batch_size // world)
        out[f"{name}/effective_lr"] = repr(schedule.lr)
    return out

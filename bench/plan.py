"""``run_bench.py --plan``: every step of a table with its cache status, parameters and cost, and nothing trained.

The steps are the runner's, each once (``bench.plan_steps``); each kind of work is measured once on this
machine at the table's shapes and scaled to the step (``bench.plan_costs``); the jobs are scheduled on the
run's worker processes as the runner would hand them out (``bench.plan_schedule``), and the fixed parts of
a run are added:

- start-up: this process's own imports and config (``run_bench.py``'s, which a run pays the same);
- building and checking the rows (measured here, as the run does it);
- worker start-up: each worker process imports and parses what this one did, ``workers / cores`` of them
  at a time; the parent reaches MLflow meanwhile (its import, 2 s measured, README "Speed"), so the jobs
  start after the slower of the two;
- tables and plots after the last job: ``REPORT_SECONDS`` (measured on the demo, ``--profile``) when the
  table has a ``TableSpec``, and MLflow's final writes (``MLFLOW_WRITE_SECONDS``).

Device time is every step's seconds times the processes of a torchrun (each holds its device for the step,
the groups step's waiting ranks included). Not counted: per-job bookkeeping (keys, cached checkpoints read,
MLflow records; well under a second each on the demo), a torchrun's collectives, a GPU's gain from larger
batches than the timed one. ``plan.json`` in ``<results_dir>/<table>/`` holds what the printout shows: every
step's estimate, the measurements, ``device_seconds`` and ``total_seconds`` (wall time of the whole table).
"""
from __future__ import annotations

import pathlib
import platform
from collections.abc import Callable, Sequence

import torch

from bench.plan_costs import Costs, torch_threads
from bench.plan_schedule import SimStep, simulate
from bench.plan_steps import DONE, TableSteps, table_steps
from bench.workers import available_cores
from infra.io import atomic_write_json
from infra.machine import available_memory_bytes
from infra.timing import Stopwatch
from methods.downstream.segmentation import EVAL_NEIGHBOURS

STEP_BUDGET_SECONDS = 3.0  # measuring one kind of step, about (a larger batch is timed on fewer samples)
MLFLOW_IMPORT_SECONDS = 2.0  # the MLflow helper's import and store, measured (README "Speed")
MLFLOW_WRITE_SECONDS = 0.55  # a table's final writes and reads, measured (README "Speed")
REPORT_SECONDS = 3.0  # tables and plots of a table: 3.2 s in the demo's --profile on this machine (2 cores)


def make_plan(experiment, layout, built: dict, jobs: Sequence[tuple[str, int]], context_of: Callable,
              world: int, workers: int, setup_seconds: float, startup_seconds: float) -> dict:
    """Enumerate, price and schedule the table (module docstring); print it and write ``plan.json``.

    ``jobs`` are the runner's (row, seed) in its order, ``context_of(row, seed)`` their contexts, ``world``
    the torchrun processes planned for, ``workers`` the worker processes the run would use,
    ``setup_seconds`` what building and checking the rows took here and ``startup_seconds`` what this process's
    imports and config took. Returns what ``plan.json`` holds."""
    clock = Stopwatch()
    table = table_steps(built, jobs, context_of, world)
    costs = Costs(experiment.dataset, experiment.train_split, experiment.eval_split, experiment.tasks, world,
                  STEP_BUDGET_SECONDS)
    threads = torch_threads(experiment.torch_threads)
    try:
        costs.price(table)
    finally:
        torch_threads(threads)
        costs.close()
    sim_steps = {key: _sim_step(step) for key, step in table.steps.items()}
    cores = available_cores()
    worker_start = startup_seconds * max(1.0, workers / cores) if workers > 1 else 0.0
    jobs_start = startup_seconds + setup_seconds + max(worker_start, MLFLOW_IMPORT_SECONDS)
    jobs_end, spans, evaluations = simulate(jobs, table.jobs, sim_steps, workers, jobs_start,
                                            EVAL_NEIGHBOURS.cache.max_bytes)
    for key, seconds in evaluations.items():
        table.steps[key].seconds = seconds
    report = REPORT_SECONDS if experiment.table is not None else 0.0
    total = jobs_end + report + MLFLOW_WRITE_SECONDS
    plan = {
        "table": experiment.name, "profile": experiment.profile, "device": device_description(),
        "world_size": world, "workers": workers, "workers_setting": experiment.workers,
        "torch_threads": experiment.torch_threads,
        "steps": [_step_record(step) for step in table.steps.values()],
        "jobs": [{"row": row, "seed": seed, "steps": table.jobs[(row, seed)], "start_seconds": spans[(row, seed)][0],
                  "end_seconds": spans[(row, seed)][1]} for row, seed in jobs],
        "unplanned_rows": table.unplanned,
        "measured": costs.measured,
        "overheads_seconds": {"start-up": startup_seconds, "rows built and checked": setup_seconds,
                              "worker start-up": worker_start, "MLflow import": MLFLOW_IMPORT_SECONDS,
                              "tables and plots": report, "MLflow writes": MLFLOW_WRITE_SECONDS},
        "device_seconds": world * sum(step.seconds for step in table.steps.values()),
        "disk_bytes": sum(step.params.get("disk_bytes", 0.0) for step in table.steps.values()),
        "groups_peak_bytes": max([s.params.get("peak_bytes", 0.0) for s in table.steps.values()] or [0.0]),
        "total_seconds": total,
        "plan_seconds": clock.seconds,
    }
    print(render(plan, table, cores))
    path = layout.table_folder(experiment.name) / "plan.json"
    atomic_write_json(path, plan)
    print(f"\nplan: {path}")
    return plan


def _sim_step(step) -> SimStep:
    if step.kind != "evaluate" or not step.left:
        return SimStep(step.seconds, step.shared)
    seed = step.jobs[0].rsplit("=", 1)[-1]  # the memo's entries are those of the job's seed
    p = step.params
    return SimStep(p["warm_seconds"], memo=f"seed {seed}", memo_search=p["memo_search"], memo_uses=p["memo_uses"],
                   memo_bytes=p["memo_bytes"])


def _step_record(step) -> dict:
    return {"key": step.key, "kind": step.kind, "label": step.label, "status": step.describe_status(),
            "done": step.done, "total": step.total, "params": step.params, "cost": step.cost,
            "seconds": step.seconds, "jobs": step.jobs}


def device_description() -> str:
    """The device the steps were timed on: the GPU where torch sees one, else the CPU model and its cores."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA), torch {torch.__version__}"
    model = platform.processor() or "unknown CPU"
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {available_cores()} cores (CPU), torch {torch.__version__}"


def render(plan: dict, table: TableSteps, cores: int) -> str:
    """The printout: the steps (status, parameters, cost, seconds), the totals, what runs in parallel."""
    lines = [f"plan of {plan['table']} (profile {plan['profile']}), timed on {plan['device']}", "",
             f"{'step':<40} {'status':<31} {'parameters':<40} {'estimate':>9}"]
    said: set[str] = set()
    for step in table.steps.values():
        lines.append(f"{step.label[:40]:<40} {step.describe_status()[:31]:<31} {_params(step)[:40]:<40} "
                     f"{_duration(step.seconds):>9}")
        if step.cost and step.status != DONE and step.cost not in said:  # how it is priced, once per kind
            said.add(step.cost)
            lines.append(f"{'':<4}{step.cost}")
    if table.unplanned:
        lines.append("rows not taken apart (no steps to plan; their time is not counted): "
                     + ", ".join(table.unplanned))
    world, workers = plan["world_size"], plan["workers"]
    device_hours = plan["device_seconds"] / 3600
    lines += ["", "totals:",
              f"  device time {device_hours:.3g} device-hours ({_duration(plan['device_seconds'])}; every step's "
              f"seconds x {world} process{'es' if world > 1 else ''})",
              f"  wall time {_duration(plan['total_seconds'])} ({plan['total_seconds']:.0f} s), of which fixed: "
              + ", ".join(f"{k} {v:.1f} s" for k, v in plan["overheads_seconds"].items() if v),
              f"  disk for the preparation {plan['disk_bytes'] / 2**30:.3g} GiB; peak RAM of the groups step "
              f"+{plan['groups_peak_bytes'] / 2**30:.3g} GiB (free now: {_free_memory()})",
              "", "what runs in parallel:"]
    if world > 1:
        lines.append(f"  {world} torchrun processes (WORLD_SIZE): each trains on its share of every batch "
                     "(TrainSchedule.batch_size is global), prepares its share of the scenes and evaluates its "
                     "share of the scenes; rows and seeds run one after another")
    else:
        lines.append(f"  {workers} worker process{'es' if workers > 1 else ''} (Experiment.workers = "
                     f"{plan['workers_setting']!r}, {cores} cores, {plan['torch_threads']} torch "
                     f"thread{'s' if plan['torch_threads'] > 1 else ''} each): {len(plan['jobs'])} rows x seeds, "
                     "longest first; a step two jobs share is made once (the other waits on its lock), scenes "
                     "and frames are split between the processes that reach them")
    loaders = {s.params.get("num_workers", 0) for s in table.steps.values() if s.kind in ("pretrain", "finetune")}
    if any(loaders):
        lines.append(f"  data-loader workers per training process: {', '.join(map(str, sorted(loaders)))} "
                     "(TrainSchedule.num_workers): a step takes the slower of data / workers and compute")
    return "\n".join(lines)


def _params(step) -> str:
    p = step.params
    if step.kind in ("pretrain", "finetune"):
        text = f"{p['epochs']} ep, batch {p['batch']} ({p['per_rank_batch']}/rank)"
        steps = p.get("steps_per_epoch")
        return text + (f", {steps} step{'s' if steps != 1 else ''}/ep" if steps else "")
    if step.kind == "prepare":
        return (f"{p['frames']} frames, {step.total} scenes" if "frames" in p else f"{step.total} scenes")
    if step.kind == "groups":
        return f"sample {p['sample']:,} x {p['feature_dim']}" if "sample" in p else ""
    if step.kind == "scenes":
        return f"{step.total} scenes"
    if step.kind == "evaluate":
        return p.get("note") or f"{p.get('scenes', '')} scenes: {p.get('models', '')}"
    return ""


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _free_memory() -> str:
    free = available_memory_bytes("cpu")
    return "unknown" if free is None else f"{free / 2**30:.1f} GiB"


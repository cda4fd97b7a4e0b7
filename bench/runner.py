"""The experiment runner: rows x seeds, fitted on the train split, scored on the evaluation split.

Reads top to bottom: check where results go, build and validate every row (``bench.validation``: a bad
component, value or input file fails before any work), reach the tracking store (under a lock on the
results folder, so that two invocations starting at once share it; runs of a killed invocation are
marked KILLED there, ``bench.owners``), open the parent run, run every row and seed -- here, or in
parallel worker processes (``bench.workers``) -- each as its own child run, write the results folder
atomically, log it, print the summary. Under torchrun every rank runs the rows (training is sharded, see
``infra.distributed``); rank 0 alone evaluates, talks to MLflow and writes the results folder.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import gin

import bench.registry  # noqa: F401  every component a config can name (the Experiment builds them)
from bench import owners, summary, tables
from bench.config import config_bindings, parse_config_text
from bench.plan import make_plan
from bench.provenance import provenance_tags
from bench.results_layout import ResultsLayout
from bench.row_context import RowContext
from bench.tracking import NullRun, NullTracker, RecordingRun, Tracker, metric_safe, parent_run_name
from bench.training_steps import check_batches, training_params
from bench.validation import check_memory, check_table, components, validate_rows
from bench.workers import JobOutcome, WorkerPool, longest_first, resolve_workers
from datasets.scene_cache import CachedScenes
from infra import distributed, progress, startup, steps, timing
from infra.checks import check_integer
from infra.errors import HarnessError
from infra.io import atomic_write_json, atomic_write_text
from infra.locks import step_lock
from infra.machine import available_memory_bytes
from infra.seeding import seed_everything


@gin.configurable
class Experiment:
    """One benchmark invocation: an MLflow experiment with a parent run and a child run per row and seed.

    Args:
      name: MLflow experiment name (one per table/benchmark) and results sub-folder.
      dataset: the dataset object (e.g. ``@SyntheticIndoor()``); needs ``info`` and ``scenes(split)``.
      rows: row name -> row factory called as ``factory()``, giving an object with
        ``run(context: RowContext) -> metrics`` (e.g. ``@NonLearnedBaseline``, ``@stage2/PretrainRow``);
        the row's seed is ``context.seed``.
      tasks: task factories (e.g. ``[@SemanticSegmentationTask, @DetectionTask]``), one fresh task per run.
      seeds: how many seeds each row runs; seed i is ``base_seed + i``.
      tracking_uri: MLflow tracking URI; None = ``MLFLOW_TRACKING_URI`` or the embedded SQLite store.
      table: a ``TableSpec``: after the rows, the table is built from the MLflow runs (with the paper's
        numbers beside ours) and written with its plots into the results folder.
      profile: the profile's name (smoke / demo / paper), printed under tables.
      workers: processes that run rows and seeds in parallel: a number, or ``'auto'`` = one per
        ``torch_threads`` free CPU cores (1 on a GPU or under torchrun); 1 runs them in this process.
      torch_threads: torch's intra-op threads in every process [choice: 1, fastest for small models on
        few cores]. Thread counts change float summation order, so a table's cells depend on it; they
        do not depend on ``workers``.
    """

    def __init__(self, name: str = gin.REQUIRED, dataset=gin.REQUIRED,
                 rows: Mapping[str, Callable] = gin.REQUIRED, tasks: Sequence[Callable] = gin.REQUIRED,
                 seeds: int = 1, base_seed: int = 0, tracking_uri: str | None = None,
                 train_split: str = "train", eval_split: str = "val", table=None, profile: str = "custom",
                 workers: int | str = 1, torch_threads: int = 1):
        check_integer("Experiment.seeds", seeds, 1)
        check_integer("Experiment.base_seed", base_seed, 0)
        if not isinstance(rows, Mapping) or not rows:
            raise ValueError(f"Experiment.rows: expected a non-empty dict of row name -> row, got {rows!r}")
        if not isinstance(tasks, Sequence) or not tasks:
            raise ValueError(f"Experiment.tasks: expected a non-empty list of tasks, got {tasks!r}")
        for what, split in (("train_split", train_split), ("eval_split", eval_split)):
            if not isinstance(split, str) or not split:
                raise ValueError(f"Experiment.{what}: expected a split name, got {split!r}")
        if workers != "auto" and not (isinstance(workers, int) and workers >= 1):
            raise ValueError(f"Experiment.workers: expected an integer >= 1 or 'auto', got {workers!r}")
        if not (isinstance(torch_threads, int) and torch_threads >= 1):
            raise ValueError(f"Experiment.torch_threads: expected an integer >= 1, got {torch_threads!r}")
        self.workers = workers
        self.torch_threads = torch_threads
        self.name = name
        self.dataset = dataset
        self.rows = dict(rows)
        self.tasks = list(tasks)
        self.seeds = seeds
        self.base_seed = base_seed
        self.tracking_uri = tracking_uri
        self.train_split = train_split
        self.eval_split = eval_split
        self.table = table
        self.profile = profile
        self._notes: dict[str, str] = {}
        self._steps: dict[str, float] = {}  # the cached steps the rows used -> their compute seconds

    def run(self, results_dir: str | os.PathLike) -> pathlib.Path | None:
        """Run every row and seed; return the results folder of this invocation (None on torchrun
        ranks > 0, which write no results)."""
        # --- where results go, checked before any work (on rank 0 first: a failure there stops every
        #     torchrun rank with the same one-line message)
        with distributed.main_first():
            layout = ResultsLayout.at(results_dir)
        # --- every row is built and checked now (values, splits, input files), so that a bad one fails
        #     before any training
        built = validate_rows(self.rows, self.dataset, self.train_split, self.eval_split)
        check_batches(built, distributed.world_size())
        if self.table is not None:
            self.table = check_table(self.table, built, self.dataset.info.name, self.tasks)
        config_text = gin.config_str()
        jobs, to_compute = self._jobs(layout)
        self._cached = to_compute == 0  # every row answered from the result cache: the parent run says so
        accelerator = _uses_accelerator()
        # Rows answered from the result cache cost a file read: worker processes (each importing torch and
        # building the experiment) would only slow such a re-run down.
        workers = resolve_workers(self.workers, to_compute, self.torch_threads, accelerator,
                                  distributed.is_initialized())
        check_memory(built, self.dataset, 1 if accelerator else workers * distributed.local_world_size(),
                     distributed.world_size(), available_memory_bytes("cuda" if accelerator else "cpu"))
        threads = _set_torch_threads(self.torch_threads)
        # Workers start now, so their start-up overlaps reaching the tracking store; they get no job
        # before it is reached.
        pool = WorkerPool(workers, _start_worker, (config_text, self.torch_threads)) if workers > 1 else None
        with pool or contextlib.nullcontext():
            try:
                if not distributed.is_main():
                    with distributed.main_first():  # rank 0 reaches the tracking store first
                        pass
                    # Ranks > 0 train their share of every row; rank 0 alone evaluates, logs and writes results.
                    self._run_rows(NullTracker(), NullRun(self.name), layout, jobs, pool)
                    return None
                # The table's imports (pandas) are paid in a thread of their own while this one waits for
                # the MLflow helper process, which is a cached re-run's critical path: first to import
                # MLflow, then to write the runs.
                preloading = startup.import_in_background(tables.preload) if self.table is not None else None
                provenance = provenance_tags()
                with owners.Owner(layout) as owner:
                    with distributed.main_first():
                        tracker, uri = self._connect(layout, owner)
                    # Every status is written before the owner's lock is let go (bench.owners).
                    try:
                        final = self._run_with_results(tracker, uri, layout, config_text, jobs, pool,
                                                       provenance, preloading)
                    except BaseException:
                        with contextlib.suppress(Exception):  # the error in flight says more
                            tracker.flush()
                        raise
                    tracker.flush()
                    return final
            finally:
                _set_torch_threads(threads)

    def prepare(self, results_dir: str | os.PathLike, shard: tuple[int, int] | None = None) -> int:
        """Prepare the pretraining data of every row (each preparation once) and train nothing; with
        ``shard = (i, n)`` only the scenes of index i modulo n and no groups. Every process of a torchrun
        or an array job may run this on one results folder: they split the scenes by file locks. Returns
        how many preparations it went through."""
        layout = ResultsLayout.at(results_dir)
        built = validate_rows(self.rows, self.dataset, self.train_split, self.eval_split)
        done: set[str] = set()
        for row, made in built.items():
            context = self._context(row, self.base_seed, layout, NullRun())
            for part in components(made):
                if hasattr(part, "prepare_data") and (key := part.data_key(context)) not in done:
                    done.add(key)
                    part.prepare_data(context, shard)
        where = f"shard {shard[0]} of 0..{shard[1] - 1}" if shard else "every scene and the groups"
        print(f"prepared {len(done)} pretraining data set{'s' if len(done) != 1 else ''} ({where}) under "
              f"{layout.cache / 'prepare'}" + ("; a --prepare without --shard after every shard makes the "
                                             "groups" if shard else ""), flush=True)
        return len(done)

    def plan(self, results_dir: str | os.PathLike, startup_seconds: float = 0.0) -> dict:
        """Print every step of the table with its cache status, parameters and estimated cost, and write it to
        ``<results_dir>/<name>/plan.json`` (``bench.plan``); nothing is trained, cached or logged. It plans for
        torchrun's ``WORLD_SIZE`` processes (1 without it) and checks their batches as a run would.
        ``startup_seconds``: what this process took to import and parse its config, which a run pays too."""
        clock = timing.Stopwatch()
        layout = ResultsLayout.at(results_dir)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        built = validate_rows(self.rows, self.dataset, self.train_split, self.eval_split)
        check_batches(built, world)
        if self.table is not None:
            self.table = check_table(self.table, built, self.dataset.info.name, self.tasks)
        jobs, to_compute = self._jobs(layout)
        workers = resolve_workers(self.workers, to_compute, self.torch_threads, _uses_accelerator(), world > 1)
        return make_plan(self, layout, built, jobs, lambda row, seed: self._context(row, seed, layout, NullRun()),
                         world, workers, clock.seconds, startup_seconds)

    def _connect(self, layout: ResultsLayout, owner: owners.Owner) -> tuple[Tracker, str]:
        """Reach the tracking store (also checked before any work) and end the runs of killed invocations.

        The embedded store under a lock on the results folder: two invocations starting at once on a
        fresh folder would otherwise both create its database (and the experiment) and one would fail.
        The second waits for the first to have done so, then both proceed, sharing the cached steps.
        """
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or layout.tracking_uri
        embedded = uri == layout.tracking_uri
        if embedded and (warning := layout.store_warning(distributed.world_size() > distributed.local_world_size())):
            print(warning, flush=True)
        tracker = Tracker(uri, self.name, artifact_root=layout.artifacts if embedded else None, run_tags=owner.tags)
        with step_lock(layout.mlflow_lock) if embedded else contextlib.nullcontext():
            tracker.connect()
            for line in owners.sweep(tracker.store, owner):
                print(line, flush=True)
        return tracker, uri

    def _run_with_results(self, tracker: Tracker, uri: str, layout: ResultsLayout, config_text: str,
                          jobs: list[tuple[str, int]], pool, provenance: Mapping[str, str],
                          preloading: threading.Thread | None) -> pathlib.Path:
        started, self._steps = time.time(), {}
        # --- parent run; everything is written to a staging folder renamed into place at the end
        tags = {**provenance, "dataset": self.dataset.info.name, "seeds": str(self.seeds),
                "base_seed": str(self.base_seed), "world_size": str(distributed.world_size()),
                "torch_threads": str(self.torch_threads)}
        with tracker.run(parent_run_name(self.name, self.profile, self._cached, started), tags=tags) as parent:
            stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{parent.run_id[:8]}"
            final = layout.table_folder(self.name) / stamp
            staging = final.with_name(f".{stamp}.partial")
            try:
                # The staging tag comes first: the next invocation removes the folder if this one is killed.
                parent.log_batch(params=config_bindings(config_text), tags={owners.STAGING_TAG: str(staging)})
                atomic_write_text(staging / "config.gin", config_text)
                records = self._run_rows(tracker, parent, layout, jobs, pool)
                with timing.span("tables and plots"):
                    if self.table is None:
                        self._log_operative_config(staging, config_text, parent)
                    else:
                        self._write_report(staging, tracker.store, parent, config_text, preloading, layout,
                                           time.time() - started, sum(self._steps.values()))
                    self._write_results(staging, records, parent)
                os.replace(staging, final)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        print(f"\nresults: {final}\nmlflow:  {tracker.where(parent.run_id)}")
        return final

    def _jobs(self, layout: ResultsLayout) -> tuple[list[tuple[str, int]], int]:
        """Every (row, seed), longest first (``bench.workers.longest_first``) where rows name their steps,
        and how many of them are not answered from the result cache (rows with ``result_parts``)."""
        jobs = [(row, seed) for row in self.rows for seed in range(self.base_seed, self.base_seed + self.seeds)]
        steps, cached = {}, 0
        for row, seed in jobs:
            made = self.rows[row]()
            context = self._context(row, seed, layout, NullRun())
            if hasattr(made, "step_keys"):
                steps[(row, seed)] = made.step_keys(context)
            if hasattr(made, "result_parts") and context.has_cached_result(made.result_parts(context)):
                cached += 1
        return longest_first(jobs, steps), len(jobs) - cached

    def _context(self, row: str, seed: int, layout: ResultsLayout, run, notes=None) -> RowContext:
        return RowContext(row, seed, self.dataset, self.train_split, self.eval_split, self.tasks,
                          cache_root=layout.cache, row_results=layout.row_results, tracking_run=run,
                          notes={} if notes is None else notes)

    def _run_rows(self, tracker: Tracker | NullTracker, parent, layout: ResultsLayout,
                  jobs: list[tuple[str, int]], pool: WorkerPool | None) -> list[dict]:
        """Every (row, seed) as a child run of ``parent``; records in table order whatever ran first."""
        table = progress.TableProgress(self.name, len(jobs), pool.workers if pool else 1)
        outcomes: dict[tuple[str, int], JobOutcome] = {}
        if pool is None:
            for row, seed in jobs:
                with tracker.run(f"{row} seed={seed}", tags={"row": row, "seed": str(seed)}, parent=parent) as child:
                    outcome = self.run_job(row, seed, layout)
                    outcome.recording.replay_into(child)
                outcome.recording.run_id = child.run_id
                outcomes[(row, seed)] = outcome
                self._steps.update(outcome.steps)
                table.finished(outcome.label, outcome.seconds)
        else:
            print(f"{self.name}: {len(jobs)} rows x seeds in {pool.workers} worker processes "
                  f"({self.torch_threads} torch thread{'s' if self.torch_threads > 1 else ''} each)", flush=True)
            handed_out = pool.run([(row, seed, layout) for row, seed in jobs])
            for outcome in _timed(handed_out, "waiting for worker processes"):
                timing.merge(outcome.timings)
                self._steps.update(outcome.steps)
                tags = {"row": outcome.row, "seed": str(outcome.seed)}
                if outcome.error_type:
                    tracker.replay(outcome.recording, {**tags, "error": outcome.error[:500]}, parent,
                                   outcome.start_time_ms or int(time.time() * 1000), int(time.time() * 1000),
                                   status="FAILED")
                    _raise_worker_error(outcome)
                child = tracker.replay(outcome.recording, tags, parent, outcome.start_time_ms, outcome.end_time_ms)
                outcome.recording.run_id = child.run_id
                outcomes[(outcome.row, outcome.seed)] = outcome
                table.finished(outcome.label, outcome.seconds)
        in_table_order = [(row, seed) for row in self.rows for seed in range(self.base_seed, self.base_seed + self.seeds)]
        for job in in_table_order:  # notes in table order, so they do not depend on which job finished first
            for key, value in outcomes[job].notes.items():
                self._notes.setdefault(key, value)
        return [{"row": row, "seed": seed, "run_id": outcomes[(row, seed)].recording.run_id,
                 "metrics": outcomes[(row, seed)].metrics} for row, seed in in_table_order]

    def run_job(self, row: str, seed: int, layout: ResultsLayout) -> JobOutcome:
        """Run one row with one seed in this process; its MLflow logging is recorded, not yet written."""
        recording = RecordingRun(f"{row} seed={seed}")
        recording.log_params({"row": row, "seed": seed})
        started, clock = time.time(), timing.Stopwatch()
        seed_everything(seed)  # for rows that draw from the global generators; steps seed themselves
        notes: dict[str, str] = {}
        context = self._context(row, seed, layout, recording, notes)
        built = self.rows[row]()
        recording.log_params(training_params(built, distributed.world_size()))
        with progress.job(f"{row} seed={seed}"), steps.collecting() as used:
            metrics = built.run(context)
        recording.log_metrics(metrics)
        return JobOutcome(row, seed, recording, dict(metrics), notes, int(started * 1000), int(time.time() * 1000),
                          clock.seconds, steps=used)

    def _write_report(self, folder: pathlib.Path, store, parent, config_text: str, preloading: threading.Thread,
                      layout: ResultsLayout, wall_time_s: float, compute_s: float) -> None:
        """The table and its plots, read back from the store; the operative config is logged in between."""
        from bench import report  # matplotlib and pandas: paid only by runs that build a table

        inputs = report.read_report_inputs(store, self.table, parent.run_id)
        # Sent after the reads: the MLflow helper writes them while this process builds the table.
        self._log_operative_config(folder, config_text, parent)
        preloading.join()
        info = self.dataset.info
        seeds = list(range(self.base_seed, self.base_seed + self.seeds))
        convention = report.conventions(self.profile, seeds, info, self._notes, wall_time_s, compute_s)
        counts = report.class_point_counts(CachedScenes(self.dataset, self.train_split, layout.cache),
                                           info.seg_classes)
        report.render_report(folder, self.table, inputs, counts, convention,
                             figure_cache=layout.figure_cache)
        print("\n" + (folder / f"{self.table.name}.md").read_text())

    def _log_operative_config(self, folder: pathlib.Path, config_text: str, parent) -> None:
        """The operative config as a file and as the parent run's params (those the config did not set)."""
        operative = gin.operative_config_str()
        atomic_write_text(folder / "operative_config.gin", operative)
        logged = config_bindings(config_text)
        parent.log_params({k: v for k, v in config_bindings(operative).items() if k not in logged})

    def _write_results(self, folder: pathlib.Path, records: list[dict], parent) -> None:
        atomic_write_json(folder / "metrics.json", {"experiment": self.name, "runs": records})
        table = summary.markdown_table(records, self.dataset.info.name)
        atomic_write_text(folder / "summary.md", table)
        if self.table is None:  # a table run has printed its table already
            print("\n" + table)
        main = summary.main_metrics(records)
        parent.log_metrics({f"{metric_safe(row)}/{key}": summary.finite_mean(values) for (row, key), values in main.items()})
        parent.log_artifacts(folder)


def _timed(items, kind: str):
    """``items``, with the time spent waiting for each one charged to ``kind``."""
    iterator = iter(items)
    while True:
        with timing.span(kind):
            item = next(iterator, _END)
        if item is _END:
            return
        yield item


_END = object()


def _raise_worker_error(outcome: JobOutcome) -> None:
    if outcome.harness_error:
        raise HarnessError(outcome.error)
    raise RuntimeError(f"row {outcome.row!r} seed {outcome.seed} failed in a worker process "
                       f"({outcome.error_type}: {outcome.error}); its traceback:\n{outcome.error_traceback}")


def _set_torch_threads(threads: int) -> int:
    """Set torch's intra-op threads; returns the previous count."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    return previous


def _uses_accelerator() -> bool:
    import torch

    return torch.cuda.is_available()


# --- what a worker process runs (``bench.workers``): the experiment of the parent's config, job by job

def _start_worker(config_text: str, threads: int) -> Callable[[str, int, ResultsLayout], JobOutcome]:
    """Parse the parent's whole config, build the same ``Experiment``, set the thread count; its
    ``run_job`` then runs the jobs the pool hands out."""
    import torch

    torch.set_num_threads(threads)
    parse_config_text(config_text)
    return Experiment().run_job

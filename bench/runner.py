"""The experiment runner: rows x seeds, fitted on the train split, scored on the evaluation split.

Reads top to bottom: check where results go, reach the tracking store, open the parent run, run every
row and seed in its own child run, write the results folder atomically, log it, print the summary.
Under torchrun every rank runs the rows (training is sharded, see ``bench.distributed``); rank 0 alone
evaluates, talks to MLflow and writes the results folder.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin
from tqdm import tqdm

from bench import distributed, report, summary
from bench.config import config_bindings
from bench.io import atomic_write_json, atomic_write_text, check_writable_dir
from bench.provenance import provenance_tags
from bench.seeding import seed_everything
from bench.tracking import NullRun, NullTracker, RunHandle, Tracker, metric_safe, resolve_tracking_uri
from datasets.scene_cache import CachedScenes


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
    """

    def __init__(self, name: str = gin.REQUIRED, dataset=gin.REQUIRED,
                 rows: Mapping[str, Callable] = gin.REQUIRED, tasks: Sequence[Callable] = gin.REQUIRED,
                 seeds: int = 1, base_seed: int = 0, tracking_uri: str | None = None,
                 train_split: str = "train", eval_split: str = "val", table=None, profile: str = "custom"):
        if seeds < 1:
            raise ValueError(f"Experiment.seeds must be >= 1, got {seeds}")
        if not rows:
            raise ValueError("Experiment.rows is empty: give at least one row")
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

    def run(self, results_dir: str | os.PathLike) -> pathlib.Path | None:
        """Run every row and seed; return the results folder of this invocation (None on torchrun
        ranks > 0, which write no results)."""
        # --- where results go, and the tracking store: both checked before any work (on rank 0 first:
        #     a failure there stops every torchrun rank with the same one-line message)
        with distributed.main_first():
            results_dir = check_writable_dir(results_dir)
            uri = resolve_tracking_uri(self.tracking_uri, results_dir)
            embedded = self.tracking_uri is None and "MLFLOW_TRACKING_URI" not in os.environ
            tracker = (Tracker(uri, self.name, artifact_root=results_dir / "mlartifacts" if embedded else None)
                       if distributed.is_main() else NullTracker())
            tracker.connect()
        if not distributed.is_main():
            # Ranks > 0 train their share of every row; rank 0 alone evaluates, logs and writes results.
            self._run_rows(tracker, NullRun(self.name), results_dir)
            return None
        config_text = gin.config_str()
        started = time.time()

        # --- parent run; everything is written to a staging folder renamed into place at the end
        tags = {**provenance_tags(), "dataset": self.dataset.info.name, "seeds": str(self.seeds),
                "base_seed": str(self.base_seed), "world_size": str(distributed.world_size())}
        with tracker.run(f"{self.name}", tags=tags) as parent:
            stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{parent.run_id[:8]}"
            final = results_dir / self.name / stamp
            staging = final.with_name(f".{stamp}.partial")
            try:
                parent.log_params(config_bindings(config_text))
                atomic_write_text(staging / "config.gin", config_text)
                records = self._run_rows(tracker, parent, results_dir)
                if self.table is not None:
                    self._write_report(staging, uri, parent.run_id, results_dir, time.time() - started)
                self._write_results(staging, records, config_text, parent)
                os.replace(staging, final)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        print(f"\nresults: {final}\nmlflow:  {uri} (experiment {self.name!r}, run {parent.run_id})")
        return final

    def _run_rows(self, tracker: Tracker | NullTracker, parent, results_dir: pathlib.Path) -> list[dict]:
        records = []
        for row, factory in self.rows.items():
            for seed in range(self.base_seed, self.base_seed + self.seeds):
                with tracker.run(f"{row} seed={seed}", tags={"row": row, "seed": str(seed)}, parent=parent) as child:
                    child.log_params({"row": row, "seed": seed})
                    print(f"[{row} seed={seed}]")
                    seed_everything(seed)
                    context = RowContext(row, seed, self.dataset, self.train_split, self.eval_split,
                                         self.tasks, results_dir / "cache", child, self._notes)
                    metrics = factory().run(context)
                    child.log_metrics(metrics)
                records.append({"row": row, "seed": seed, "run_id": child.run_id, "metrics": metrics})
        return records

    def _write_report(self, folder: pathlib.Path, uri: str, parent_run_id: str, results_dir: pathlib.Path,
                      wall_time_s: float) -> None:
        info = self.dataset.info
        seeds = list(range(self.base_seed, self.base_seed + self.seeds))
        convention = report.conventions(self.profile, seeds, info, self._notes, wall_time_s)
        counts = report.class_point_counts(CachedScenes(self.dataset, self.train_split, results_dir / "cache"),
                                           info.seg_classes)
        report.write_report(folder, self.table, uri, parent_run_id, counts, convention)
        print("\n" + (folder / f"{self.table.name}.md").read_text())

    def _write_results(self, folder: pathlib.Path, records: list[dict], config_text: str, parent) -> None:
        operative = gin.operative_config_str()
        atomic_write_text(folder / "operative_config.gin", operative)
        atomic_write_json(folder / "metrics.json", {"experiment": self.name, "runs": records})
        table = summary.markdown_table(records, self.dataset.info.name)
        atomic_write_text(folder / "summary.md", table)
        if self.table is None:  # a table run has printed its table already
            print("\n" + table)
        logged = config_bindings(config_text)
        parent.log_params({k: v for k, v in config_bindings(operative).items() if k not in logged})
        for path in sorted(folder.iterdir()):
            parent.log_artifact(path)
        main = summary.main_metrics(records)
        parent.log_metrics({f"{metric_safe(row)}/{key}": summary.finite_mean(values) for (row, key), values in main.items()})


@dataclasses.dataclass
class RowContext:
    """What a row needs to run: the data, its seed, where caches go, and its MLflow child run.

    A row is any object built as ``factory()`` with ``run(context) -> metrics``; it draws its
    randomness from ``seed`` (the runner has also seeded every global generator with it).
    """

    row: str
    seed: int
    dataset: Any
    train_split: str
    eval_split: str
    task_factories: Sequence[Callable]
    cache_root: pathlib.Path
    tracking_run: RunHandle | NullRun
    notes: dict[str, str] = dataclasses.field(default_factory=dict)  # e.g. teacher / masks, for tables

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log intermediate values (e.g. loss curves) to the row's child run."""
        self.tracking_run.log_metrics(metrics, step)

    def scenes(self, split: str) -> CachedScenes:
        """The whole scenes of ``split`` (points, labels, boxes; no frames), cached on disk.

        Under torchrun every rank calls this at the same point: rank 0 fills the cache, then the others
        read it (``main_first``), so no two processes generate the same scenes.
        """
        with distributed.main_first():
            return CachedScenes(self.dataset, split, self.cache_root)

    def fit_and_evaluate(self, method) -> dict[str, float]:
        """Fit ``method`` on the train split, then score it with every task on the evaluation split.

        ``method`` has ``fit(train_scenes, info)``, ``predict_segmentation(scene)`` and/or
        ``predict_detection(scene)`` as the tasks require.
        """
        method.fit(self.scenes(self.train_split), self.dataset.info)
        return self.evaluate(method)

    def evaluate(self, method) -> dict[str, float]:
        """Score a fitted ``method`` with every task on the evaluation split (rank 0 only under torchrun:
        the others return no metrics and wait for it at their next collective)."""
        if not distributed.is_main():
            return {}
        info = self.dataset.info
        tasks = [make_task() for make_task in self.task_factories]
        # Not self.scenes: only rank 0 gets here, and main_first needs every rank.
        scenes = CachedScenes(self.dataset, self.eval_split, self.cache_root)
        for scene in tqdm(scenes, desc=f"{self.row}: {self.eval_split}", leave=False):
            for task in tasks:
                task.add(method, scene)
        metrics: dict[str, float] = {}
        for task in tasks:
            metrics.update(task.result(info))
        return metrics

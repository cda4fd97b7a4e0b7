"""The experiment runner: rows x seeds, fitted on the train split, scored on the evaluation split.

Reads top to bottom: check where results go, reach the tracking store, open the parent run, run every
row and seed in its own child run, write the results folder atomically, log it, print the summary.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import time
from collections.abc import Callable, Mapping, Sequence

import gin
import numpy as np
from tqdm import tqdm

from bench import summary
from bench.config import config_bindings
from bench.io import atomic_write_json, atomic_write_text, check_writable_dir
from bench.provenance import provenance_tags
from bench.seeding import seed_everything
from bench.tracking import Tracker, resolve_tracking_uri


@gin.configurable
class Experiment:
    """One benchmark invocation: an MLflow experiment with a parent run and a child run per row and seed.

    Args:
      name: MLflow experiment name (one per table/benchmark) and results sub-folder.
      dataset: the dataset object (e.g. ``@SyntheticIndoor()``); needs ``info`` and ``scenes(split)``.
      rows: row name -> method factory called as ``factory(seed=seed)`` (e.g. ``@NonLearnedBaseline``).
      tasks: task factories (e.g. ``[@SemanticSegmentationTask, @DetectionTask]``), one fresh task per run.
      seeds: how many seeds each row runs; seed i is ``base_seed + i``.
      tracking_uri: MLflow tracking URI; None = ``MLFLOW_TRACKING_URI`` or the embedded SQLite store.
    """

    def __init__(self, name: str = gin.REQUIRED, dataset=gin.REQUIRED,
                 rows: Mapping[str, Callable] = gin.REQUIRED, tasks: Sequence[Callable] = gin.REQUIRED,
                 seeds: int = 1, base_seed: int = 0, tracking_uri: str | None = None,
                 train_split: str = "train", eval_split: str = "val"):
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

    def run(self, results_dir: str | os.PathLike) -> pathlib.Path:
        """Run every row and seed; return the results folder of this invocation."""
        # --- where results go, and the tracking store: both checked before any work
        results_dir = check_writable_dir(results_dir)
        uri = resolve_tracking_uri(self.tracking_uri, results_dir)
        embedded = self.tracking_uri is None and "MLFLOW_TRACKING_URI" not in os.environ
        tracker = Tracker(uri, self.name, artifact_root=results_dir / "mlartifacts" if embedded else None)
        tracker.connect()
        config_text = gin.config_str()

        # --- parent run; everything is written to a staging folder renamed into place at the end
        tags = {**provenance_tags(), "dataset": self.dataset.info.name, "seeds": str(self.seeds),
                "base_seed": str(self.base_seed)}
        with tracker.run(f"{self.name}", tags=tags) as parent:
            stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{parent.run_id[:8]}"
            final = results_dir / self.name / stamp
            staging = final.with_name(f".{stamp}.partial")
            try:
                parent.log_params(config_bindings(config_text))
                atomic_write_text(staging / "config.gin", config_text)
                records = self._run_rows(tracker, parent)
                self._write_results(staging, records, config_text, parent)
                os.replace(staging, final)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        print(f"\nresults: {final}\nmlflow:  {uri} (experiment {self.name!r}, run {parent.run_id})")
        return final

    def _run_rows(self, tracker: Tracker, parent) -> list[dict]:
        records = []
        for row, factory in self.rows.items():
            for seed in range(self.base_seed, self.base_seed + self.seeds):
                with tracker.run(f"{row} seed={seed}", tags={"row": row, "seed": str(seed)}, parent=parent) as child:
                    child.log_params({"row": row, "seed": seed})
                    metrics = self._run_row(row, factory, seed)
                    child.log_metrics(metrics)
                records.append({"row": row, "seed": seed, "run_id": child.run_id, "metrics": metrics})
        return records

    def _run_row(self, row: str, factory: Callable, seed: int) -> dict[str, float]:
        """Fit one method on the train split and score it with every task on the evaluation split."""
        seed_everything(seed)
        info = self.dataset.info
        method = factory(seed=seed)
        print(f"[{row} seed={seed}] fit on {self.train_split}")
        method.fit(tqdm(self.dataset.scenes(self.train_split), desc=f"{row}: {self.train_split}",
                        total=self.dataset.num_scenes(self.train_split), leave=False), info)
        tasks = [make_task() for make_task in self.tasks]
        for scene in tqdm(self.dataset.scenes(self.eval_split), desc=f"{row}: {self.eval_split}",
                          total=self.dataset.num_scenes(self.eval_split), leave=False):
            for task in tasks:
                task.add(method, scene)
        metrics: dict[str, float] = {}
        for task in tasks:
            metrics.update(task.result(info))
        return metrics

    def _write_results(self, folder: pathlib.Path, records: list[dict], config_text: str, parent) -> None:
        operative = gin.operative_config_str()
        atomic_write_text(folder / "operative_config.gin", operative)
        atomic_write_json(folder / "metrics.json", {"experiment": self.name, "runs": records})
        table = summary.markdown_table(records, self.dataset.info.name)
        atomic_write_text(folder / "summary.md", table)
        print("\n" + table)
        logged = config_bindings(config_text)
        parent.log_params({k: v for k, v in config_bindings(operative).items() if k not in logged})
        for path in sorted(folder.iterdir()):
            parent.log_artifact(path)
        main = summary.main_metrics(records)
        parent.log_metrics({f"{row}/{key}": float(np.nanmean(values)) for (row, key), values in main.items()})

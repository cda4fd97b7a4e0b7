"""Where an invocation writes: every path under one ``--results_dir``, named once.

    <root>/cache/                  cached steps (``infra.cached_step``), each folder keyed by content:
        scenes/ prepare/ stages/ finetune/   made by the datasets and methods (under ``cache``)
        results/                   row results (``bench.row_context``)
        figures/                   drawn figures (``bench.report``)
    <root>/mlflow.db               the embedded MLflow store, when no tracking URI is given
    <root>/mlartifacts/            its artifacts
    <root>/locks/mlflow.lock       held while an invocation reaches the embedded store
    <root>/locks/owners/           one lock per running invocation (``bench.owners``)
    <root>/<table>/<stamp>/        an invocation's table, plots and metrics, staged in ``.<stamp>.partial``
"""
from __future__ import annotations

import dataclasses
import os
import pathlib

from infra.io import check_writable_dir
from infra.mounts import is_network_filesystem


@dataclasses.dataclass(frozen=True)
class ResultsLayout:
    """The folders and files of one results folder (module docstring); it pickles, for worker processes."""

    root: pathlib.Path

    @classmethod
    def at(cls, results_dir: str | os.PathLike) -> ResultsLayout:
        """The layout of ``results_dir``, created if needed; HarnessError in one line if it is not writable."""
        return cls(check_writable_dir(results_dir))

    @property
    def cache(self) -> pathlib.Path:
        return self.root / "cache"

    @property
    def row_results(self) -> pathlib.Path:
        return self.cache / "results"

    @property
    def figure_cache(self) -> pathlib.Path:
        return self.cache / "figures"

    def store_warning(self, several_machines: bool) -> str | None:
        """A warning when several machines would write the embedded store on a network filesystem (SQLite's
        locks are not safe across machines on NFS or Lustre), else None."""
        if several_machines and is_network_filesystem(self.root):
            return (f"warning: several machines share {self.root}, a network filesystem, and the embedded SQLite "
                    "MLflow store in it; run an MLflow tracking server and set MLFLOW_TRACKING_URI (README: MLflow)")
        return None

    @property
    def tracking_uri(self) -> str:
        """The embedded SQLite store (MLflow 3 no longer takes a plain ``./mlruns`` folder)."""
        return f"sqlite:///{(self.root / 'mlflow.db').resolve()}"

    @property
    def artifacts(self) -> pathlib.Path:
        return self.root / "mlartifacts"

    @property
    def mlflow_lock(self) -> pathlib.Path:
        return self.root / "locks" / "mlflow.lock"

    @property
    def owner_locks(self) -> pathlib.Path:
        return self.root / "locks" / "owners"

    def table_folder(self, table: str) -> pathlib.Path:
        """The folder of ``table``'s invocations (one ``<stamp>`` sub-folder each)."""
        return self.root / table

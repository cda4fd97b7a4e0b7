"""MLflow tracking: one experiment per table/benchmark, a parent run per invocation, nested child runs.

The tracking URI is, in order: the one given in gin (``Experiment.tracking_uri``), ``MLFLOW_TRACKING_URI``,
or an embedded SQLite store ``<results_dir>/mlflow.db`` with artifacts under ``<results_dir>/mlartifacts``
(MLflow 3 no longer accepts a plain ``./mlruns`` folder as a tracking store).
"""
from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import re
import time
from collections.abc import Iterator, Mapping, Sequence

from bench import timing
from bench.errors import HarnessError

# Run statuses as MLflow names them; a run cut off by Ctrl-C or SIGTERM ends KILLED, an error FAILED.
FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"
_BATCH = 100  # MLflow accepts at most 100 params or tags per log_batch call
_MAX_PARAM_LENGTH = 6000
_METRIC_BATCH = 1000  # MLflow accepts at most 1000 metrics per log_batch call


def metric_safe(name: str) -> str:
    """``name`` with the characters MLflow refuses in metric keys (e.g. parentheses, '+') replaced by '_'."""
    return re.sub(r"[^\w\-. :/]", "_", name)


def default_tracking_uri(results_dir: pathlib.Path) -> str:
    """The embedded SQLite store inside ``results_dir``."""
    return f"sqlite:///{(results_dir / 'mlflow.db').resolve()}"


def resolve_tracking_uri(configured: str | None, results_dir: pathlib.Path) -> str:
    """gin value, else MLFLOW_TRACKING_URI, else the embedded SQLite store."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(results_dir)


@contextlib.contextmanager
def _fail_fast_http() -> Iterator[None]:
    # MLflow retries an unreachable server for minutes by default; a preflight check should answer now.
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "10"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _quiet_mlflow_logs() -> None:
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
        logging.getLogger(name).setLevel(logging.WARNING)


class Tracker:
    """An MLflow experiment and the runs of one invocation, through an explicit client (no global state)."""

    def __init__(self, uri: str, experiment: str, artifact_root: pathlib.Path | None = None):
        self.uri = uri
        self.experiment = experiment
        self.artifact_root = artifact_root
        self._client = None
        self.experiment_id: str | None = None

    def connect(self) -> None:
        """Reach the store and create or find the experiment; HarnessError in one line if unusable."""
        _quiet_mlflow_logs()
        from mlflow.tracking import MlflowClient

        with _fail_fast_http(), timing.span("mlflow"):
            try:
                client = MlflowClient(tracking_uri=self.uri)
                found = client.get_experiment_by_name(self.experiment)
                if found is None:
                    location = (self.artifact_root / self.experiment).resolve().as_uri() if self.artifact_root else None
                    self.experiment_id = client.create_experiment(self.experiment, artifact_location=location)
                else:
                    self.experiment_id = found.experiment_id
            except Exception as e:  # mlflow raises many types for a bad URI: MlflowException, OSError, ...
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise HarnessError(f"MLflow tracking URI {self.uri!r} is not usable: {first}") from None
        self._client = client

    def _create(self, name: str, tags: Mapping[str, str] | None, parent: RunHandle | None,
                start_time_ms: int | None = None) -> RunHandle:
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        all_tags = dict(tags or {})
        if parent is not None:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent.run_id
        with timing.span("mlflow"):
            created = self._client.create_run(self.experiment_id, run_name=name, tags=all_tags,
                                              start_time=start_time_ms)
        return RunHandle(self._client, created.info.run_id, name)

    @contextlib.contextmanager
    def run(self, name: str, tags: Mapping[str, str] | None = None,
            parent: RunHandle | None = None) -> Iterator[RunHandle]:
        """Open a run (nested under ``parent`` if given); it ends FINISHED, FAILED or KILLED, never RUNNING."""
        handle = self._create(name, tags, parent)
        status = FAILED
        try:
            yield handle
            status = FINISHED
        except KeyboardInterrupt:
            status = KILLED
            raise
        finally:
            with timing.span("mlflow"):
                self._client.set_terminated(handle.run_id, status)

    def replay(self, recording: RecordingRun, tags: Mapping[str, str], parent: RunHandle,
               start_time_ms: int, end_time_ms: int, status: str = FINISHED) -> RunHandle:
        """Write a run that was recorded elsewhere (a worker process) as a finished child of ``parent``,
        with the times it really started and ended."""
        handle = self._create(recording.name, tags, parent, start_time_ms)
        try:
            recording.replay_into(handle)
        finally:
            with timing.span("mlflow"):
                self._client.set_terminated(handle.run_id, status, end_time=end_time_ms)
        return handle


class RunHandle:
    """Logging calls bound to one run."""

    def __init__(self, client, run_id: str, name: str):
        self._client = client
        self.run_id = run_id
        self.name = name

    def log_params(self, params: Mapping[str, object]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), str(v)[:_MAX_PARAM_LENGTH]) for k, v in params.items()]
        with timing.span("mlflow"):
            for start in range(0, len(items), _BATCH):
                self._client.log_batch(self.run_id, params=items[start:start + _BATCH])

    def set_tags(self, tags: Mapping[str, object]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(str(k), str(v)) for k, v in tags.items()]
        with timing.span("mlflow"):
            for start in range(0, len(items), _BATCH):
                self._client.log_batch(self.run_id, tags=items[start:start + _BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        self.log_series([(step, int(time.time() * 1000), metrics)])

    def log_series(self, series: Sequence[tuple[int, int, Mapping[str, float]]]) -> None:
        """Log many (step, timestamp in ms, metrics) entries, e.g. whole loss curves, in few requests."""
        from mlflow.entities import Metric

        # NaN is kept: MLflow stores it, and a NaN per-class IoU says the class was absent.
        items = [Metric(k, float(v), stamp, step) for step, stamp, metrics in series
                 for k, v in metrics.items() if v is not None]
        with timing.span("mlflow"):
            for start in range(0, len(items), _METRIC_BATCH):
                self._client.log_batch(self.run_id, metrics=items[start:start + _METRIC_BATCH])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        with timing.span("mlflow"):
            self._client.log_artifact(self.run_id, str(path), artifact_path)


class RecordingRun:
    """``RunHandle``'s logging interface, keeping everything in memory to be written later in one go
    (``replay_into``): a row's many per-epoch curve points become a few requests, and a worker process,
    which has no tracking store, hands its records to the parent. It pickles."""

    run_id = ""

    def __init__(self, name: str = ""):
        self.name = name
        self.params: dict[str, object] = {}
        self.tags: dict[str, object] = {}
        self.series: list[tuple[int, int, dict[str, float]]] = []

    def log_params(self, params: Mapping[str, object]) -> None:
        self.params.update(params)

    def set_tags(self, tags: Mapping[str, object]) -> None:
        self.tags.update(tags)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        self.series.append((step, int(time.time() * 1000), {k: float(v) for k, v in metrics.items()}))

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        raise NotImplementedError("a recorded run cannot hold artifacts; log them on the parent run")

    def replay_into(self, handle: RunHandle) -> None:
        """Write everything recorded into a real run."""
        if self.params:
            handle.log_params(self.params)
        if self.tags:
            handle.set_tags(self.tags)
        if self.series:
            handle.log_series(self.series)


class NullTracker:
    """The tracker of torchrun ranks > 0: ``Tracker``'s interface, logging nothing (rank 0 logs)."""

    def connect(self) -> None:
        """Nothing to reach."""

    @contextlib.contextmanager
    def run(self, name: str, tags: Mapping[str, str] | None = None,
            parent: RunHandle | NullRun | None = None) -> Iterator[NullRun]:
        """A run handle that drops everything logged to it."""
        yield NullRun(name)


class NullRun:
    """``RunHandle``'s interface, dropping everything; its ``run_id`` is empty."""

    run_id = ""

    def __init__(self, name: str = ""):
        self.name = name

    def log_params(self, params: Mapping[str, object]) -> None:
        pass

    def set_tags(self, tags: Mapping[str, object]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        pass

    def log_series(self, series: Sequence[tuple[int, int, Mapping[str, float]]]) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        pass

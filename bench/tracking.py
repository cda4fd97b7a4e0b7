"""MLflow tracking: one experiment per table/benchmark, a parent run per invocation, nested child runs.

The tracking URI is, in order: the one given in gin (``Experiment.tracking_uri``), ``MLFLOW_TRACKING_URI``,
or the embedded SQLite store of the results folder (``bench.results_layout``). Every call goes through an
explicit store (``bench.mlflow_store``), in this process or in its helper process. The experiments it makes
are marked as model-training experiments, a parent run is named after its table, profile and start
(``parent_run_name``), and the link printed after a table opens MLflow's UI on the runs (``ui_page``).
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import re
import time
from collections.abc import Iterator, Mapping, Sequence

from bench.mlflow_store import PARENT_RUN_TAG, bound_http, fail_fast_http, quiet_mlflow_logs, store_for
from infra import timing
from infra.errors import HarnessError

# Run statuses as MLflow names them; a run cut off by Ctrl-C or SIGTERM ends KILLED, an error FAILED.
FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"
_BATCH = 100  # MLflow accepts at most 100 params or tags per log_batch call
_MAX_PARAM_LENGTH = 6000
_ENTITY_BATCH = 1000  # MLflow accepts at most 1000 metrics, params and tags in all per log_batch call


def parent_run_name(experiment: str, profile: str, cached: bool, started: float | None = None) -> str:
    """The name of an invocation's parent run, e.g. ``table3 smoke 2026-12-07 16:28:38 UTC``, or ``table3 smoke
    cached 2026-12-07 16:29:02 UTC`` when every row was answered from the result cache: in MLflow's runs table a
    person tells invocations apart by it (their ids say nothing, and a re-run that trained nothing looks like
    the first). "cached" comes before the time because the table shows a name's first 16 characters or so (its
    "Created" column has the time)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(time.time() if started is None else started))
    return f"{experiment} {profile} {'cached ' if cached else ''}{when}"


def ui_page(uri: str, experiment_id: str) -> str | None:
    """Where to see an experiment's runs in MLflow's UI: a link for a tracking server, for a local store the
    ``mlflow ui`` command and its link; None for a hosted service (e.g. Databricks), whose pages differ.

    The link asks for the UI's "Model training" view: MLflow 3.17's UI opens an experiment on its GenAI
    overview unless that view was picked in the same browser before, whatever the experiment's kind tag."""
    scheme = uri.partition(":")[0]  # also a whole URI such as "databricks"
    page = f"#/experiments/{experiment_id}?workflowType=machine_learning"
    if scheme in ("http", "https"):
        return f"{uri.rstrip('/')}/{page}"
    if scheme == "databricks":
        return None
    return f"mlflow ui --backend-store-uri {uri}, then http://127.0.0.1:5000/{page}"


def metric_safe(name: str) -> str:
    """``name`` with the characters MLflow refuses in metric keys (e.g. parentheses, '+') replaced by '_'."""
    return re.sub(r"[^\w\-. :/]", "_", name)


class Tracker:
    """An MLflow experiment and the runs of one invocation, through an explicit store (``bench.mlflow_store``:
    a client in this process, or in the helper process ``run_bench.py`` prewarms). Every run it opens
    carries ``run_tags`` (who owns it: ``bench.owners``)."""

    def __init__(self, uri: str, experiment: str, artifact_root: pathlib.Path | None = None,
                 run_tags: Mapping[str, str] | None = None):
        self.uri = uri
        self.experiment = experiment
        self.artifact_root = artifact_root
        self.run_tags = dict(run_tags or {})
        self.store = None
        self.experiment_id: str | None = None

    def connect(self) -> None:
        """Reach the store and create or find the experiment; HarnessError in one line if unusable."""
        location = (self.artifact_root / self.experiment).resolve().as_uri() if self.artifact_root else None
        bound_http()  # for a store in this process; the helper process bounds its own
        with fail_fast_http(), timing.span("mlflow"):
            try:
                quiet_mlflow_logs()
                self.store = store_for(self.uri)
                self.experiment_id = self.store.experiment_id(self.experiment, location)
            except HarnessError:
                raise
            except Exception as e:  # mlflow raises many types for a bad URI: MlflowException, OSError, ...
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise HarnessError(f"MLflow tracking URI {self.uri!r} is not usable: {first}") from None

    def where(self, run_id: str) -> str:
        """The store, experiment and run, and on a second line the UI page of the experiment's runs."""
        page = ui_page(self.uri, self.experiment_id)
        return f"{self.uri} (experiment {self.experiment!r}, run {run_id})" + (f"\nui:      {page}" if page else "")

    def flush(self) -> None:
        """Wait until every write sent to the store is done; HarnessError in one line if one failed."""
        if self.store is None:
            return
        with timing.span("mlflow"):
            try:
                self.store.flush()
            except HarnessError:
                raise
            except Exception as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise HarnessError(f"MLflow tracking URI {self.uri!r}: a write failed: {first}") from None

    def _create(self, name: str, tags: Mapping[str, str] | None, parent: RunHandle | None,
                start_time_ms: int | None = None) -> RunHandle:
        all_tags = {str(k): str(v) for k, v in {**self.run_tags, **(tags or {})}.items()}
        if parent is not None:
            all_tags[PARENT_RUN_TAG] = parent.run_id
        with timing.span("mlflow"):
            run_id = self.store.create_run(self.experiment_id, name, all_tags, start_time_ms)
        return RunHandle(self.store, run_id, name)

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
                self.store.set_terminated(handle.run_id, status)

    def replay(self, recording: RecordingRun, tags: Mapping[str, str], parent: RunHandle,
               start_time_ms: int, end_time_ms: int, status: str = FINISHED) -> RunHandle:
        """Write a run that was recorded elsewhere (a worker process) as a finished child of ``parent``,
        with the times it really started and ended."""
        handle = self._create(recording.name, tags, parent, start_time_ms)
        try:
            recording.replay_into(handle)
        finally:
            with timing.span("mlflow"):
                self.store.set_terminated(handle.run_id, status, end_time_ms)
        return handle


class RunHandle:
    """Logging calls bound to one run."""

    def __init__(self, store, run_id: str, name: str):
        self._store = store
        self.run_id = run_id
        self.name = name

    def log_params(self, params: Mapping[str, object]) -> None:
        self.log_batch(params=params)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        self.log_series([(step, int(time.time() * 1000), metrics)])

    def log_series(self, series: Sequence[tuple[int, int, Mapping[str, float]]]) -> None:
        """Log many (step, timestamp in ms, metrics) entries, e.g. whole loss curves, in few requests."""
        self.log_batch(series=series)

    def log_batch(self, params: Mapping[str, object] | None = None, tags: Mapping[str, object] | None = None,
                  series: Sequence[tuple[int, int, Mapping[str, float]]] = ()) -> None:
        """Params, tags and (step, timestamp ms, metrics) entries in as few requests as MLflow takes (each
        request is one transaction of the store)."""
        params_left = [(str(k), str(v)[:_MAX_PARAM_LENGTH]) for k, v in (params or {}).items()]
        tags_left = [(str(k), str(v)) for k, v in (tags or {}).items()]
        # NaN is kept: MLflow stores it, and a NaN per-class IoU says the class was absent.
        metrics_left = [(k, float(v), stamp, step) for step, stamp, metrics in series
                        for k, v in metrics.items() if v is not None]
        with timing.span("mlflow"):
            while params_left or tags_left or metrics_left:
                params_now, params_left = params_left[:_BATCH], params_left[_BATCH:]
                tags_now, tags_left = tags_left[:_BATCH], tags_left[_BATCH:]
                room = _ENTITY_BATCH - len(params_now) - len(tags_now)
                metrics_now, metrics_left = metrics_left[:room], metrics_left[room:]
                self._store.log_batch(self.run_id, params=params_now, tags=tags_now, metrics=metrics_now)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        with timing.span("mlflow"):
            self._store.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder: str | os.PathLike) -> None:
        """Every file under ``folder``, at the run's artifact root."""
        with timing.span("mlflow"):
            self._store.log_artifacts(self.run_id, str(folder))


class RecordingRun:
    """``RunHandle``'s logging interface, keeping everything in memory to be written later in one go
    (``replay_into``): a row's many per-epoch curve points become a few requests, and a worker process,
    which has no tracking store, hands its records to the parent. It pickles."""

    run_id = ""

    def __init__(self, name: str = ""):
        self.name = name
        self.params: dict[str, object] = {}
        self.series: list[tuple[int, int, dict[str, float]]] = []

    def log_params(self, params: Mapping[str, object]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        self.series.append((step, int(time.time() * 1000), {k: float(v) for k, v in metrics.items()}))

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        raise NotImplementedError("a recorded run cannot hold artifacts; log them on the parent run")

    def log_artifacts(self, folder: str | os.PathLike) -> None:
        self.log_artifact(folder)

    def replay_into(self, handle: RunHandle) -> None:
        """Write everything recorded into a real run."""
        handle.log_batch(params=self.params, series=self.series)


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

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        pass

    def log_series(self, series: Sequence[tuple[int, int, Mapping[str, float]]]) -> None:
        pass

    def log_batch(self, params: Mapping[str, object] | None = None, tags: Mapping[str, object] | None = None,
                  series: Sequence[tuple[int, int, Mapping[str, float]]] = ()) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        pass

    def log_artifacts(self, folder: str | os.PathLike) -> None:
        pass

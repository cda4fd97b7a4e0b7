"""The MLflow calls the harness makes, in this process or in a helper process that imports MLflow early.

Importing MLflow and opening its SQLAlchemy store costs about three seconds on a small CPU, as much as
a cached re-run of a small table does otherwise. ``prewarm()`` (called first thing by ``run_bench.py``)
starts a helper process that pays for it while this process imports torch and parses the config;
``store_for(uri)`` then hands out a proxy that runs every call there. Without a prewarmed helper (tests,
``import bench`` from Python) the same calls run here, on an ``MlflowClient``.

Writes that return nothing (``log_batch``, ``set_terminated``) are sent without waiting; the helper runs
calls in order, so a later read sees them, and an error they raise is raised by the next call that
waits. ``flush()`` waits for everything sent. Values cross the process boundary as plain tuples, so
this process never imports MLflow when the helper serves it.
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

from infra.errors import HarnessError
from infra.startup import importing_without_collection

PARENT_RUN_TAG = "mlflow.parentRunId"  # mlflow.utils.mlflow_tags.MLFLOW_PARENT_RUN_ID, without importing MLflow
# What an experiment holds, as MLflow 3's UI names it (its ExperimentKind; the Python API has no constant). UIs
# that read it open a model-training experiment on its runs instead of the GenAI traces page; 3.17's reads its
# GenAI / Model training switch instead (per browser), so the harness links to that view (``tracking.ui_page``).
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"


@contextlib.contextmanager
def fail_fast_http() -> Iterator[None]:
    """MLflow retries an unreachable server for minutes by default; reaching a store should answer now."""
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


# MLflow's client retries an unreachable server with back-off for minutes by default (7 retries, factor 2,
# 120 s a request); a run must notice a dead server within seconds. Users may still set their own.
BOUNDED_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# What MLflow's client says when a server does not answer (requests / urllib3 errors inside MlflowException).
_UNREACHABLE = ("Max retries exceeded", "Failed to establish a new connection", "Connection refused",
                "Connection aborted", "RemoteDisconnected", "Read timed out", "timed out")


def bound_http() -> None:
    """Bounded retries and timeouts for MLflow's HTTP requests in this process (``BOUNDED_HTTP``), unless the
    user set their own."""
    for key, value in BOUNDED_HTTP.items():
        os.environ.setdefault(key, value)


def unreachable(message: str) -> bool:
    """Whether an MLflow error message says the tracking server did not answer."""
    return any(sign in message for sign in _UNREACHABLE)


def server_gone(uri: str, message: str) -> HarnessError:
    """The one-line error of a tracking server that stopped answering."""
    reason = "connection refused" if "refused" in message else "timed out" if "timed out" in message else "no answer"
    return HarnessError(f"MLflow tracking server {uri} does not answer ({reason}); every finished step stays "
                        "cached: run the same command again once the server answers (it marks this invocation's "
                        "runs KILLED)")


def quiet_mlflow_logs() -> None:
    """MLflow's and alembic's INFO lines say nothing a user of the harness needs. Nor do the two lines with
    links that MLflow's client prints for every run it ends on a tracking server (after one more request for
    the run): the harness prints one link, to the page that lists the runs (``bench.tracking.ui_page``)."""
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


class MlflowStore:
    """The harness's MLflow operations on one tracking URI, through an explicit ``MlflowClient``."""

    def __init__(self, uri: str):
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self._client = MlflowClient(tracking_uri=uri)

    def experiment_id(self, name: str, artifact_location: str | None) -> str:
        """The id of experiment ``name``, created (with ``artifact_location``) if it does not exist, and marked
        as a model-training experiment (``EXPERIMENT_KIND_TAG``) unless it already has a kind."""
        found = self._client.get_experiment_by_name(name)
        if found is None:
            return self._client.create_experiment(name, artifact_location=artifact_location,
                                                  tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
        if EXPERIMENT_KIND_TAG not in found.tags:  # made by an older harness: one request, once
            self._client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
        return found.experiment_id

    def create_run(self, experiment_id: str, name: str, tags: dict[str, str], start_time_ms: int | None) -> str:
        return self._client.create_run(experiment_id, run_name=name, tags=tags, start_time=start_time_ms).info.run_id

    def log_batch(self, run_id: str, params: Sequence[tuple] = (), tags: Sequence[tuple] = (),
                  metrics: Sequence[tuple] = ()) -> None:
        """params/tags: (key, value) pairs; metrics: (key, value, timestamp ms, step)."""
        from mlflow.entities import Metric, Param, RunTag

        self._client.log_batch(run_id, params=[Param(k, v) for k, v in params],
                               tags=[RunTag(k, v) for k, v in tags], metrics=[Metric(*m) for m in metrics])

    def set_terminated(self, run_id: str, status: str, end_time_ms: int | None = None) -> None:
        self._client.set_terminated(run_id, status, end_time=end_time_ms)

    def log_artifact(self, run_id: str, path: str, artifact_path: str | None = None) -> None:
        self._client.log_artifact(run_id, path, artifact_path)

    def log_artifacts(self, run_id: str, folder: str) -> None:
        """Every file under ``folder`` (one request instead of one per file)."""
        self._client.log_artifacts(run_id, folder)

    def child_runs(self, parent_run_id: str) -> list[dict]:
        """Every run tagged as a child of ``parent_run_id``: run_id, status, start_time, tags, metrics."""
        experiment_id = self._client.get_run(parent_run_id).info.experiment_id
        query = f"tags.{PARENT_RUN_TAG} = '{parent_run_id}'"
        runs, token = [], None
        while True:
            page = self._client.search_runs([experiment_id], filter_string=query, max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                break
        return [{"run_id": r.info.run_id, "status": r.info.status, "start_time": r.info.start_time or 0,
                 "tags": dict(r.data.tags), "metrics": dict(r.data.metrics)} for r in runs]

    def running_runs(self) -> list[dict]:
        """Every RUNNING run of every experiment: run_id and tags."""
        experiments = [e.experiment_id for e in self._client.search_experiments()]
        runs, token = [], None
        while experiments:
            page = self._client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'",
                                            max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                break
        return [{"run_id": r.info.run_id, "tags": dict(r.data.tags)} for r in runs]

    def run_status(self, run_id: str) -> str:
        """A run's status (RUNNING, FINISHED, FAILED, KILLED)."""
        return self._client.get_run(run_id).info.status

    def run_data(self, run_id: str) -> dict:
        """A run's tags and latest metric values."""
        run = self._client.get_run(run_id)
        return {"tags": dict(run.data.tags), "metrics": dict(run.data.metrics)}

    def runs_data(self, run_ids: Sequence[str]) -> list[dict]:
        """``run_data`` of every run, in one call (one round trip to the helper process)."""
        return [self.run_data(run_id) for run_id in run_ids]

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, int, float]]:
        """Every logged value of ``key``: (step, timestamp ms, value)."""
        return [(m.step, m.timestamp, m.value) for m in self._client.get_metric_history(run_id, key)]

    def metric_histories(self, wanted: Sequence[tuple[str, str]]) -> list[list[tuple[int, int, float]]]:
        """``metric_history`` of every (run_id, key), in one call (a table's curves are dozens of them)."""
        return [self.metric_history(run_id, key) for run_id, key in wanted]

    def flush(self) -> None:
        """Nothing is pending in this process."""


def as_store(tracking: str | MlflowStore | StoreProxy) -> MlflowStore | StoreProxy:
    """A store for a tracking URI, or the store itself."""
    return store_for(tracking) if isinstance(tracking, str) else tracking


# --- the helper process

_NO_REPLY = ("log_batch", "set_terminated")
_FULL_DISK = ("database or disk is full", "No space left on device", "Disk quota exceeded")
_helper: StoreProxy | None = None


def _serve(connection, parent_end=None) -> None:
    """The helper's loop: import MLflow now, then run calls until the parent closes its end.

    ``parent_end``: the parent's end of the pipe, which a forked helper holds a copy of; closed here, or the
    helper would never see the parent close it (and would outlive it)."""
    if parent_end is not None:
        parent_end.close()
    # Ctrl-C and SIGTERM reach the whole process group (a terminal, a scheduler's time limit): the parent
    # handles them and marks its runs KILLED through this helper, which then ends when the parent closes the
    # pipe. A helper that never served a store is killed instead (``close``).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with importing_without_collection():
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  the slow part of opening a SQLite store
        from mlflow.tracking import MlflowClient  # noqa: F401

    quiet_mlflow_logs()
    bound_http()
    store, pending_error, gone = None, None, None
    while True:
        try:
            name, args, kwargs, reply = connection.recv()
        except (EOFError, OSError):
            return
        result, error = None, None
        try:
            if gone is not None and name != "flush":  # a server that stopped answering is not asked again
                error = gone
            else:
                with fail_fast_http() if name in ("open", "experiment_id") else contextlib.nullcontext():
                    if name == "open":
                        store = MlflowStore(*args)
                    elif name != "flush":
                        result = getattr(store, name)(*args, **kwargs)
        except Exception as e:  # noqa: BLE001  sent back to the parent, which raises it
            error = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
            gone = error if unreachable(str(e)) else gone
        if not reply:
            pending_error = pending_error or error
            continue
        if pending_error is not None:
            error, pending_error = (pending_error if unreachable(pending_error)
                                    else f"an earlier MLflow write failed: {pending_error}"), None
        try:
            connection.send((result, error))
        except OSError:  # the parent has gone (its Ctrl-C closed the pipe): nothing left to answer
            return


def _start_method() -> str:
    """"fork" where it is safe: the helper then starts at once, with this process's imports, instead of a
    fresh interpreter that imports them again (a quarter of a second, on a cached re-run's critical path).
    Safe means Linux, one thread and no torch yet (whose native threads a fork would copy mid-work):
    ``run_bench.py`` calls ``prewarm()`` before anything else; tests and library use get "spawn"."""
    if sys.platform == "linux" and threading.active_count() == 1 and "torch" not in sys.modules:
        return "fork"
    return "spawn"


class StoreProxy:
    """``MlflowStore``'s methods, run in the helper process (module docstring)."""

    def __init__(self):
        method = _start_method()
        context = multiprocessing.get_context(method)
        self._connection, child = context.Pipe()
        # Not a daemon: it must finish the writes already sent when this process exits. It ends when
        # this process closes its end of the pipe (or exits, however it exits).
        inherited = self._connection if method == "fork" else None
        self._process = context.Process(target=_serve, args=(child, inherited), name="mlflow-store")
        sys.stdout.flush()  # a forked helper must not write this process's buffered output a second time
        sys.stderr.flush()
        self._process.start()
        child.close()
        self.uri: str | None = None
        self._owed = 0  # replies of calls interrupted (Ctrl-C) before they were read: read before the next
        self._said: str | None = None  # the one-line error already raised for a dead helper or server

    def _call(self, name: str, *args, **kwargs):
        reply = name not in _NO_REPLY
        if self._said is not None and self._said.startswith("the MLflow helper"):
            raise HarnessError(self._said)
        try:
            while self._owed:  # a call whose caller was interrupted still gets its reply: skip it
                self._connection.recv()
                self._owed -= 1
            self._connection.send((name, args, kwargs, reply))
            if not reply:
                return None
            self._owed += 1
            result, error = self._connection.recv()
            self._owed -= 1
        except (EOFError, OSError):
            self._said = ("the MLflow helper process ended unexpectedly; this invocation's open runs stay RUNNING "
                          "until the next invocation into the same results folder marks them KILLED")
            raise HarnessError(self._said) from None
        if error is not None:
            if any(sign in error for sign in _FULL_DISK):
                raise HarnessError(f"MLflow store {self.uri}: {error} (the disk is full: free space or choose "
                                   "another --results_dir)")
            if unreachable(error):
                failure = server_gone(self.uri, error)
                self._said = str(failure)
                raise failure
            raise RuntimeError(error)
        return result

    def open(self, uri: str) -> StoreProxy:
        self._call("open", uri)
        self.uri = uri
        return self

    def __getattr__(self, name: str):
        if name.startswith("_") or not hasattr(MlflowStore, name):
            raise AttributeError(name)
        return lambda *args, **kwargs: self._call(name, *args, **kwargs)

    def close(self) -> None:
        """Wait for the writes sent, then let the helper end (at once when it never served a store, e.g.
        after a configuration error: a bad binding must not wait for MLflow's import). A dead helper or
        server that a call already reported is not reported again."""
        if self.uri is None:
            self._process.kill()  # it ignores SIGTERM (``_serve``); it holds nothing yet
            self._connection.close()
            return
        try:
            self._call("flush")
        except HarnessError:
            if self._said is None:
                raise
        finally:
            # Everything sent is written; the helper ends by itself on the closed pipe, no need to wait
            # for its interpreter to tear down.
            self._connection.close()


def prewarm() -> None:
    """Start the helper process, so that importing MLflow overlaps this process's start-up. Does nothing
    when MLflow is already imported here (then calls are as fast in this process)."""
    global _helper
    if _helper is None and "mlflow" not in sys.modules:
        _helper = StoreProxy()


def store_for(uri: str) -> MlflowStore | StoreProxy:
    """The store of ``uri``: the prewarmed helper the first time (it serves one URI), else in this process."""
    global _helper
    if _helper is not None and _helper.uri in (None, uri):
        return _helper.open(uri) if _helper.uri is None else _helper
    return MlflowStore(uri)


def shutdown() -> None:
    """Finish the helper's pending writes and stop it (``run_bench.py`` calls this before it exits)."""
    global _helper
    if _helper is not None:
        helper, _helper = _helper, None
        helper.close()

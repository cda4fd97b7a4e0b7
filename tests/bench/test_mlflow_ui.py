"""MLflow's UI in a real browser: ``mlflow ui`` on a smoke table's store (a first run and a cached re-run),
headless Chromium on the page the harness prints. It must open on the runs, not on MLflow 3's GenAI overview,
and name the two invocations apart. Needs Debian's ``chromium`` (``.ci/run`` installs it); skipped without.
46 s on 2 shared cores (load 4). ``MLFLOW_UI_SCREENSHOT=docs/mlflow_ui.png`` also saves the screenshot there
(README's)."""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import REPO_ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium not found: install Debian's `chromium` package "
                                "(`.ci/run` does) to check MLflow's UI in a browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_table(results: pathlib.Path) -> str:
    """The smoke table on the embedded store of ``results``; its standard output."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run([sys.executable, str(REPO_ROOT / "run_bench.py"), "--gin=gin/tables/table3_smoke.gin",
                           "--results_dir", str(results)], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def start_ui(uri: str, port: int) -> subprocess.Popen:
    """``mlflow ui`` on ``uri`` (one worker, no job runner: a faster start, the same UI); ``answering`` waits."""
    mlflow = pathlib.Path(sys.executable).with_name("mlflow")
    return subprocess.Popen([str(mlflow), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1"], env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def answering(ui: subprocess.Popen, port: int) -> None:
    """Wait until ``ui`` answers /health."""
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return
        except OSError:
            assert ui.poll() is None, f"mlflow ui exited with {ui.returncode}"
            time.sleep(0.3)
    raise AssertionError("mlflow ui did not answer /health within 120 s")


def chromium(url: str, folder: pathlib.Path) -> tuple[str, pathlib.Path]:
    """Headless Chromium on ``url``: the rendered DOM and a screenshot. The page loads its runs with requests of
    its own, and virtual time stands still while they are pending. Nothing is fetched from outside (no component
    updates, no background networking)."""
    screenshot = folder / "mlflow_ui.png"
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           f"--user-data-dir={folder / 'profile'}", "--no-first-run", "--disable-background-networking",
                           "--disable-component-update", "--window-size=1600,900", "--virtual-time-budget=20000",
                           f"--screenshot={screenshot}", "--dump-dom", url],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, screenshot


def parent_run_names(port: int, experiment_id: str) -> list[str]:
    """The names of the experiment's parent runs, oldest first, through the UI server's REST API."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search",
                                     data=json.dumps({"experiment_ids": [experiment_id]}).encode(),
                                     headers={"Content-Type": "application/json"})
    runs = json.loads(urllib.request.urlopen(request, timeout=30).read())["runs"]
    parents = [r for r in runs if not any(t["key"] == "mlflow.parentRunId" for t in r["data"].get("tags", []))]
    return [r["info"]["run_name"] for r in sorted(parents, key=lambda r: int(r["info"]["start_time"]))]


def test_the_ui_opens_the_harness_s_experiment_on_its_runs_with_invocations_named_apart(tmp_path):
    results = tmp_path / "results"
    out = run_table(results)
    page = re.search(r"^ui: +mlflow ui --backend-store-uri (\S+), then http://127.0.0.1:5000/(\S+)$", out, re.M)
    assert page, out[-1000:]
    experiment_id = re.search(r"experiments/(\d+)\?", page[2])[1]
    port = free_port()
    ui = start_ui(page[1], port)  # its start overlaps the re-run (SQLite takes a reader beside the writer)
    try:
        assert page[0] in run_table(results)  # answered from the cache: its parent run says "cached"
        answering(ui, port)
        names = parent_run_names(port, experiment_id)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get?experiment_id="
                                    f"{experiment_id}", timeout=30) as response:
            tags = {t["key"]: t["value"] for t in json.loads(response.read())["experiment"].get("tags", [])}
        url = f"http://127.0.0.1:{port}/{page[2]}"
        dom, screenshot = chromium(url, tmp_path)
        if not all(name in dom for name in names):  # a slow machine: the runs came after the budget
            dom, screenshot = chromium(url, tmp_path)
    finally:
        os.killpg(ui.pid, signal.SIGKILL)
        ui.wait()
    # the kind that MLflow UIs without 3.17's GenAI / Model training switch open an experiment by
    assert tags.get("mlflow.experimentKind") == "custom_model_development"
    assert len(names) == 2 and names[0].startswith("table3 smoke 20"), names
    assert names[1].startswith("table3 smoke cached 20"), names
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
    assert all(name in text for name in names), names  # the runs table, both invocations named apart
    assert "14 matching runs" in text  # both parents and their 12 row/seed runs
    assert "No data available" not in text  # not the GenAI overview (traces, latency, tokens)
    assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 10_000
    if os.environ.get("MLFLOW_UI_SCREENSHOT"):
        shutil.copyfile(screenshot, REPO_ROOT / os.environ["MLFLOW_UI_SCREENSHOT"])

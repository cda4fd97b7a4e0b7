"""torchrun over two nodes, simulated on one machine: two launchers on 127.0.0.1 joined by a c10d rendezvous.

Each launcher is what one node of a cluster runs (one process each here), both on one results folder. The
table they make must be the one a single node with two processes makes, and only the global rank 0 prints
progress. A smoke table with 4 evaluation scenes, so that evaluation is sharded over the nodes too.
"""
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
import uuid

import pytest

from tests.bench.test_distributed import REPO_ROOT, _require_gloo, _torchrun

SMOKE = ("--gin=gin/tables/table4_smoke.gin", "--gin_binding=SyntheticIndoor.num_val = 4")
# A step line ("[stage1 seed=0] finetune/seg: ...") or the table's overall line ("table4: 2/4 rows x seeds ...").
PROGRESS = re.compile(r"^(\[[^\]]+ seed=\d+\] |table4: \d+/\d+ rows)", re.MULTILINE)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(folder: pathlib.Path, timeout: float = 300) -> list[tuple[int, str, str]]:
    """Run the smoke table as two torchrun launchers ("nodes") of one process each; (exit code, stdout,
    stderr) of each. Output goes to files: a launcher blocked on a full pipe would stall the other."""
    job = f"sam3d-test-{uuid.uuid4().hex[:8]}"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}", f"--rdzv-id={job}",
               "--local-addr=127.0.0.1", str(REPO_ROOT / "run_bench.py"), *SMOKE, f"--results_dir={folder / 'out'}"]
    launchers = []
    try:
        for node in (0, 1):
            with open(folder / f"node{node}.out", "w") as out, open(folder / f"node{node}.err", "w") as err:
                launchers.append(subprocess.Popen(command, cwd=folder, env=_env(), stdout=out, stderr=err,
                                                  start_new_session=True))
        codes = [launcher.wait(timeout=timeout) for launcher in launchers]
    finally:
        for launcher in launchers:  # a timed-out launcher goes with its workers (its own session)
            if launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)
                launcher.wait()
    return [(code, (folder / f"node{n}.out").read_text(), (folder / f"node{n}.err").read_text())
            for n, code in enumerate(codes)]


def _results(out: pathlib.Path) -> tuple[list, list[str]]:
    """The one results folder's metrics (rows, seeds, values; no run ids) and its table's lines."""
    folders = list((out / "table4").iterdir())
    assert len(folders) == 1, folders
    runs = json.loads((folders[0] / "metrics.json").read_text())["runs"]
    table = [line for line in (folders[0] / "table4.md").read_text().splitlines() if line.startswith("|")]
    # json wrote NaN as NaN; compare through repr so that NaN equals NaN
    return [(r["row"], r["seed"], {k: repr(v) for k, v in r["metrics"].items()}) for r in runs], table


@pytest.fixture(scope="module")
def one_node(tmp_path_factory) -> tuple[pathlib.Path, str]:
    """The smoke table run by one torchrun launcher with two processes: its results folder and stdout."""
    _require_gloo()
    folder = tmp_path_factory.mktemp("one_node")
    result = _torchrun(str(REPO_ROOT / "run_bench.py"), *SMOKE, f"--results_dir={folder / 'out'}", cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "out", result.stdout


def test_two_nodes_make_the_table_of_one_node_with_two_processes(tmp_path, one_node):
    nodes = _two_nodes(tmp_path)
    assert [code for code, _, _ in nodes] == [0, 0], "\n".join(err[-3000:] for _, _, err in nodes)
    metrics, table = _results(tmp_path / "out")
    assert metrics, table
    assert (metrics, table) == _results(one_node[0])
    # the global rank 0's launcher prints the progress and the results, the other node's nothing of it
    printing = [out for _, out, _ in nodes if PROGRESS.search(out)]
    assert len(printing) == 1, [out[-2000:] for _, out, _ in nodes]
    silent = next(out for _, out, _ in nodes if out is not printing[0])
    assert "results: " not in silent and not PROGRESS.search(silent), silent[-2000:]
    assert printing[0].count("results: ") == 1
    assert [line for line in PROGRESS.findall(printing[0]) if line.startswith("table4: ")] == \
        [f"table4: {done}/4 rows" for done in range(1, 5)]
    evaluations = "evaluation: 4 synthetic/val scenes on 2 ranks"  # 4 rows x 3 protocols, sharded over the nodes
    assert printing[0].count(evaluations) == one_node[1].count(evaluations) == 12


def test_a_torchrun_table_scores_its_models_as_one_process_would(tmp_path, one_node):
    """Each rank evaluates its share of the scenes with the model it trained, so every rank must hold the
    model rank 0 saved: one process evaluating the saved models (the row results removed) gives the same
    metrics, bit for bit."""
    shutil.copytree(one_node[0], tmp_path / "out")
    shutil.rmtree(tmp_path / "out" / "cache" / "results")
    shutil.rmtree(tmp_path / "out" / "table4")
    result = subprocess.run([sys.executable, str(REPO_ROOT / "run_bench.py"), *SMOKE,
                             f"--results_dir={tmp_path / 'out'}"], cwd=tmp_path, env=_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "finetune/seg: cached" in result.stdout and "trained" not in result.stdout  # the saved models
    assert _results(tmp_path / "out")[0] == _results(one_node[0])[0]

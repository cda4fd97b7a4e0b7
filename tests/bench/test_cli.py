"""The command line as a user runs it: help, bad input as one-line errors with no results written."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


def _run(*args: str, cwd=REPO_ROOT, env_extra=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, str(REPO_ROOT / "run_bench.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_a_missing_include_is_one_line_and_nothing_else(tmp_path):
    (tmp_path / "inc.gin").write_text("include 'nope/missing.gin'\n")
    line = _one_line_error(_run(f"--gin={tmp_path / 'inc.gin'}", "--results_dir", str(tmp_path / "r")))
    assert "inc.gin:1: gin include not found: nope/missing.gin" in line


def test_help():
    result = _run("--help")
    assert result.returncode == 0 and "--gin_binding" in result.stdout and "results/runs" in result.stdout


def test_the_registry_leaves_the_heavy_imports_to_the_commands_that_use_them():
    # Every command imports the registry; scipy.stats alone costs a cached re-run about a second.
    heavy = ["mlflow", "pandas", "matplotlib", "scipy.stats", "scipy.optimize", "scipy.spatial", "scipy.io"]
    code = f"import sys, bench.registry; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_missing_gin_file(tmp_path):
    line = _one_line_error(_run("--gin=gin/nope.gin", f"--results_dir={tmp_path / 'out'}"))
    assert "gin/nope.gin" in line
    assert not (tmp_path / "out").exists()


def test_bad_binding(tmp_path):
    line = _one_line_error(_run("--gin=gin/smoke.gin", "--gin_binding=SyntheticIndoor.num_tran = 2",
                                f"--results_dir={tmp_path / 'out'}"))
    assert "num_tran" in line and "num_train" in line
    assert not (tmp_path / "out").exists()


def test_unwritable_results_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    line = _one_line_error(_run("--gin=gin/smoke.gin", f"--results_dir={blocker / 'out'}"))
    assert "not writable" in line and str(blocker / "out") in line


@pytest.mark.parametrize("how", ["gin", "env"])
def test_invalid_tracking_uri(tmp_path, how):
    uri = "nosuchscheme://nowhere/x"
    args = ["--gin=gin/smoke.gin", f"--results_dir={tmp_path / 'out'}"]
    if how == "gin":
        result = _run(*args, f"--gin_binding=Experiment.tracking_uri = '{uri}'")
    else:
        result = _run(*args, env_extra={"MLFLOW_TRACKING_URI": uri})
    line = _one_line_error(result)
    assert uri in line
    assert not any(p for p in (tmp_path / "out").rglob("*") if p.is_file())


def test_required_value_missing(tmp_path):
    line = _one_line_error(_run("--gin=gin/base/experiment.gin", f"--results_dir={tmp_path / 'out'}"))
    assert "Required bindings" in line and "Experiment" in line


def test_runs_from_another_working_directory(tmp_path):
    result = _run("--gin=gin/smoke.gin", "--gin_binding=SyntheticIndoor.num_train = 2",
                  "--gin_binding=SyntheticIndoor.num_val = 1", f"--results_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "synthetic/det/AP25" in result.stdout or "det/AP25" in result.stdout
    assert (tmp_path / "out" / "mlflow.db").is_file()
    assert len(list((tmp_path / "out" / "synthetic_smoke").iterdir())) == 1


def test_gin_imports_are_refused_unless_allowed(tmp_path):
    """A gin file that would run `touch` is refused with its file and line; the command never runs."""
    from tests.bench.test_config import EXPLOIT

    marker = tmp_path / "ran.marker"
    (tmp_path / "exploit.gin").write_text(EXPLOIT.format(marker=marker))
    (tmp_path / "outer.gin").write_text(f"include 'smoke.gin'\ninclude '{tmp_path / 'exploit.gin'}'\n")
    line = _one_line_error(_run(f"--gin={tmp_path / 'outer.gin'}", f"--results_dir={tmp_path / 'out'}"))
    assert "exploit.gin:1" in line and "dynamic_registration' refused" in line and "--allow_gin_imports" in line
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_allow_gin_imports_lets_a_trusted_file_import(tmp_path):
    marker = tmp_path / "imported.marker"
    (tmp_path / "trusted_module.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (tmp_path / "trusted.gin").write_text("include 'base/experiment.gin'\nimport trusted_module\n")
    # base/experiment.gin leaves a REQUIRED value unset: the run stops after the import, before any work.
    line = _one_line_error(_run(f"--gin={tmp_path / 'trusted.gin'}", "--allow_gin_imports",
                                f"--results_dir={tmp_path / 'out'}", env_extra={"PYTHONPATH": os.pathsep.join(
                                    filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}))
    assert "Required bindings" in line and marker.exists()


def test_a_bad_value_of_a_row_is_one_line_naming_the_parameter_before_any_work(tmp_path):
    line = _one_line_error(_run("--gin=gin/tables/table4_smoke.gin", "--gin_binding=TrainSchedule.epochs = -1",
                                f"--results_dir={tmp_path / 'out'}"))
    assert "TrainSchedule.epochs: expected an integer >= 1, got -1" in line and "row 'stage1'" in line
    assert not (tmp_path / "out" / "cache").exists() and not (tmp_path / "out" / "mlflow.db").exists()

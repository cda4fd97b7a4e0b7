"""The harness's top-level packages are never installed, so Hugging Face's `datasets` is not shadowed."""
from __future__ import annotations

import importlib.metadata
import os
import pathlib
import subprocess
import sys
import sysconfig

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO_ROOT


def test_pyproject_installs_no_packages():
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert config["tool"]["setuptools"]["packages"] == []
    assert config["tool"]["setuptools"]["py-modules"] == []
    names = {dep.split(">")[0].split("=")[0].split("<")[0] for dep in config["project"]["dependencies"]}
    assert {"torch", "gin-config", "mlflow", "transformers", "segment-anything"} <= names


def _dependencies() -> list[str]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def _lock() -> dict[str, str]:
    """constraints.txt as name -> the exact version it pins (names normalised as pip does)."""
    pins = {}
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version and not any(c in version for c in "<>=!~*, "), f"constraints.txt: {line!r} is no pin"
            pins[canonicalize_name(name)] = version
    return pins


def test_every_dependency_has_an_exact_version_in_the_lock_within_its_range():
    lock = _lock()
    for requirement in map(Requirement, _dependencies()):
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{requirement.name} (pyproject.toml) has no exact version in constraints.txt"
        assert requirement.specifier.contains(lock[name], prereleases=True), (requirement, lock[name])


def test_the_lock_holds_what_the_dependencies_need():
    """Every distribution the dependencies pull in, as installed here, is pinned (a transitive one too)."""
    lock = _lock()
    wanted = [canonicalize_name(Requirement(r).name) for r in _dependencies()]
    seen: set[str] = set()
    while wanted:
        name = wanted.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue  # an optional extra's dependency that is not installed
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                wanted.append(canonicalize_name(requirement.name))
    installed = {n for n in seen if _installed(n)}
    assert installed <= set(lock), f"dependencies missing from constraints.txt: {sorted(installed - set(lock))}"


def _installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_installed_distribution_carries_no_top_level_packages():
    # Look in site-packages only: the checkout itself (on sys.path) may hold a build's egg-info.
    site = sysconfig.get_paths()["purelib"]
    found = [d for d in importlib.metadata.distributions(path=[site]) if d.metadata["Name"] == "sam3d-bench"]
    for dist in found:
        top = {str(f).split("/")[0] for f in dist.files or []}
        assert not top & {"datasets", "bench", "methods", "infra"}, top
    for name in ("datasets", "bench", "methods", "infra"):
        assert not (pathlib.Path(site) / name).exists() or name == "datasets" and _is_hugging_face(site)


def _is_hugging_face(site: str) -> bool:
    """A `datasets` folder in site-packages is fine if it is Hugging Face's, not ours."""
    return any(d.metadata["Name"] == "datasets" for d in importlib.metadata.distributions(path=[site]))


_PROBE = r"""
import sys, tempfile, os
import datasets, bench
assert datasets.__file__.startswith(sys.argv[1]), datasets.__file__
import torch, transformers
config = transformers.Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, image_size=28, patch_size=14)
out = transformers.Dinov2Model(config)(pixel_values=torch.zeros(1, 3, 28, 28)).last_hidden_state
assert out.shape == (1, 5, 16), out.shape
transformers.utils.is_datasets_available()  # must answer, not crash
import mlflow
from mlflow.tracking import MlflowClient
store = tempfile.mkdtemp()
client = MlflowClient(f"sqlite:///{store}/m.db")
exp = client.create_experiment("probe", artifact_location=f"file://{store}/a")
run = client.create_run(exp)
client.log_metric(run.info.run_id, "x/AP25", 1.0)
client.set_terminated(run.info.run_id)
assert client.get_run(run.info.run_id).data.metrics["x/AP25"] == 1.0
print("ok")
"""


def test_transformers_and_mlflow_work_with_the_checkout_on_the_path():
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", _PROBE, str(REPO_ROOT)], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]

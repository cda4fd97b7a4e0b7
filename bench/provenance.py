"""What produced a result: git commit, library versions, machine. Recorded as MLflow tags and in checkpoints."""
from __future__ import annotations

import importlib.metadata
import platform
import subprocess

from bench.config import REPO_ROOT

_LIBRARIES = ("torch", "numpy", "scipy", "gin-config", "mlflow", "transformers", "segment-anything")


def git_commit() -> tuple[str, bool]:
    """(commit hash, whether the work tree has uncommitted changes); ("unknown", False) outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                                capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
    return commit, bool(status.strip())


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape the numbers ("absent" where not installed)."""
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def provenance_tags() -> dict[str, str]:
    """Tags for a run: git commit and dirtiness, library versions, platform."""
    commit, dirty = git_commit()
    tags = {"git_commit": commit, "git_dirty": str(dirty).lower(), "mlflow.source.git.commit": commit,
            "platform": platform.platform()}
    tags.update({f"version.{name}": version for name, version in library_versions().items()})
    return tags

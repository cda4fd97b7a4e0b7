"""Shared pytest fixtures: repository paths, the real-data folder, a clean gin state."""
from __future__ import annotations

import pathlib

import gin
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
REAL_DATA = REPO_ROOT.parent / "shared" / "data" / "real"


@pytest.fixture(autouse=True)
def _clean_gin():
    """Every test starts and ends with an empty gin config (gin state is global)."""
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture
def real_data() -> pathlib.Path:
    """The folder of real ScanNet / SUN RGB-D / S3DIS excerpts; skips the test where it is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data excerpts not found at {REAL_DATA} (../shared/data/real beside the checkout)")
    return REAL_DATA


@pytest.fixture
def one_thread():
    """Run a test with one torch thread: tiny models on a busy 2-core machine are much faster that way."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

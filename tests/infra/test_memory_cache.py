"""The per-process memory of loaded cache files: a byte budget, first come first kept, never stale."""
from __future__ import annotations

import os

import numpy as np
import pytest

from datasets.types import Scene
from infra.memory_cache import ByteBudgetCache, array_bytes, file_key, freeze_arrays


def test_values_are_kept_until_the_budget_is_spent():
    cache = ByteBudgetCache(max_bytes=100)
    assert cache.put("a", "A", 60) == "A" and cache.get("a") == "A"
    assert cache.put("b", "B", 50) == "B" and cache.get("b") is None  # over budget: returned, not kept
    assert cache.put("c", "C", 40) == "C" and cache.get("c") == "C"
    assert cache.used == 100
    assert cache.get(None) is None and cache.put(None, "D", 0) == "D" and cache.get(None) is None
    cache.clear()
    assert cache.get("a") is None and cache.used == 0


def test_file_key_changes_when_the_file_is_rewritten(tmp_path):
    path = tmp_path / "f.npz"
    assert file_key(path) is None
    path.write_bytes(b"12345")
    first = file_key(path, "groups")
    os.utime(path, ns=(1, 2))
    assert file_key(path, "groups") != first
    assert file_key(path, "groups")[-1] == "groups"


def test_frozen_arrays_cannot_be_changed_by_a_consumer():
    scene = Scene("s", np.zeros((4, 3), np.float32), np.zeros((4, 3), np.uint8), np.zeros(4, np.int32),
                  np.zeros(4, np.int32), np.zeros((0, 7), np.float32), np.zeros(0, np.int32), np.zeros(0, np.int32))
    assert array_bytes(scene) == 48 + 12 + 16 + 16
    freeze_arrays(scene)
    with pytest.raises(ValueError):
        scene.points[0, 0] = 1.0

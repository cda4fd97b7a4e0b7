"""Whole-scene cache: equal to the generated scenes, generated once, damaged files regenerated."""
from __future__ import annotations

import numpy as np

from datasets.scene_cache import CachedScenes
from datasets.synthetic import SyntheticIndoor


def _dataset(**kw):
    return SyntheticIndoor(**{"num_train": 2, "num_val": 1, "frames_per_scene": 1, "image_hw": (40, 56), **kw})


def test_cached_scenes_equal_generated_ones_and_are_generated_once(tmp_path, monkeypatch):
    dataset = _dataset()
    cached = CachedScenes(dataset, "train", tmp_path)
    scene, generated = cached[1], dataset.scene("train", 1)
    for field in ("points", "colors", "semantic", "instance", "boxes", "box_labels", "box_instance"):
        assert np.array_equal(getattr(scene, field), getattr(generated, field)), field
    assert scene.frames == [] and len(cached) == 2
    calls = []
    original = SyntheticIndoor.scene
    monkeypatch.setattr(SyntheticIndoor, "scene", lambda self, s, i: calls.append(i) or original(self, s, i))
    again = CachedScenes(dataset, "train", tmp_path)
    again[0], again[1]
    assert calls == []


def test_damaged_scene_file_is_regenerated(tmp_path, capsys):
    dataset = _dataset()
    cached = CachedScenes(dataset, "train", tmp_path)
    path = cached.folder / f"{cached.ids[0]}.npz"
    path.write_bytes(path.read_bytes()[:50])
    assert np.array_equal(cached[0].points, dataset.scene("train", 0).points)
    assert "regenerating" in capsys.readouterr().out
    assert np.array_equal(CachedScenes(dataset, "train", tmp_path)[0].points, cached[0].points)


def test_cache_key_follows_the_dataset_configuration(tmp_path):
    assert CachedScenes(_dataset(), "train", tmp_path).folder != CachedScenes(_dataset(seed=1), "train", tmp_path).folder

"""Downstream protocols: which scenes and labels a fine-tuning run sees, learning-rate groups, metric keys."""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from datasets.types import IGNORE_INDEX, Scene
from infra.errors import DataError
from methods.downstream.scene_batch import scene_sample
from methods.encoder import EncoderSpec
from methods.finetune import DetrDetection, FinetuneRow, SegmentationFinetune
from methods.protocols import FullFinetune, LimitedAnnotations, LimitedReconstructions, LinearProbe
from methods.tokenizers import KnnTokenizer

TOKENS = KnnTokenizer(num_tokens=8, group_size=4)


def _scenes(n):
    return types.SimpleNamespace(ids=[f"scene{i:02d}" for i in range(n)])


def _scene(n=50, scene_id="s"):
    rng = np.random.default_rng(0)
    semantic = rng.integers(0, 3, n).astype(np.int32)
    semantic[:10] = IGNORE_INDEX
    return Scene(scene_id, rng.normal(size=(n, 3)).astype(np.float32), np.zeros((n, 3), np.uint8), semantic,
                 np.zeros(n, np.int32), np.zeros((0, 7), np.float32), np.zeros(0, np.int32), np.zeros(0, np.int32))


def test_limited_reconstructions_are_nested_and_sized():
    scenes = _scenes(40)
    small, large = LimitedReconstructions(5).scene_indices(scenes), LimitedReconstructions(20).scene_indices(scenes)
    assert (len(small), len(large)) == (2, 8) and set(small) <= set(large)
    assert LimitedReconstructions(1).scene_indices(scenes) and len(LimitedReconstructions(1).scene_indices(scenes)) == 1
    assert LimitedReconstructions(100).scene_indices(scenes) == list(range(40))
    assert LimitedReconstructions(20).name == "lr20" and LimitedReconstructions(2.5).name == "lr2.5"
    with pytest.raises(ValueError, match="LimitedReconstructions.percent"):
        LimitedReconstructions(0)


def test_limited_reconstructions_read_an_official_list(tmp_path):
    (tmp_path / "10.txt").write_text("scene03\nscene01\n")
    assert LimitedReconstructions(10, scene_list=str(tmp_path / "10.txt")).scene_indices(_scenes(5)) == [1, 3]
    (tmp_path / "bad.txt").write_text("scene99\n")
    with pytest.raises(DataError, match="not in the training split.*scene99"):
        LimitedReconstructions(10, scene_list=str(tmp_path / "bad.txt")).scene_indices(_scenes(5))


def test_limited_annotations_draw_labelled_points_per_scene():
    scene = _scene()
    points = LimitedAnnotations(5).labelled_points(scene)
    assert len(points) == 5 and np.all(points >= 10)  # only points that have a label
    assert np.array_equal(points, LimitedAnnotations(5).labelled_points(scene))
    other = LimitedAnnotations(5).labelled_points(_scene(scene_id="t"))
    assert not np.array_equal(points, other)  # each scene its own draw
    assert len(LimitedAnnotations(500).labelled_points(scene)) == 40  # all labelled points when fewer


def test_limited_annotations_read_an_official_points_file(tmp_path):
    torch.save({"s": torch.tensor([3, 1, 7])}, tmp_path / "points3")
    assert LimitedAnnotations(3, annotations=str(tmp_path / "points3")).labelled_points(_scene()).tolist() == [1, 3, 7]
    torch.save({"s": torch.tensor([3, 100])}, tmp_path / "far")
    with pytest.raises(DataError, match=r"scene 's': 1 of 2 indices are outside 0..49 \(first: 100\)"):
        LimitedAnnotations(2, annotations=str(tmp_path / "far")).labelled_points(_scene())
    with pytest.raises(DataError, match="no labelled points for scene 'other'"):
        LimitedAnnotations(3, annotations=str(tmp_path / "points3")).labelled_points(_scene(scene_id="other"))


def test_labelled_points_survive_sampling_and_others_are_ignored():
    scene = _scene(n=200)
    keep = np.array([12, 50, 199])
    for seed in range(5):
        sample = scene_sample(scene, 20, seed, labelled=keep)
        assert set(keep) <= set(sample["index"]) and len(sample["index"]) == 20
        labelled = sample["labels"] != IGNORE_INDEX
        assert sorted(sample["index"][labelled]) == [i for i in keep if scene.semantic[i] != IGNORE_INDEX]
        assert np.array_equal(sample["labels"][labelled], scene.semantic[sample["index"][labelled]])
    assert np.array_equal(scene_sample(scene, 20, 3)["index"], scene_sample(scene, 20, 3)["index"])


def test_encoder_learning_rate_groups_follow_the_scale_and_layer_decay():
    spec = SegmentationFinetune(tokenizer=TOKENS, encoder_lr_scale=0.5, layer_decay=0.5)
    encoder = EncoderSpec(width=16, depth=2, heads=2, embed_channels=(8, 16, 32)).build()
    model = torch.nn.Module()
    model.encoder, model.head = encoder, torch.nn.Linear(16, 3)
    scale_of = {id(p): g["lr_scale"] for g in spec.param_groups(model) for p in g["params"]}
    assert scale_of[id(model.head.weight)] == 1.0
    assert scale_of[id(encoder.stack.blocks[1].mlp[0].weight)] == 0.5      # last block: the scale
    assert scale_of[id(encoder.stack.blocks[0].mlp[0].weight)] == 0.25     # one decay below it
    assert scale_of[id(encoder.pos_embed.mlp[0].weight)] == 0.125          # embeddings: two decays
    assert scale_of[id(encoder.stack.norm.weight)] == 0.5
    assert len(scale_of) == sum(1 for _ in model.parameters())
    default = SegmentationFinetune(tokenizer=TOKENS).param_groups(model)
    assert [g["lr_scale"] for g in default] == [1.0]  # one rate for everything [prior]


def test_metric_keys_name_the_protocol_and_rows_refuse_duplicates():
    full = SegmentationFinetune(tokenizer=TOKENS)
    probe = SegmentationFinetune(tokenizer=TOKENS, protocol=LinearProbe())
    lr = SegmentationFinetune(tokenizer=TOKENS, protocol=LimitedReconstructions(10))
    la = SegmentationFinetune(tokenizer=TOKENS, protocol=LimitedAnnotations(50))
    assert [s.metric_key for s in (full, probe, lr, la)] == ["seg", "seg-probe", "seg-lr10", "seg-la50"]
    assert full.key("none", "scenes", 0) != probe.key("none", "scenes", 0)
    FinetuneRow(segmentation=full, protocols=[probe, lr, la])
    with pytest.raises(ValueError, match="same metric key"):
        FinetuneRow(segmentation=full, protocols=[SegmentationFinetune(tokenizer=TOKENS, protocol=FullFinetune())])
    with pytest.raises(ValueError, match="applies to segmentation"):
        DetrDetection(tokenizer=TOKENS, protocol=LinearProbe())
    assert DetrDetection(tokenizer=TOKENS, protocol=LimitedReconstructions(20)).metric_key == "det-lr20"

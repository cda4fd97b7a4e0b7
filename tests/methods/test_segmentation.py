"""Segmentation fine-tuning (methods/downstream): scene batches, propagation, head, objective, loading."""
from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datasets.synthetic import SyntheticIndoor
from datasets.types import Scene
from methods.downstream import (
    PointSegmenter,
    SceneSamples,
    SegmentationObjective,
    augment_sample,
    collate_scenes,
    load_pretrained_encoder,
    predict_scene_labels,
    propagate_features,
    scene_sample,
    scene_tokens,
)
from methods.downstream import segmentation as segmentation_module
from methods.downstream.segmentation import NeighbourMemo, mix_features, point_neighbours
from methods.encoder import TransformerEncoder
from methods.tokenizers import KnnTokenizer
from tests.geometry import points_in_boxes

NUM_CLASSES = 20


@pytest.fixture(scope="module")
def scene() -> Scene:
    return SyntheticIndoor(num_train=1, num_val=1, frames_per_scene=1, image_hw=(48, 64)).scene("train", 0)


pytestmark = pytest.mark.usefixtures("one_thread")


def _encoder(width: int = 32, seed: int = 0) -> TransformerEncoder:
    torch.manual_seed(seed)
    return TransformerEncoder(width=width, depth=1, heads=2, drop_path=0.0, embed_channels=(16, 32, 64))


def _tokenizer() -> KnnTokenizer:
    return KnnTokenizer(num_tokens=32, group_size=16)


def _batch(scene: Scene, num_points: int = 256, count: int = 2) -> dict[str, torch.Tensor]:
    data = SceneSamples([scene] * count, num_points, _tokenizer(), seed=0, augment=False)
    return collate_scenes([data[i] for i in range(count)])


def _hand_scene(n: int = 50, boxes: int = 2) -> Scene:
    rng = np.random.default_rng(0)
    return Scene(scene_id="hand", points=rng.uniform(0, 4, (n, 3)).astype(np.float32),
                 colors=rng.integers(0, 256, (n, 3)).astype(np.uint8),
                 semantic=rng.integers(-1, 5, n).astype(np.int32), instance=np.zeros(n, np.int32),
                 boxes=rng.uniform(0.5, 3, (boxes, 7)).astype(np.float32),
                 box_labels=np.arange(boxes, dtype=np.int32), box_instance=np.zeros(boxes, np.int32))


# --- feature propagation -------------------------------------------------------------------------

# The point (0.5, 0, 0) has its 3 valid centres at distances 0.5, 0.5 and sqrt(0.25 + 4) = sqrt(4.25).
HAND_WEIGHTS = {
    2.0: [1 / 0.25, 1 / 0.25, 1 / 4.25],  # 1/d^2: PointNet++ / Point-MAE [prior], the default
    1.0: [1 / 0.5, 1 / 0.5, 1 / math.sqrt(4.25)],  # 1/d
}


@pytest.mark.parametrize("power", sorted(HAND_WEIGHTS))
def test_propagation_hand_case(power):
    centers = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 2, 0], [0.5, 0, 0]]])
    valid = torch.tensor([[True, True, True, False]])  # the padding centre sits on the second point
    features = torch.tensor([[[1.0, 0], [0, 1], [2, 2], [1e6, 1e6]]])
    points = torch.tensor([[[0.0, 0, 0], [0.5, 0, 0]]])
    out = propagate_features(points, centers, valid, features, k=3, power=power)
    torch.testing.assert_close(out[0, 0], features[0, 0])  # a point on a centre gets its feature
    w = torch.tensor(HAND_WEIGHTS[power])
    w = w / w.sum()  # 2.0: [0.4857, 0.4857, 0.0286]; 1.0: [0.4459, 0.4459, 0.1082]
    torch.testing.assert_close(out[0, 1], w[0] * features[0, 0] + w[1] * features[0, 1] + w[2] * features[0, 2])


def test_propagation_defaults_to_inverse_squared_distance_and_checks_the_power():
    gen = torch.Generator().manual_seed(2)
    points, centers = torch.randn(1, 30, 3, generator=gen), torch.randn(1, 5, 3, generator=gen)
    valid, features = torch.ones(1, 5, dtype=torch.bool), torch.randn(1, 5, 4, generator=gen)
    default = propagate_features(points, centers, valid, features)
    torch.testing.assert_close(default, propagate_features(points, centers, valid, features, power=2.0))
    assert not torch.allclose(default, propagate_features(points, centers, valid, features, power=1.0))
    with pytest.raises(ValueError, match="power: expected > 0"):
        propagate_features(points, centers, valid, features, power=0.0)


def test_propagation_weights_sum_to_one_and_padding_is_never_used():
    gen = torch.Generator().manual_seed(0)
    points, centers = torch.randn(2, 40, 3, generator=gen), torch.randn(2, 6, 3, generator=gen)
    valid = torch.tensor([[True] * 6, [True, True] + [False] * 4])  # second scene: fewer than k valid
    features = torch.ones(2, 6, 4)
    features[~valid] = 1e6
    torch.testing.assert_close(propagate_features(points, centers, valid, features), torch.ones(2, 40, 4))
    none_valid = propagate_features(points, centers, torch.zeros(2, 6, dtype=torch.bool), features)
    assert torch.all(none_valid == 0)


def test_propagation_chunks_agree_and_gradient_reaches_features():
    gen = torch.Generator().manual_seed(1)
    points, centers = torch.randn(2, 50, 3, generator=gen), torch.randn(2, 8, 3, generator=gen)
    valid = torch.ones(2, 8, dtype=torch.bool)
    features = torch.randn(2, 8, 5, generator=gen, requires_grad=True)
    whole = propagate_features(points, centers, valid, features, chunk=None)
    torch.testing.assert_close(propagate_features(points, centers, valid, features, chunk=7), whole)
    whole.sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0


def test_mixing_equals_a_gather_along_the_tokens_values_and_gradients():
    gen = torch.Generator().manual_seed(3)
    points, centers = torch.randn(2, 60, 3, generator=gen), torch.randn(2, 9, 3, generator=gen)
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, 6:] = False
    idx, weight = point_neighbours(points, centers, valid, k=3)
    assert idx.shape == weight.shape == (2, 60, 3) and not weight.requires_grad
    features = torch.randn(2, 9, 5, generator=gen, requires_grad=True)
    ours = mix_features(features, idx, weight)
    gathered = features.gather(1, idx.reshape(2, -1, 1).expand(-1, -1, 5)).reshape(2, 60, 3, 5)
    reference = (weight.unsqueeze(-1) * gathered).sum(dim=2)
    assert torch.equal(ours, reference)
    upstream = torch.randn(ours.shape, generator=gen)
    assert torch.equal(torch.autograd.grad(ours, features, upstream)[0],
                       torch.autograd.grad(reference, features, upstream)[0])
    assert torch.equal(ours, propagate_features(points, centers, valid, features))


def test_neighbour_memo_serves_the_same_search_only_for_the_same_content(monkeypatch):
    calls = []
    real = segmentation_module.point_neighbours
    monkeypatch.setattr(segmentation_module, "point_neighbours", lambda *a: calls.append(a) or real(*a))
    gen = torch.Generator().manual_seed(4)
    points, centers = torch.randn(1, 40, 3, generator=gen), torch.randn(1, 6, 3, generator=gen)
    valid = torch.ones(1, 6, dtype=torch.bool)
    memo = NeighbourMemo(1 << 20)
    first = memo(points, centers, valid, 3, 2.0)
    again = memo(points.clone(), centers.clone(), valid.clone(), 3, 2.0)  # equal content, other tensors
    assert len(calls) == 1 and again[0] is first[0] and again[1] is first[1]
    for k, power in ((3, 2.0), (2, 2.0), (3, 1.0)):
        assert torch.equal(memo(points, centers, valid, k, power)[1], real(points, centers, valid, k, power)[1])
    moved = points.clone()
    moved[0, 7, 1] += 1e-3
    fewer = valid.clone()
    fewer[0, 5] = False
    for args in ((moved, centers, valid), (points, centers + 1e-3, valid), (points, centers, fewer)):
        torch.testing.assert_close(memo(*args, 3, 2.0), real(*args, 3, 2.0), rtol=0, atol=0)
    assert len(calls) == 1 + 2 + 3  # the first, the two other (k, power), the three other contents
    tiny = NeighbourMemo(100)  # smaller than one result: computed every time, never kept
    tiny(points, centers, valid, 3, 2.0)
    tiny(points, centers, valid, 3, 2.0)
    assert tiny.cache.used == 0 and len(calls) == 8


# --- scene samples and batches -------------------------------------------------------------------

def test_scene_sample_is_deterministic_centred_and_maps_back(scene):
    a, b = scene_sample(scene, 500, seed=3), scene_sample(scene, 500, seed=3)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["index"], scene_sample(scene, 500, seed=4)["index"])
    assert len(np.unique(a["index"])) == 500  # without replacement
    np.testing.assert_allclose(a["offset"], scene.points.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(a["xyz"] + a["offset"], scene.points[a["index"]], atol=1e-5)
    np.testing.assert_allclose(a["colors"] * 255, scene.colors[a["index"]], atol=1e-4)
    np.testing.assert_array_equal(a["labels"], scene.semantic[a["index"]])
    assert a["xyz"].dtype == np.float32 and a["labels"].dtype == np.int64 and a["box_labels"].dtype == np.int64
    small = _hand_scene(n=50)
    over = scene_sample(small, 80, seed=0)  # more than the scene has: with replacement
    assert over["xyz"].shape == (80, 3) and set(over["index"]) <= set(range(50))


def test_boxes_shift_with_the_points(scene):
    s = scene_sample(scene, 1500, seed=0)
    np.testing.assert_allclose(s["boxes"][:, 3:], scene.boxes[:, 3:])
    np.testing.assert_array_equal(points_in_boxes(s["xyz"], s["boxes"], eps=1e-4),
                                  points_in_boxes(scene.points[s["index"]], scene.boxes, eps=1e-4))


@pytest.mark.parametrize("seed", range(4))
def test_augmentation_rotates_points_and_boxes_consistently(scene, seed):
    s = scene_sample(scene, 2000, seed=seed)
    aug = augment_sample(s, np.random.default_rng(seed))
    inside = points_in_boxes(s["xyz"], s["boxes"])
    assert inside.sum() > 50
    # A box's points stay inside the moved box (faces grown / shrunk by float tolerance).
    assert np.all(points_in_boxes(aug["xyz"], aug["boxes"], eps=1e-4)[inside])
    assert not np.any(points_in_boxes(aug["xyz"], aug["boxes"], eps=-1e-4)[~inside])
    ratio = aug["boxes"][:, 3:6] / s["boxes"][:, 3:6]  # isotropic scale in [0.8, 1.2]
    np.testing.assert_allclose(ratio, ratio[0, 0], rtol=1e-5)
    assert 0.8 <= ratio[0, 0] <= 1.2
    np.testing.assert_allclose(aug["xyz"][:, 2], ratio[0, 0] * s["xyz"][:, 2], rtol=1e-4, atol=1e-5)
    assert np.all(np.abs(aug["boxes"][:, 6]) <= math.pi)
    np.testing.assert_array_equal(aug["labels"], s["labels"])


def test_scene_samples_change_with_epoch_and_carry_tokens(scene):
    data = SceneSamples([scene], 300, _tokenizer(), seed=0, augment=False)
    first = data[0]
    assert first["rel"].shape == (32, 16, 3) and first["centers"].shape == (32, 3) and first["valid"].all()
    np.testing.assert_allclose(first["xyz"] + first["offset"], scene.points[first["index"]], atol=1e-5)
    np.testing.assert_array_equal(data[0]["index"], first["index"])
    data.epoch = 1
    assert not np.array_equal(data[0]["index"], first["index"])
    tokens = scene_tokens(first["xyz"], _tokenizer(), seed=0)
    assert set(tokens) == {"rel", "centers", "valid"} and tokens["valid"].dtype == torch.bool


def test_collate_pads_boxes_to_the_batch_max():
    with_boxes, no_boxes = _hand_scene(boxes=3), _hand_scene(boxes=0)
    items = [{**scene_sample(sc, 40, seed=0), **scene_tokens(scene_sample(sc, 40, seed=0)["xyz"], _tokenizer(), 0)}
             for sc in (no_boxes, with_boxes)]
    batch = collate_scenes(items)
    assert batch["points"].shape == (2, 40, 3) and batch["colors"].shape == (2, 40, 3)
    assert batch["labels"].shape == (2, 40) and batch["labels"].dtype == torch.int64
    assert batch["rel"].shape == (2, 32, 16, 3) and batch["valid"].shape == (2, 32)
    assert batch["gt_boxes"].shape == (2, 3, 7)
    assert batch["gt_labels"].tolist() == [[-1, -1, -1], [0, 1, 2]]
    assert batch["gt_valid"].tolist() == [[False] * 3, [True] * 3]
    empty = collate_scenes(items[:1])
    assert empty["gt_boxes"].shape == (1, 1, 7) and not empty["gt_valid"].any()


# --- model and objective -------------------------------------------------------------------------

def test_point_segmenter_output_shape_and_checks(scene):
    batch = _batch(scene, num_points=200)
    assert PointSegmenter(_encoder(), NUM_CLASSES)(batch).shape == (2, 200, NUM_CLASSES)
    assert PointSegmenter(_encoder(), 4, point_channels=3).eval()(batch).shape == (2, 200, 4)
    with pytest.raises(ValueError, match="protocol"):
        PointSegmenter(_encoder(), 4, protocol="linear")
    with pytest.raises(ValueError, match="propagation_power: expected > 0"):
        PointSegmenter(_encoder(), 4, propagation_power=-1)


def test_point_segmenter_passes_its_propagation_power(scene, monkeypatch):
    import methods.downstream.segmentation as segmentation

    powers = []
    original = segmentation.propagate_features

    def spy(*args, **kwargs):
        bound = inspect.signature(original).bind(*args, **kwargs)
        bound.apply_defaults()
        powers.append(bound.arguments["power"])
        return original(*args, **kwargs)

    monkeypatch.setattr(segmentation, "propagate_features", spy)
    batch = _batch(scene, num_points=50)
    PointSegmenter(_encoder(), NUM_CLASSES).eval()(batch)
    PointSegmenter(_encoder(), NUM_CLASSES, propagation_power=1.0).eval()(batch)
    assert powers == [2.0, 1.0]


def test_segmentation_finetune_exposes_the_power_to_gin():
    import gin

    from bench.config import parse_config
    from methods.finetune import SegmentationFinetune

    parse_config(["demo.gin"], ["SegmentationFinetune.propagation_power = 1"])
    assert gin.get_configurable(SegmentationFinetune)(tokenizer=None).propagation_power == 1.0
    assert SegmentationFinetune(tokenizer=None).propagation_power == 2.0  # the default, without gin


def test_objective_loss_decreases(scene):
    torch.manual_seed(0)
    objective = SegmentationObjective(PointSegmenter(_encoder(), NUM_CLASSES)).train()
    batch = _batch(scene)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = objective(batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(float(out["loss"].detach()))
        assert 0.0 <= float(out["acc"]) <= 1.0 and not out["acc"].requires_grad
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])


def test_ignored_points_do_not_contribute(scene):
    objective = SegmentationObjective(PointSegmenter(_encoder(), NUM_CLASSES)).eval()
    batch = _batch(scene)
    ignored = torch.zeros_like(batch["labels"], dtype=torch.bool)
    ignored[:, ::3] = True
    batch["labels"] = torch.where(ignored, -1, batch["labels"])
    # Eval mode: each point's logits depend only on itself and the tokens, so dropping the
    # ignored points must leave the loss unchanged.
    kept = dict(batch, **{k: torch.stack([batch[k][b][~ignored[b]] for b in range(2)])
                          for k in ("points", "colors", "labels")})
    with torch.no_grad():
        loss = objective(batch)["loss"]
        torch.testing.assert_close(loss, objective(kept)["loss"])
        logits = objective.model(batch)
        torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, NUM_CLASSES), batch["labels"].reshape(-1),
                                                         ignore_index=-1))
    weights = torch.linspace(0.5, 2.0, NUM_CLASSES)
    weighted = SegmentationObjective(objective.model, class_weights=weights).eval()
    with torch.no_grad():
        torch.testing.assert_close(weighted(batch)["loss"], F.cross_entropy(
            logits.reshape(-1, NUM_CLASSES), batch["labels"].reshape(-1), weight=weights, ignore_index=-1))
    batch["labels"] = torch.full_like(batch["labels"], -1)
    out = objective(batch)  # nothing labelled: zero loss, finite (zero) gradients
    out["loss"].backward()
    assert float(out["loss"].detach()) == 0.0 and float(out["acc"]) == 0.0
    assert all(torch.isfinite(p.grad).all() for p in objective.parameters() if p.grad is not None)


def test_probe_protocol_keeps_the_encoder_frozen_and_in_eval_mode(scene):
    model = PointSegmenter(_encoder(), NUM_CLASSES, protocol="probe")
    objective = SegmentationObjective(model).train()
    assert not model.encoder.training and model.fc1.training
    assert not any(p.requires_grad for p in model.encoder.parameters())
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}  # BatchNorm buffers too
    head_before = model.fc2.weight.clone()
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=1e-2)
    batch = _batch(scene)
    for _ in range(3):
        optimizer.zero_grad()
        objective(batch)["loss"].backward()
        optimizer.step()
    for key, value in model.encoder.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert not torch.equal(model.fc2.weight, head_before)
    full = PointSegmenter(_encoder(), NUM_CLASSES).train()
    assert full.encoder.training and all(p.requires_grad for p in full.encoder.parameters())


def test_predict_scene_labels_labels_every_point(scene):
    model = PointSegmenter(_encoder(), NUM_CLASSES)
    model(_batch(scene))  # a training-mode pass so BatchNorm running statistics are not trivial
    labels = predict_scene_labels(model, scene, _tokenizer(), num_points=400, seed=5, chunk=1000)
    assert labels.shape == (scene.num_points,) and scene.num_points > 400
    assert labels.dtype == np.int32 and labels.min() >= 0 and labels.max() < NUM_CLASSES
    assert model.training  # mode restored
    np.testing.assert_array_equal(predict_scene_labels(model, scene, _tokenizer(), 400, seed=5, chunk=97), labels)
    # On the sampled points it agrees with the batch forward pass of the same sample and tokens.
    sample = scene_sample(scene, 400, seed=5)
    batch = collate_scenes([{**sample, **scene_tokens(sample["xyz"], _tokenizer(), seed=5)}])
    with torch.no_grad():
        direct = model.eval()(batch)[0].argmax(-1).numpy()
    np.testing.assert_array_equal(labels[sample["index"]], direct)
    # A second model gets the first one's neighbours from the memo, and the labels of a search of its own.
    other = PointSegmenter(_encoder(seed=1), NUM_CLASSES).eval()
    used = segmentation_module.EVAL_NEIGHBOURS.cache.used
    served = predict_scene_labels(other, scene, _tokenizer(), 400, seed=5, chunk=1000)
    assert segmentation_module.EVAL_NEIGHBOURS.cache.used == used
    with torch.no_grad():
        tokens = {k: v[None] for k, v in scene_tokens(sample["xyz"], _tokenizer(), seed=5).items()}
        xyz = torch.from_numpy(scene.points - sample["offset"])[None]
        colors = torch.from_numpy(scene.colors.astype(np.float32) / 255)[None]
        logits = other.classify(other.encode(tokens["rel"], tokens["centers"], tokens["valid"]), tokens["centers"],
                                tokens["valid"], xyz, colors, chunk=1000)
    np.testing.assert_array_equal(served, logits[0].argmax(-1).numpy())


# --- pretrained encoder loading ------------------------------------------------------------------

def test_load_pretrained_encoder_exact(capsys):
    source_state = _encoder(seed=1).state_dict()
    target = _encoder(seed=2)
    assert load_pretrained_encoder(target, source_state, "ckpt.pt") == {"missing": [], "unexpected": []}
    for key, value in target.state_dict().items():
        torch.testing.assert_close(value, source_state[key], rtol=0, atol=0)
    kept = {k: v.clone() for k, v in target.state_dict().items()}
    assert load_pretrained_encoder(target, None, "none") == {"missing": [], "unexpected": []}
    assert all(torch.equal(v, kept[k]) for k, v in target.state_dict().items())
    assert capsys.readouterr().out == ""


def test_load_pretrained_encoder_refuses_mismatches():
    with pytest.raises(ValueError, match="ckpt-w64") as info:
        load_pretrained_encoder(_encoder(), _encoder(width=64).state_dict(), "ckpt-w64")
    assert "\n" not in str(info.value) and "shape mismatch" in str(info.value) and "more" in str(info.value)
    state = _encoder().state_dict()
    del state["pos_embed.mlp.0.weight"]
    with pytest.raises(ValueError, match=r"missing 1 keys \[pos_embed.mlp.0.weight\]") as info:
        load_pretrained_encoder(_encoder(), state, "stage1")
    assert "\n" not in str(info.value) and "stage1" in str(info.value)


def test_load_pretrained_encoder_reports_unexpected_keys(capsys):
    state = dict(_encoder(seed=1).state_dict(), **{"decoder.w": torch.zeros(2), "head.b": torch.zeros(1)})
    target = _encoder(seed=2)
    assert load_pretrained_encoder(target, state, "stage2") == {"missing": [], "unexpected": ["decoder.w", "head.b"]}
    torch.testing.assert_close(target.state_dict()["pos_embed.mlp.0.weight"], state["pos_embed.mlp.0.weight"])
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "stage2" in out[0] and "decoder.w" in out[0]


def test_runs_through_the_shared_training_loop(scene, tmp_path):
    from methods.train import TrainSchedule, train

    model = PointSegmenter(_encoder(), NUM_CLASSES, protocol="probe")
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    data = SceneSamples([scene, scene, scene], 128, _tokenizer(), seed=0)
    schedule = TrainSchedule(epochs=2, batch_size=2, warmup_epochs=0, device="cpu", bf16=False)
    history = train(SegmentationObjective(model), data, collate_scenes, schedule, tmp_path / "seg.pt", seed=0)
    assert len(history) == 2 and {"loss", "acc", "lr"} <= set(history[0]) and data.epoch == 1
    assert all(torch.equal(v, before[k]) for k, v in model.encoder.state_dict().items())

"""Pretraining objectives (methods/objectives)."""
from __future__ import annotations

import gin
import pytest
import torch

from methods.encoder import DecoderSpec, EncoderSpec, TransformerEncoder
from methods.objectives import (Bridge3DStyle, DistillationWithMTP, MaskedTokenPrediction, PointMAE,
                                RegionDistillation, TokenSplit)
from methods.objectives.common import region_targets
from methods.reweighting import GroupBalancing, token_weights

B, G, K, C, R, W = 2, 8, 16, 12, 6, 32
ENC = EncoderSpec(width=W, depth=1, heads=2, drop_path=0.0)
DEC = DecoderSpec(depth=1, heads=2, drop_path=0.0)
GROUP_WEIGHTS = torch.tensor([0.1, 0.2, 0.3, 0.4])
# Region rows of each token's points, cycled over its K points: one id = SAM-like token, several =
# KNN-like token straddling regions (0 = no region), [] = padding token.
TOKEN_REGIONS = [
    [[1], [2], [3], [4, 5, 0], [0], [5], [1, 2], [3]],
    [[1], [2], [1, 3, 3], [0], [3], [1], [], []],
]
REGION_VALID = [[False, True, True, True, True, True], [False, True, True, True, False, False]]
REGION_GROUP = [[-1, 0, 1, 2, 3, 0], [-1, 3, 2, 0, -1, -1]]


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random batch consistent with the layout in ``methods.objectives.common``."""
    gen = torch.Generator().manual_seed(seed)
    valid = torch.tensor([[len(ids) > 0 for ids in frame] for frame in TOKEN_REGIONS])
    point_rows = torch.tensor([[[ids[k % len(ids)] if ids else 0 for k in range(K)] for ids in frame]
                               for frame in TOKEN_REGIONS])
    # Majority non-zero row, ties to the lower row, as the KNN tokenizer's ``majority``.
    counts = torch.zeros(B, G, R).scatter_add_(2, point_rows, torch.ones(B, G, K))
    counts[..., 0] = 0
    token_row = torch.where(counts.max(-1).values > 0, counts.argmax(-1), 0)
    region_valid = torch.tensor(REGION_VALID)
    table = torch.randn(B, R, C, generator=gen) * region_valid[..., None]
    rel = 0.1 * torch.randn(B, G, K, 3, generator=gen) * valid[..., None, None]
    centers = torch.randn(B, G, 3, generator=gen)
    return dict(rel=rel, centers=centers, valid=valid, point_rows=point_rows, token_row=token_row,
                region_table=table, region_valid=region_valid, region_group=torch.tensor(REGION_GROUP))


pytestmark = pytest.mark.usefixtures("one_thread")


SPECS = {
    "stage1": (RegionDistillation(encoder=ENC), {"distill"}),
    "mtp": (MaskedTokenPrediction(encoder=ENC, decoder=DEC), {"token", "ins"}),
    "stage1+mtp": (DistillationWithMTP(encoder=ENC, decoder=DEC), {"distill", "token", "ins"}),
    "pointmae": (PointMAE(encoder=ENC, decoder=DEC, num_points=K), {"recon"}),
    "bridge3d": (Bridge3DStyle(encoder=ENC, decoder=DEC, num_points=K), {"recon", "scene", "region"}),
}


def build(name: str, seed: int = 0, spec=None):
    torch.manual_seed(seed)
    spec = spec or SPECS[name][0]
    previous = ENC.build().state_dict() if isinstance(spec, MaskedTokenPrediction) else None
    return spec.build(C, GROUP_WEIGHTS, previous)


def fixed_mask(model, monkeypatch, mask: torch.Tensor) -> TokenSplit:
    monkeypatch.setattr(model.masker, "forward", lambda valid: mask)
    return TokenSplit.of(mask, make_batch()["valid"])


MASK = torch.tensor([[1, 0, 1, 1, 0, 1, 0, 1], [0, 1, 1, 0, 1, 0, 0, 0]], dtype=torch.bool)


def replay_loss(model, batch) -> float:
    """Loss of ``batch`` on the first mask of the model's seed (same masks before and after training)."""
    if hasattr(model, "masker"):
        model.masker.reset()
    with torch.no_grad():
        return float(model(batch)["loss"])


@pytest.mark.parametrize("name", list(SPECS))
def test_output_is_finite_scalar_loss_with_detached_components(name):
    model = build(name)
    out = model(make_batch())
    assert set(out) == {"loss"} | SPECS[name][1]
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"]) and out["loss"].requires_grad
    assert all(not out[k].requires_grad and torch.isfinite(out[k]) for k in SPECS[name][1])
    out["loss"].backward()
    assert isinstance(model.encoder, TransformerEncoder) and model.encoder.width == W
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


@pytest.mark.parametrize("name", list(SPECS))
def test_a_frame_without_tokens_gives_finite_losses_and_gradients(name):
    batch = make_batch()
    batch["valid"][1] = False
    model = build(name)
    out = model(batch)
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", list(SPECS))
def test_adamw_steps_decrease_the_loss(name):
    model = build(name).train()
    batch = make_batch()
    before = replay_loss(model, batch)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(30):
        opt.zero_grad()
        model(batch)["loss"].backward()
        opt.step()
    assert replay_loss(model, batch) < 0.9 * before


@pytest.mark.parametrize("name", list(SPECS))
def test_deterministic_for_a_seed(name):
    batch = make_batch()
    first = [build(name)(batch)["loss"] for _ in range(2)]
    assert torch.equal(*first)


@pytest.mark.parametrize("name", ["mtp", "stage1+mtp", "pointmae", "bridge3d"])
def test_masks_follow_the_seed(name):
    valid = make_batch()["valid"]
    a, b = build(name).masker, build(name).masker
    seq_a, seq_b = [a(valid) for _ in range(3)], [b(valid) for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(seq_a, seq_b))
    assert not torch.equal(seq_a[0], seq_a[1])  # the sequence advances
    other = SPECS[name][0].__class__(encoder=ENC, decoder=DEC, seed=1)
    assert not torch.equal(build(name, spec=other).masker(valid), seq_a[0])
    assert torch.equal(seq_a[0].sum(1), torch.tensor([5, 4]))  # round(0.6 * 8), round(0.6 * 6)
    assert not (seq_a[0] & ~valid).any()


def test_mask_generator_state_is_checkpointed():
    model = build("pointmae")
    valid = make_batch()["valid"]
    model.masker(valid)
    state = model.state_dict()
    expected = model.masker(valid)
    resumed = build("pointmae")
    resumed.load_state_dict(state)
    assert torch.equal(resumed.masker(valid), expected)


# ---- Stage 1 ----

def test_stage1_sam_like_tokens_get_exactly_their_region_feature():
    batch = make_batch()
    targets, has_target = region_targets(batch, C)
    rows = batch["point_rows"]
    sam = batch["valid"] & (rows == rows[..., :1]).all(-1) & (rows[..., 0] > 0)
    assert sam.sum() >= 8
    b, g = torch.nonzero(sam, as_tuple=True)
    assert torch.equal(targets[b, g], batch["region_table"][b, batch["token_row"][b, g]])
    mixed = targets[0, 3]  # points of rows 4, 5, 0 cycled over 16: 6 x row 4, 5 x row 5
    torch.testing.assert_close(mixed, (6 * batch["region_table"][0, 4] + 5 * batch["region_table"][0, 5]) / 11)
    assert not has_target[0, 4] and not has_target[1, 3] and not has_target[1, 6:].any()


def test_stage1_loss_is_zero_at_the_targets_and_ignores_tokens_without_region(monkeypatch):
    model = build("stage1")
    batch = make_batch()
    targets, has_target = region_targets(batch, C)
    noise = 100 * torch.randn(B, G, C)
    monkeypatch.setattr(model.head, "forward", lambda x: torch.where(has_target[..., None], targets, noise))
    assert float(model(batch)["loss"]) == 0.0


def test_stage1_drops_tokens_whose_region_row_has_no_group(monkeypatch):
    model = build("stage1")
    batch = make_batch()
    targets, _ = region_targets(batch, C)
    batch["region_group"][0, 3] = -1  # row of token (0, 2)
    wrong = targets.clone()
    wrong[0, 2] += 5.0
    monkeypatch.setattr(model.head, "forward", lambda x: wrong)
    assert float(model(batch)["loss"]) == 0.0


def test_stage1_reweighting_matches_hand_computation_and_changes_the_loss(monkeypatch):
    batch = make_batch()
    targets, has_target = region_targets(batch, C)
    losses = {}
    for enabled in (True, False):
        model = build("stage1", spec=RegionDistillation(encoder=ENC, balancing=GroupBalancing(enabled)))
        monkeypatch.setattr(model.head, "forward", lambda x: torch.zeros(B, G, C))
        losses[enabled] = float(model(batch)["loss"])
    per_token = targets.abs().mean(-1)
    group = torch.gather(batch["region_group"], 1, batch["token_row"])
    w = torch.where(has_target, GROUP_WEIGHTS[group.clamp_min(0)], 0.0)
    w = w / w[has_target].mean()
    assert losses[True] == pytest.approx(float((w * per_token)[has_target].mean()), rel=1e-5)
    assert losses[False] == pytest.approx(float(per_token[has_target].mean()), rel=1e-5)
    assert losses[True] != pytest.approx(losses[False], rel=1e-3)
    assert torch.equal(token_weights(group, None, has_target), has_target.float())


def test_stage1_warm_start_from_previous_and_mismatch_is_a_clear_error():
    previous = build("stage1").encoder.state_dict()
    model = RegionDistillation(encoder=ENC).build(C, GROUP_WEIGHTS, previous)
    assert all(torch.equal(v, previous[k]) for k, v in model.encoder.state_dict().items())
    with pytest.raises(ValueError, match="EncoderSpec"):
        RegionDistillation(encoder=EncoderSpec(width=16, depth=1, heads=2)).build(C, None, previous)
    with pytest.raises(ValueError, match="teacher_dim"):
        RegionDistillation(encoder=ENC).build(C + 1, None)(make_batch())


# ---- Stage 2 ----

def test_mtp_needs_previous():
    with pytest.raises(ValueError, match="previous"):
        MaskedTokenPrediction(encoder=ENC, decoder=DEC).build(C, None, None)


def test_mtp_student_init_from_teacher_or_scratch():
    torch.manual_seed(0)
    previous = ENC.build().state_dict()
    model = MaskedTokenPrediction(encoder=ENC, decoder=DEC).build(C, None, previous)
    for enc in (model.encoder, model.teacher):
        assert all(torch.equal(v, previous[k]) for k, v in enc.state_dict().items())
    scratch = MaskedTokenPrediction(encoder=ENC, decoder=DEC, init_student="scratch").build(C, None, previous)
    assert not all(torch.equal(v, previous[k]) for k, v in scratch.encoder.state_dict().items())
    assert all(torch.equal(v, previous[k]) for k, v in scratch.teacher.state_dict().items())
    with pytest.raises(ValueError, match="init_student"):
        MaskedTokenPrediction(init_student="stage1")


def test_mtp_teacher_is_frozen_through_training():
    model = build("mtp").train()
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert not model.teacher.training
    # Unfiltered on purpose: even an optimiser handed every parameter must leave the teacher alone.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    batch = make_batch()
    for _ in range(3):
        opt.zero_grad()
        model(batch)["loss"].backward()
        opt.step()
    assert all(torch.equal(v, before[k]) for k, v in model.teacher.state_dict().items())
    assert not torch.equal(model.encoder.stack.norm.weight, model.teacher.stack.norm.weight)


# ---- Stage 1 + MTP, baselines ----

def test_distillation_with_mtp_is_zero_at_its_targets(monkeypatch):
    model = build("stage1+mtp")
    batch = make_batch()
    split = fixed_mask(model, monkeypatch, MASK)
    targets, has_target = region_targets(batch, C)
    pooled = (targets * has_target[..., None]).sum(1) / has_target.sum(1, keepdim=True)
    monkeypatch.setattr(model.head, "forward", lambda x: split.visible(targets))
    monkeypatch.setattr(model.token_head, "forward", lambda x: split.masked(targets))
    monkeypatch.setattr(model.instance_head, "forward", lambda x: pooled)
    out = model(batch)
    assert float(out["loss"]) == 0.0


def test_pointmae_loss_is_zero_when_the_head_outputs_the_masked_points(monkeypatch):
    model = build("pointmae")
    batch = make_batch()
    split = fixed_mask(model, monkeypatch, MASK)
    target = split.masked(batch["rel"]).flatten(2)
    monkeypatch.setattr(model.head, "forward", lambda x: target)
    assert float(model(batch)["loss"]) == pytest.approx(0.0, abs=1e-12)
    monkeypatch.setattr(model.head, "forward", lambda x: target + 0.1)
    assert 0.0 < float(model(batch)["loss"]) <= 2 * 3 * 0.01  # a shift bounds both Chamfer terms


def test_bridge3d_is_zero_at_its_targets(monkeypatch):
    model = build("bridge3d")
    batch = make_batch()
    split = fixed_mask(model, monkeypatch, MASK)
    targets, _ = region_targets(batch, C)
    rv = batch["region_valid"]
    scene = (batch["region_table"] * rv[..., None]).sum(1) / rv.sum(1, keepdim=True)
    monkeypatch.setattr(model.head, "forward", lambda x: split.masked(batch["rel"]).flatten(2))
    monkeypatch.setattr(model.scene_head, "forward", lambda x: scene)
    monkeypatch.setattr(model.region_head, "forward", lambda x: split.visible(targets))
    assert float(model(batch)["loss"]) == pytest.approx(0.0, abs=1e-12)
    monkeypatch.setattr(model.scene_head, "forward", lambda x: scene + 0.5)  # SmoothL1: 0.5 * 0.5^2
    out = model(batch)
    assert float(out["scene"]) == pytest.approx(0.125) and float(out["loss"]) == pytest.approx(0.125)


def test_missing_batch_keys_are_named():
    batch = make_batch()
    del batch["region_group"]
    with pytest.raises(KeyError, match="region_group"):
        build("stage1")(batch)


# ---- gin ----

def _holder(first=None, second=None):
    return first, second


gin.external_configurable(_holder, name="ObjectiveHolder", module="tests.objectives")


def test_specs_are_gin_registered_and_wired_by_reference_with_scopes():
    gin.parse_config("""
        ObjectiveHolder.first = @stage1/RegionDistillation()
        ObjectiveHolder.second = @stage2/MaskedTokenPrediction()
        RegionDistillation.encoder = @EncoderSpec()
        RegionDistillation.balancing = @GroupBalancing()
        GroupBalancing.enabled = False
        MaskedTokenPrediction.encoder = @EncoderSpec()
        MaskedTokenPrediction.mask_ratio = 0.75
        stage1/EncoderSpec.width = 32
        stage2/EncoderSpec.width = 64
    """)
    first, second = gin.get_configurable("tests.objectives.ObjectiveHolder")()
    assert first.encoder.width == 32 and first.balancing == GroupBalancing(enabled=False)
    assert second.encoder.width == 64 and second.mask_ratio == 0.75 and second.decoder == DecoderSpec()
    for name in ("RegionDistillation", "MaskedTokenPrediction", "DistillationWithMTP", "PointMAE",
                 "Bridge3DStyle"):
        assert gin.get_configurable(name) is not None


def test_bad_mask_ratio_fails_at_configuration():
    with pytest.raises(ValueError, match="mask_ratio"):
        PointMAE(mask_ratio=1.0)

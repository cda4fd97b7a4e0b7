"""3D token encoder and masked-token decoder (methods/encoder.py)."""
from __future__ import annotations

import dataclasses

import gin
import pytest
import torch
import torch.nn.functional as F

from methods.encoder import DecoderSpec, Dropout, EncoderSpec, TransformerDecoder, TransformerEncoder, _PointNorm
from methods.token_masking import selection_index, take_tokens

B, G, K, W = 3, 6, 8, 32


def _tokens(seed: int = 0, channels: int = 3):
    gen = torch.Generator().manual_seed(seed)
    rel = torch.randn(B, G, K, channels, generator=gen)
    centers = torch.randn(B, G, 3, generator=gen)
    valid = torch.tensor([[True] * 6, [True] * 4 + [False] * 2, [True] * 2 + [False] * 4])
    return rel, centers, valid


def _encoder(**kw) -> TransformerEncoder:
    torch.manual_seed(0)
    spec = dict(width=W, depth=2, heads=4, drop_path=0.0) | kw
    return TransformerEncoder(**spec)


def test_output_shape_and_padding_rows_are_zero():
    rel, centers, valid = _tokens()
    out = _encoder().eval()(rel, centers, valid)
    assert out.shape == (B, G, W)
    assert torch.all(out[~valid] == 0)


def test_extra_point_channels():
    rel, centers, valid = _tokens(channels=6)
    out = _encoder(in_channels=6)(rel, centers, valid)
    assert out.shape == (B, G, W)
    with pytest.raises(ValueError, match="points"):
        _encoder()(rel, centers, valid)


@pytest.mark.parametrize("training", [False, True])
def test_padding_does_not_influence_valid_tokens(training):
    # Training mode too: BatchNorm statistics must come from valid tokens only (drop-path off).
    enc = _encoder().train(training)
    rel, centers, valid = _tokens()
    out = enc(rel, centers, valid)
    rel2, centers2 = rel.clone(), centers.clone()
    rel2[~valid] = 1e3 * torch.randn_like(rel2[~valid])
    centers2[~valid] = -50.0
    out2 = enc(rel2, centers2, valid)
    torch.testing.assert_close(out2[valid], out[valid])


def test_all_padding_row_gives_no_nan():
    enc = _encoder()
    rel, centers, valid = _tokens()
    valid[2] = False
    for mode in (True, False):
        out = enc.train(mode)(rel, centers, valid)
        assert torch.isfinite(out).all() and torch.all(out[2] == 0)
    assert torch.isfinite(enc(rel, centers, torch.zeros_like(valid))).all()


def test_gradients_reach_every_parameter():
    enc = _encoder(drop_path=0.1).train()
    rel, centers, valid = _tokens()
    rel.requires_grad_(True)
    enc(rel, centers, valid)[valid].pow(2).sum().backward()
    assert rel.grad is not None and torch.isfinite(rel.grad).all()
    assert torch.all(rel.grad[~valid] == 0)
    missing = [n for n, p in enc.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_forward_tokens_on_all_visible_equals_forward():
    enc = _encoder(drop_path=0.1).eval()
    rel, centers, valid = _tokens()
    tokens, pos = enc.embed(rel, centers, valid)
    index, sel_valid = selection_index(valid)  # nothing masked: every valid token is visible
    sub = enc.forward_tokens(take_tokens(tokens, index, sel_valid), take_tokens(pos, index, sel_valid), sel_valid)
    full = enc(rel, centers, valid)
    torch.testing.assert_close(sub[sel_valid], full[valid])


def test_visible_subset_ignores_hidden_tokens():
    enc = _encoder().eval()
    rel, centers, valid = _tokens()
    visible = valid.clone()
    visible[0, :3] = False
    expected = enc(rel, centers, visible)  # hidden tokens treated as padding
    tokens, pos = enc.embed(rel, centers, valid)
    index, sel_valid = selection_index(visible)
    sub = enc.forward_tokens(take_tokens(tokens, index, sel_valid), take_tokens(pos, index, sel_valid), sel_valid)
    torch.testing.assert_close(sub[sel_valid], expected[visible])


def test_attention_goes_through_sdpa(monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("attn_mask"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    rel, centers, valid = _tokens()
    _encoder(depth=3)(rel, centers, valid)
    assert len(calls) == 3
    assert calls[0].dtype == torch.bool and calls[0].shape == (B, 1, 1, G)


def test_drop_path_is_active_only_in_training():
    enc = _encoder(drop_path=0.5)
    rel, centers, valid = _tokens()
    enc.eval()
    torch.testing.assert_close(enc(rel, centers, valid), enc(rel, centers, valid))
    enc.train()
    torch.manual_seed(1)
    a = enc(rel, centers, valid)
    torch.manual_seed(2)
    assert not torch.allclose(a, enc(rel, centers, valid))


def test_decoder_returns_mask_token_outputs_and_respects_padding():
    torch.manual_seed(0)
    dec = TransformerDecoder(width=W, depth=2, heads=4, drop_path=0.0).eval()
    gen = torch.Generator().manual_seed(3)
    vis = torch.randn(2, 4, W, generator=gen)
    vis_c, vis_valid = torch.randn(2, 4, 3, generator=gen), torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]).bool()
    msk_c, msk_valid = torch.randn(2, 3, 3, generator=gen), torch.tensor([[1, 1, 1], [1, 0, 0]]).bool()
    out = dec(vis, vis_c, vis_valid, msk_c, msk_valid)
    assert out.shape == (2, 3, W) and torch.all(out[~msk_valid] == 0)
    vis2 = vis.clone()
    vis2[~vis_valid] = 99.0
    msk_c2 = msk_c.clone()
    msk_c2[~msk_valid] = -7.0
    torch.testing.assert_close(dec(vis2, vis_c, vis_valid, msk_c2, msk_valid)[msk_valid], out[msk_valid])
    # Mask tokens differ only by their centres, so they must read their position.
    assert not torch.allclose(out[0, 0], out[0, 1])


def test_specs_have_paper_defaults_and_build():
    spec = EncoderSpec()
    assert (spec.width, spec.depth, spec.heads, spec.mlp_ratio, spec.drop_path) == (256, 3, 4, 2.0, 0.1)
    enc = spec.build()
    assert isinstance(enc, TransformerEncoder) and len(enc.stack.blocks) == 3
    assert enc.stack.blocks[-1].drop_path == pytest.approx(0.1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.width = 8  # type: ignore[misc]
    dec = DecoderSpec().build(width=spec.width)
    assert isinstance(dec, TransformerDecoder) and len(dec.stack.blocks) == 2


def _holder(encoder=None, decoder=None):
    return encoder, decoder


gin.external_configurable(_holder, name="EncoderHolder", module="tests.encoder")


def test_spec_is_configurable_with_gin():
    gin.parse_config("""
        EncoderSpec.width = 64
        EncoderSpec.depth = 1
        DecoderSpec.depth = 1
        EncoderHolder.encoder = @EncoderSpec()
        EncoderHolder.decoder = @DecoderSpec()
    """)
    spec, dec = gin.get_configurable("tests.encoder.EncoderHolder")()
    assert (spec.width, spec.depth, spec.heads) == (64, 1, 4)
    assert len(dec.build(spec.width).stack.blocks) == 1


def test_point_batchnorm_has_the_statistics_of_batchnorm_over_the_transposed_layout():
    # _PointNorm normalises (N, K, C) on a contiguous (N*K, C) view; the maths is BatchNorm1d over
    # (N, C, K), so values and gradients agree up to float rounding (only the summation order differs).
    norm = _PointNorm(16, "batch")
    reference = torch.nn.BatchNorm1d(16)
    reference.load_state_dict(norm.norm.state_dict())
    x = torch.randn(10, 8, 16, generator=torch.Generator().manual_seed(0)) * 3 + 1
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out = norm(a)
    expected = reference(b.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * weight).sum().backward()
    (expected * weight).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norm.norm.running_var, reference.running_var)


def test_dropout_keeps_each_element_with_probability_one_minus_p_and_rescales():
    drop = Dropout(0.25)
    torch.manual_seed(0)
    x = torch.ones(200_000, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.005
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.75))
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())  # gradient: the same mask and scale
    drop.eval()
    assert drop(x) is x
    assert Dropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)


def test_dropout_draws_from_the_global_generator():
    drop = Dropout(0.5)
    x = torch.ones(64)
    torch.manual_seed(3)
    first = drop(x)
    torch.manual_seed(3)
    assert torch.equal(drop(x), first)

"""Step seeds: derived from the row's seed and the step's role only, and never disturbing other steps."""
from __future__ import annotations

import torch

from infra.seeding import derive_seed, torch_seeded
from methods.encoder import EncoderSpec
from methods.finetune import SegmentationFinetune
from methods.pretrain import PretrainStage
from methods.tokenizers import KnnTokenizer


def test_derive_seed_is_the_sha256_of_its_parts():
    # sha256(b"0/finetune/seg")[:4], little endian, 31 bits (computed once by hand with hashlib)
    assert derive_seed(0, "finetune/seg") == 776769894
    assert derive_seed(7, "pretrain", 1) == derive_seed(7, "pretrain/1") == 1440353925
    assert derive_seed(1, "finetune/seg") != derive_seed(0, "finetune/seg")
    assert all(0 <= derive_seed(s, "x") < 2**31 for s in range(50))


def test_torch_seeded_gives_the_same_draws_and_restores_the_global_state():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    with torch_seeded(5):
        a = torch.rand(4)
    with torch_seeded(5):
        b = torch.rand(4)
    assert torch.equal(a, b)
    assert torch.equal(torch.rand(3), expected_next)  # the block did not consume the global stream


def test_models_built_under_a_step_seed_do_not_depend_on_the_global_generator():
    builds = []
    for disturbance in (0, 1):
        torch.manual_seed(disturbance)  # what earlier (or cached) steps left behind
        with torch_seeded(derive_seed(0, "finetune/seg")):
            builds.append(EncoderSpec(width=16, depth=1, heads=2, embed_channels=(8, 16, 32)).build().state_dict())
    assert all(torch.equal(builds[0][k], builds[1][k]) for k in builds[0])


def test_step_seeds_depend_on_the_row_seed_and_the_role_not_on_the_configuration():
    # Common random numbers: every row with seed s fine-tunes from the same draws.
    tokenizer = KnnTokenizer(num_tokens=8, group_size=4)
    a = SegmentationFinetune(tokenizer=tokenizer, num_points=64)
    b = SegmentationFinetune(tokenizer=tokenizer, num_points=128, hidden=32)
    assert a.step_seed(0) == b.step_seed(0) != a.step_seed(1)
    first = PretrainStage(name="stage1", objective=None, tokenizer=tokenizer)
    second = PretrainStage(name="stage2", objective=None, tokenizer=tokenizer, previous=first)
    other_first = PretrainStage(name="stage1_knn", objective=None, tokenizer=tokenizer)
    assert (first.depth, second.depth) == (0, 1)
    assert first.step_seed(3) == other_first.step_seed(3) != second.step_seed(3)

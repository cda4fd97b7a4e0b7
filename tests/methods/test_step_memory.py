"""The memory estimate of a training step (methods/step_memory.py) follows every size it counts."""
from __future__ import annotations

import dataclasses

import pytest

from datasets.types import DatasetInfo
from methods.encoder import DecoderSpec, EncoderSpec
from methods.finetune import SegmentationFinetune
from methods.objectives import PointMAE
from methods.pretrain import PretrainStage
from methods.step_memory import FLOAT_BYTES, SAFETY, token_embed_values
from methods.tokenizers import KnnTokenizer
from methods.train import TrainSchedule

INFO = DatasetInfo(name="t", seg_classes=("a", "b", "c"), det_classes=("a",), seg_to_det=(0, -1, -1), has_yaw=False)
ENCODER = EncoderSpec(width=32, depth=1, embed_channels=(16, 32, 64))


def _seg(tokens=64, group=16, points=1024, batch=2, hidden=32, **encoder) -> SegmentationFinetune:
    return SegmentationFinetune(KnnTokenizer(tokens, group), dataclasses.replace(ENCODER, **encoder), num_points=points,
                                schedule=TrainSchedule(batch_size=batch), hidden=hidden)


@pytest.mark.parametrize("changed", [dict(tokens=128), dict(group=32), dict(points=4096), dict(batch=4),
                                     dict(hidden=64), dict(width=64), dict(depth=2), dict(embed_channels=(32, 64, 128))],
                         ids=lambda c: next(iter(c)))
def test_a_fine_tuning_step_grows_with_every_size(changed):
    assert _seg(**changed).step_memory(INFO).total > _seg().step_memory(INFO).total


def test_the_parts_are_the_counted_values_and_each_names_its_parameter():
    memory = _seg().step_memory(INFO)
    embed = next(v for k, v in memory.parts.items() if "mini-PointNet" in k)
    assert embed == 2 * 64 * 16 * token_embed_values(ENCODER, 16) * FLOAT_BYTES
    assert memory.total == pytest.approx(SAFETY * sum(memory.parts.values()))
    big = _seg(points=2_000_000).step_memory(INFO)
    assert big.largest == "SegmentationFinetune.num_points = 2000000 points x batch 2"


def test_torchrun_ranks_each_hold_their_share_of_the_batch():
    assert _seg(batch=8).step_memory(INFO, world_size=4).total == pytest.approx(_seg(batch=2).step_memory(INFO).total)


def test_a_pretraining_step_grows_with_its_decoder_and_reconstructed_points():
    def stage(decoder_depth=1, num_points=32, points_per_frame=2048):
        objective = PointMAE(encoder=ENCODER, decoder=DecoderSpec(depth=decoder_depth), num_points=num_points)
        return PretrainStage("s", objective, KnnTokenizer(64, 16), TrainSchedule(batch_size=2)).step_memory(
            points_per_frame)

    base = stage().total
    assert stage(decoder_depth=2).total > base and stage(num_points=64).total > base
    assert stage(points_per_frame=8192).total > base

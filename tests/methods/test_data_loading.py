"""The training loop's data loader: the shuffles it always had, items independent of the workers, exact resumption;
per-rank masks; batches and devices checked against the world size."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from infra.errors import HarnessError
from methods.data_loading import EpochItems, EpochShuffle
from methods.objectives.common import MaskSampler
from methods.train import TrainSchedule, check_device_for_world, per_rank_batch, train


def test_one_process_shuffles_as_a_seeded_shuffling_data_loader_did():
    for seed, epoch, size in ((0, 0, 10), (7, 3, 33), (123, 11, 1)):
        loader = torch.utils.data.DataLoader(list(range(size)), batch_size=1, shuffle=True,
                                             generator=torch.Generator().manual_seed(seed + epoch))
        expected = [int(x) for batch in loader for x in batch]
        sampler = EpochShuffle(size, seed)
        sampler.set_epoch(epoch)
        assert list(sampler) == [(epoch, i) for i in expected]


@pytest.mark.parametrize("size", [16, 17, 3])
def test_each_rank_gets_the_distributed_samplers_share(size):
    for rank in (0, 1):
        reference = torch.utils.data.distributed.DistributedSampler(list(range(size)), num_replicas=2, rank=rank,
                                                                    shuffle=True, seed=5, drop_last=False)
        reference.set_epoch(4)
        sampler = EpochShuffle(size, 5, rank=rank, world=2)
        sampler.set_epoch(4)
        assert [i for _, i in sampler] == list(reference) and len(sampler) == len(reference)


class _EpochNoise(torch.utils.data.Dataset):
    """Items that depend on (epoch, index) only, as the harness's datasets do."""

    def __init__(self, n: int = 24):
        self.n, self.epoch = n, 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(1000 * self.epoch + i)
        x = torch.randn(4, generator=g)
        return {"x": x, "y": x.sum(0, keepdim=True) + 0.1 * torch.randn(1, generator=g)}


def _collate(items):
    return {k: torch.stack([item[k] for item in items]) for k in items[0]}


class _Regression(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 1)
        self.drop = torch.nn.Dropout(0.2)  # draws from the global stream the loader must leave alone

    def forward(self, batch):
        return {"loss": torch.nn.functional.mse_loss(self.linear(self.drop(batch["x"])), batch["y"])}


SCHEDULE = TrainSchedule(epochs=3, batch_size=5, lr=0.05, weight_decay=0.0, warmup_epochs=1, device="cpu")


def test_items_do_not_depend_on_the_number_of_workers_and_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    def run(workers: int, folder: str, stop_after: int | None = None):
        module = _Regression()
        schedule = dataclasses.replace(SCHEDULE, num_workers=workers)

        def log(values, epoch):
            if stop_after is not None and epoch == stop_after:
                raise KeyboardInterrupt  # killed after the checkpoint of this epoch
        try:
            history = train(module, _EpochNoise(), _collate, schedule, tmp_path / folder / "c.pt", seed=3, log=log)
        except KeyboardInterrupt:
            return None, None
        return history, module.state_dict()

    history, params = run(0, "none")
    for workers, folder in ((2, "two"), (1, "one")):
        other_history, other_params = run(workers, folder)
        assert other_history == history
        assert all(torch.equal(params[k], other_params[k]) for k in params)
    assert run(2, "killed", stop_after=0) == (None, None)
    resumed_history, resumed = run(2, "killed")
    assert resumed_history == history and all(torch.equal(params[k], resumed[k]) for k in params)


def test_epoch_items_set_the_epoch_of_the_item_they_read():
    items = EpochItems(_EpochNoise())
    assert torch.equal(items[(2, 5)]["x"], items[(2, 5)]["x"])
    assert not torch.equal(items[(2, 5)]["x"], items[(3, 5)]["x"])
    assert items.dataset.epoch == 3


def test_rank_0_keeps_one_stream_and_other_ranks_draw_their_own_per_epoch():
    valid = torch.ones(4, 32, dtype=torch.bool)

    def draws(rank: int, epochs=(0, 1), steps: int = 2) -> list[torch.Tensor]:
        sampler, out = MaskSampler(0.6, seed=11), []
        for epoch in epochs:
            sampler.begin_epoch(epoch, rank)
            out += [sampler(valid) for _ in range(steps)]
        return out

    plain = MaskSampler(0.6, seed=11)
    assert all(torch.equal(a, plain(valid)) for a in draws(0))  # a single process draws what it always drew
    rank1 = draws(1)
    assert not any(torch.equal(a, b) for a, b in zip(draws(0), rank1))
    assert all(torch.equal(a, b) for a, b in zip(draws(1, epochs=(1,)), rank1[2:]))  # resumed at epoch 1: the same
    assert not torch.equal(draws(2)[0], rank1[0])


def test_a_global_batch_that_does_not_split_over_the_processes_is_one_line():
    assert per_rank_batch("pretrain/stage1", 64, 4) == 16
    for batch, world in ((8, 3), (2, 4)):
        expected = rf"pretrain/stage1: TrainSchedule.batch_size = {batch} .* {world} torchrun"
        with pytest.raises(HarnessError, match=expected):
            per_rank_batch("pretrain/stage1", batch, world)


def test_a_gpu_index_under_torchrun_is_one_line():
    check_device_for_world("cuda:1", 1)
    check_device_for_world("cuda", 4)
    with pytest.raises(HarnessError, match="'cuda:0' under torchrun .4 processes. would put every rank on that GPU"):
        check_device_for_world("cuda:0", 4)


def test_a_scene_sample_draws_the_indices_it_always_drew():
    import numpy as np

    from methods.downstream.scene_batch import scene_offset, scene_sample
    from tests.methods.test_segmentation import _hand_scene

    scene = _hand_scene(n=200)
    for seed, size in ((0, 50), (3, scene.num_points), (9, scene.num_points + 7)):
        rng = np.random.default_rng(seed)
        expected = np.sort(rng.choice(scene.num_points, size=size, replace=scene.num_points < size))
        sample = scene_sample(scene, size, seed)
        assert np.array_equal(sample["index"], expected) and sample["index"].dtype == np.int64
        kept = scene_sample(scene, size, seed, offset=scene_offset(scene))
        assert all(np.array_equal(sample[k], kept[k]) for k in sample)


def test_tokens_made_after_the_copy_train_as_tokens_made_per_frame(tmp_path):
    """``device_tokenization`` on (here on the CPU) gives the same batches, so the same training, as tokens
    made per frame by the workers (KNN tokens: equal up to exact distance ties, none in these frames)."""
    import numpy as np

    from bench.perf.datapath import GROUPS, pretraining_frames, read_back
    from infra import timing
    from methods.batching import TokenizedFrames, collate
    from methods.encoder import EncoderSpec
    from methods.objectives.distillation import RegionDistillation
    from methods.tokenizers import KnnTokenizer

    frames, _ = read_back(pretraining_frames(6, points=600))
    for frame in frames:  # a 16-d teacher, so the model stays tiny
        frame.region_features = frame.region_features[:, :16]
    spec = RegionDistillation(encoder=EncoderSpec(width=32, depth=1, heads=2, embed_channels=(16, 32, 32)))

    def run(on_device: bool, workers: int):
        torch.manual_seed(0)
        module = spec.build(16, np.full(GROUPS, 1.0 / GROUPS))
        schedule = dataclasses.replace(SCHEDULE, epochs=2, batch_size=3, device_tokenization=on_device,
                                       num_workers=workers)
        timing.reset()
        history = train(module, TokenizedFrames(frames, KnnTokenizer(16, 8), seed=1), collate, schedule,
                        tmp_path / f"{on_device}{workers}" / "c.pt", seed=2, name="t")
        return history, module.state_dict(), timing.totals()

    history, params, phases = run(False, 0)
    assert "t|tokenize" not in phases
    for workers in (0, 2):
        other_history, other_params, other_phases = run(True, workers)
        assert other_phases["t|tokenize"][1] == 4  # 2 epochs of 2 steps, each batch tokenized after the copy
        assert other_history == history and all(torch.equal(params[k], other_params[k]) for k in params)


def test_recording_instead_of_training_trains_and_writes_nothing(tmp_path):
    from methods.train import recording_instead

    calls = []
    module = _Regression()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with recording_instead(lambda *args, **kwargs: calls.append((args, kwargs)) or [{"loss": 0.0}]):
        history = train(module, _EpochNoise(), _collate, SCHEDULE, tmp_path / "c.pt", seed=3, name="recorded")
    assert history == [{"loss": 0.0}] and len(calls) == 1 and calls[0][1]["name"] == "recorded"
    assert not any(tmp_path.iterdir()) and all(torch.equal(before[k], module.state_dict()[k]) for k in before)
    assert train(module, _EpochNoise(), _collate, dataclasses.replace(SCHEDULE, epochs=1), tmp_path / "c.pt",
                 seed=3)[0]["loss"] > 0  # outside the block it trains again

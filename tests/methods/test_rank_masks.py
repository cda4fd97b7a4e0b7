"""torchrun with 2 CPU processes: each rank masks its frames with its own draws, and a stage killed after an epoch
and resumed draws (and trains) exactly what an uninterrupted one does. Run as a script, this file is the worker."""
from __future__ import annotations

import dataclasses
import pathlib
import sys

import torch

from infra import distributed
from methods.objectives.common import MaskSampler
from methods.train import TrainSchedule, train

SCHEDULE = TrainSchedule(epochs=3, batch_size=4, lr=0.05, weight_decay=0.0, warmup_epochs=1, device="cpu")


class _Frames(torch.utils.data.Dataset):
    def __init__(self, n: int = 8):
        self.n, self.epoch = n, 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(100 * self.epoch + i)
        return {"x": torch.randn(16, 3, generator=g), "valid": torch.ones(16, dtype=torch.bool)}


def _collate(items):
    return {k: torch.stack([item[k] for item in items]) for k in items[0]}


class _Masked(torch.nn.Module):
    """Hides 60 % of 16 tokens per frame and regresses the visible ones; records every mask it draws."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(3, 1)
        self.masker = MaskSampler(0.6, seed=5)
        self.drawn: list[torch.Tensor] = []

    def forward(self, batch):
        mask = self.masker(batch["valid"])
        self.drawn.append(mask.clone())
        visible = (~mask).unsqueeze(-1).float()
        return {"loss": ((self.linear(batch["x"]) - 1.0) ** 2 * visible).mean()}


def _worker(out: pathlib.Path) -> None:
    distributed.init_from_env()
    rank = distributed.rank()
    whole = _Masked()
    train(whole, _Frames(), _collate, SCHEDULE, out / "whole" / "c.pt", seed=1)

    def killed_after_first_epoch(values, epoch):
        if epoch == 0:
            raise KeyboardInterrupt
    try:
        train(_Masked(), _Frames(), _collate, SCHEDULE, out / "killed" / "c.pt", seed=1, log=killed_after_first_epoch)
    except KeyboardInterrupt:
        pass
    resumed = _Masked()
    train(resumed, _Frames(), _collate, SCHEDULE, out / "killed" / "c.pt", seed=1)
    torch.save({"whole": whole.drawn, "resumed": resumed.drawn, "whole_params": whole.linear.state_dict(),
                "resumed_params": resumed.linear.state_dict()}, out / f"rank{rank}.pt")
    distributed.shutdown()


def test_ranks_draw_their_own_masks_and_a_killed_stage_resumes_exactly(tmp_path):
    from tests.bench.test_distributed import _require_gloo, _torchrun

    _require_gloo()
    done = _torchrun(str(pathlib.Path(__file__)), str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    steps = len(ranks[0]["whole"]) // SCHEDULE.epochs  # 8 frames, 2 a rank a step: 2 steps an epoch
    assert steps == 2 and all(len(r["whole"]) == 6 and len(r["resumed"]) == 4 for r in ranks)
    assert not any(torch.equal(a, b) for a, b in zip(ranks[0]["whole"], ranks[1]["whole"]))
    for r in ranks:  # epochs 2 and 3 after the kill: the very masks and weights of the uninterrupted run
        assert all(torch.equal(a, b) for a, b in zip(r["resumed"], r["whole"][steps:]))
        assert all(torch.equal(r["resumed_params"][k], r["whole_params"][k]) for k in r["whole_params"])
    # a single process draws rank 0's stream
    one = _Masked()
    train(one, _Frames(), _collate, dataclasses.replace(SCHEDULE, batch_size=2), tmp_path / "one" / "c.pt", seed=1)
    assert all(torch.equal(a, b) for a, b in zip(one.drawn, ranks[0]["whole"]))


if __name__ == "__main__":
    _worker(pathlib.Path(sys.argv[1]))

"""The shared training loop: schedule maths, decreasing loss, checkpoints, exact resumption."""
from __future__ import annotations

import pytest
import torch

from methods.train import TrainSchedule, load_checkpoint, train, warmup_cosine


class _Regression(torch.nn.Module):
    """A tiny objective: fit y = x @ w_true with noise-free data."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)
        self.dropout = torch.nn.Dropout(0.1)  # uses the global RNG, so resumption must restore it

    def forward(self, batch):
        pred = self.linear(self.dropout(batch["x"]))
        return {"loss": torch.nn.functional.mse_loss(pred, batch["y"]), "mean_pred": pred.mean().detach()}


class _Data(torch.utils.data.Dataset):
    def __init__(self, n: int = 24):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
        self.epoch = 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def _collate(items):
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


SCHEDULE = TrainSchedule(epochs=6, batch_size=8, lr=0.3, weight_decay=0.0, warmup_epochs=1, device="cpu")


def test_warmup_cosine():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0)


def test_warmup_in_epochs_or_as_a_fraction_of_all_steps():
    assert TrainSchedule(epochs=10, warmup_epochs=2).warmup_steps(12) == 24
    assert TrainSchedule(epochs=10, warmup_epochs=2, warmup_fraction=0.05).warmup_steps(12) == 6  # of 120
    assert TrainSchedule(epochs=1, warmup_fraction=0.01).warmup_steps(3) == 1  # at least one step
    with pytest.raises(ValueError, match="warmup_fraction"):
        TrainSchedule(warmup_fraction=1.0)


def test_loss_decreases_and_every_epoch_is_checkpointed(tmp_path):
    torch.manual_seed(0)
    logged = []
    history = train(_Regression(), _Data(), _collate, SCHEDULE, tmp_path / "c.pt", seed=1,
                    log=lambda m, step: logged.append((step, m)), name="toy")
    assert len(history) == 6 and history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert [step for step, _ in logged] == list(range(6)) and "toy/loss" in logged[0][1]
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert len(state["history"]) == 6 and set(state) >= {"model", "optimizer", "scheduler"}


def test_interrupted_training_resumes_to_the_same_result(tmp_path):
    torch.manual_seed(0)
    full = _Regression()
    train(full, _Data(), _collate, SCHEDULE, tmp_path / "full.pt", seed=1)

    class _Stop(Exception):
        pass

    def stop_after_three(metrics, step):
        if step == 2:
            raise _Stop

    torch.manual_seed(0)
    with pytest.raises(_Stop):
        train(_Regression(), _Data(), _collate, SCHEDULE, tmp_path / "cut.pt", seed=1, log=stop_after_three)
    assert len(load_checkpoint(tmp_path / "cut.pt")["history"]) == 3
    torch.manual_seed(123)  # a different initialisation is overwritten by the checkpoint
    resumed = _Regression()
    history = train(resumed, _Data(), _collate, SCHEDULE, tmp_path / "cut.pt", seed=1)
    assert len(history) == 6
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_a_finished_checkpoint_trains_nothing_and_a_corrupt_one_restarts(tmp_path, capsys):
    path = tmp_path / "c.pt"
    first = train(_Regression(), _Data(), _collate, SCHEDULE, path, seed=1)
    before = path.stat().st_mtime_ns
    again = train(_Regression(), _Data(), _collate, SCHEDULE, path, seed=1)
    assert again == first and path.stat().st_mtime_ns == before
    path.write_bytes(path.read_bytes()[:100])
    assert load_checkpoint(path) is None and "unreadable" in capsys.readouterr().out

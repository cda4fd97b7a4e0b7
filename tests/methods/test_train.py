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
    assert load_checkpoint(path) is None and "training from scratch" in capsys.readouterr().out


def test_a_checkpoint_changed_in_place_is_not_used(tmp_path, capsys):
    """256 bytes overwritten inside the file (same size, still a readable zip) fail its checksum."""
    path = tmp_path / "c.pt"
    torch.manual_seed(0)
    first = train(_Regression(), _Data(), _collate, SCHEDULE, path, seed=1)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 256] = bytes(256)
    path.write_bytes(bytes(data))
    torch.manual_seed(0)
    again = train(_Regression(), _Data(), _collate, SCHEDULE, path, seed=1)
    out = capsys.readouterr().out
    assert "differ from the checksum" in out and "trained epochs 1-6" in out
    assert again == first


@pytest.mark.parametrize("contents", ["not a checkpoint", "another model"])
def test_a_checkpoint_with_other_contents_is_retrained_with_a_warning(tmp_path, capsys, contents):
    """A file whose checksum matches but that holds something else (another model's checkpoint, a
    plain dict) is reported in one line and trained again, never loaded half-way."""
    import io

    from infra.io import write_cache_file

    path = tmp_path / "c.pt"
    torch.manual_seed(0)
    first = train(_Regression(), _Data(), _collate, SCHEDULE, path, seed=1)
    buffer = io.BytesIO()
    if contents == "not a checkpoint":
        torch.save({"weights": torch.zeros(3)}, buffer)
    else:
        state = torch.load(path, weights_only=True)
        state["model"] = torch.nn.Linear(5, 2).state_dict()
        torch.save(state, buffer)
    write_cache_file(path, buffer.getvalue())
    torch.manual_seed(0)
    again = train(_Regression(), _Data(), _collate, SCHEDULE, path, seed=1)
    warning = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and str(path) in warning[0] and "training from scratch" in warning[0]
    assert again == first


@pytest.mark.parametrize("field, value, expected", [
    ("epochs", -1, "TrainSchedule.epochs: expected an integer >= 1, got -1"),
    ("batch_size", 0, "TrainSchedule.batch_size: expected an integer >= 1, got 0"),
    ("lr", 0.0, "TrainSchedule.lr: expected a number > 0, got 0.0"),
    ("warmup_epochs", 1.5, "TrainSchedule.warmup_epochs: expected an integer >= 0, got 1.5"),
    ("device", "gpu7", "TrainSchedule.device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu7'"),
])
def test_schedule_values_are_checked_when_it_is_built(field, value, expected):
    with pytest.raises(ValueError) as info:
        TrainSchedule(**{field: value})
    assert str(info.value) == expected

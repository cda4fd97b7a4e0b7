"""torchrun with 2 CPU (gloo) processes: DDP training, checkpoints, resumption, a table end to end.

Run as a script under torchrun, this file is the worker of ``test_ddp_training_matches_one_process``.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from infra import distributed, progress
from infra.errors import HarnessError
from methods import train as train_module
from methods.train import TrainSchedule, train
from tests.methods.test_train import _collate, _Data

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
# Full-batch steps: the global batch is the whole data set whichever shuffle DDP's sampler draws.
SCHEDULE = TrainSchedule(epochs=2, batch_size=16, lr=0.1, weight_decay=0.0, warmup_epochs=1, device="cpu")


class _Regression(torch.nn.Module):
    """Deterministic (no dropout), so a 2-process run must match one process up to rounding."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, batch):
        pred = self.linear(batch["x"])
        return {"loss": torch.nn.functional.mse_loss(pred, batch["y"]), "mean_pred": pred.mean().detach()}


def _train_then_resume(folder: pathlib.Path, init_seed: int) -> tuple[list, list, torch.nn.Module]:
    """Train 2 epochs, then resume the checkpoint with a fresh module for a 3rd (as a new run would)."""
    torch.manual_seed(init_seed)
    first = train(_Regression(), _Data(16), _collate, SCHEDULE, folder / "checkpoint.pt", seed=1)
    torch.manual_seed(init_seed + 100)  # a different initialisation, overwritten by the checkpoint
    resumed = _Regression()
    history = train(resumed, _Data(16), _collate, dataclasses.replace(SCHEDULE, epochs=3), folder / "checkpoint.pt",
                    seed=1)
    return first, history, resumed


def _worker(out: pathlib.Path) -> None:
    distributed.init_from_env()
    rank = distributed.rank()
    saves = []
    real_save = train_module._save
    train_module._save = lambda path, *args: (saves.append(path), real_save(path, *args))[1]
    # Each rank initialises differently: DDP must start every rank from rank 0's parameters.
    first, history, module = _train_then_resume(out / "ddp", init_seed=rank)
    # 17 samples, global batch 4: shards of 9 (one padded), 2 per rank per step -> 5 steps, as one process
    train(_Regression(), _Data(17), _collate, dataclasses.replace(SCHEDULE, batch_size=4, epochs=1),
          out / "steps.pt", seed=1)
    try:
        train(_Regression(), _Data(), _collate, dataclasses.replace(SCHEDULE, batch_size=3), out / "x.pt", seed=1)
        batch_error = None
    except HarnessError as e:
        batch_error = str(e)
    with distributed.main_first():
        if rank == 0:
            (out / "cache.txt").write_text("written by rank 0")
        cache_seen = (out / "cache.txt").is_file()
    try:
        with distributed.main_first():
            if rank == 0:
                raise HarnessError("no frame has depth")
        shared_error = None
    except HarnessError as e:
        shared_error = str(e)
    # a BatchNorm's statistics as each rank's last DDP forward pass leaves them: different on every rank
    normed = torch.nn.BatchNorm1d(3)
    normed.running_mean.fill_(rank)
    normed.weight.data.fill_(10 + rank)
    distributed.broadcast_module_state(normed)
    torch.save({"first": first, "history": history, "params": module.state_dict(), "saves": len(saves),
                "batch_error": batch_error, "cache_seen": cache_seen, "shared_error": shared_error,
                "world": distributed.world_size(), "normed": normed.state_dict()}, out / f"rank{rank}.pt")
    distributed.shutdown()


def _torchrun(*args: str, cwd=REPO_ROOT, timeout=300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _require_gloo():
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("this torch build has no torch.distributed gloo backend")


def test_single_process_helpers_are_no_ops():
    assert not distributed.is_initialized()
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    distributed.barrier()
    assert distributed.all_reduce_mean({"b": 1.0, "a": 2.0}) == {"b": 1.0, "a": 2.0}
    with distributed.main_first():
        ran = True
    assert ran
    normed = torch.nn.BatchNorm1d(2)
    distributed.broadcast_module_state(normed)
    assert normed.running_var.tolist() == [1.0, 1.0]


def test_the_collective_timeout_is_30_minutes_unless_set(monkeypatch):
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed.timeout_minutes() == 30
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "240")
    assert distributed.timeout_minutes() == 240
    for bad in ("two hours", "0", "-5", "nan", "inf"):
        monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
        with pytest.raises(HarnessError, match=f"SAM3D_DIST_TIMEOUT_MIN='{bad}' is not a positive number"):
            distributed.timeout_minutes()


def test_only_the_global_rank_0_prints_progress(capsys, monkeypatch):
    """torchrun's RANK, not LOCAL_RANK: the second node's rank 1 has LOCAL_RANK 0 and stays quiet."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(progress, "interactive", lambda: True)
    table = progress.TableProgress("table4", total=2)
    assert table.finished("stage1 seed=0", 1.0).startswith("table4: 1/2 rows x seeds done")  # still counted
    progress.step("evaluation", "done")
    progress.note_once("a size was capped (rank 1)")
    items = [1, 2]
    assert progress.bar(items, desc="epoch") is items
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    table.finished("stage2 seed=0", 1.0)
    assert capsys.readouterr().out.startswith("table4: 2/2 rows x seeds done")


def test_ddp_training_matches_one_process(tmp_path, one_thread):
    _require_gloo()
    result = _torchrun(str(pathlib.Path(__file__)), str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    # every rank ends with the same parameters and the same (rank-averaged) history
    for key, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][key]), key
    assert ranks[0]["history"] == ranks[1]["history"] and len(ranks[0]["history"]) == 3
    assert ranks[0]["history"][:2] == ranks[0]["first"]  # the resumed run continued, it did not restart
    # rank 0 alone wrote: 2 epochs, then 1 resumed epoch (then 1 of steps.pt); one checkpoint (and its
    # checksum record), no temporary files left
    assert [r["saves"] for r in ranks] == [4, 0]
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["checkpoint.pt", "checkpoint.pt.meta.json"]
    state = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    _Regression().load_state_dict(state["model"])  # the unwrapped module's names, no "module." prefix
    assert state["history"] == ranks[0]["history"]
    # full-batch steps split over 2 ranks = one process's steps: same losses and parameters up to rounding
    torch.manual_seed(0)
    first, history, module = _train_then_resume(tmp_path / "one", init_seed=0)
    for ours, theirs in zip(ranks[0]["history"], history):
        assert ours.keys() == theirs.keys()
        assert all(abs(ours[k] - theirs[k]) <= 1e-5 * max(1.0, abs(theirs[k])) for k in ours), (ours, theirs)
    for key, value in module.state_dict().items():
        assert torch.allclose(ranks[0]["params"][key], value, atol=1e-5), key
    assert torch.load(tmp_path / "steps.pt", weights_only=True)["scheduler"]["last_epoch"] == 5
    # errors: the same one line on every rank
    assert all("batch_size = 3" in r["batch_error"] and "2 torchrun processes" in r["batch_error"] for r in ranks)
    assert [r["cache_seen"] for r in ranks] == [True, True]
    assert [r["shared_error"] for r in ranks] == ["no frame has depth"] * 2
    # rank 0's parameters and buffers on every rank
    assert all(torch.equal(r["normed"][k], v) for r in ranks for k, v in ranks[0]["normed"].items())
    assert ranks[1]["normed"]["running_mean"].tolist() == [0.0] * 3 and ranks[1]["normed"]["weight"][0] == 10


def test_table_end_to_end_under_torchrun(tmp_path):
    _require_gloo()
    from mlflow.tracking import MlflowClient

    from bench.results_layout import ResultsLayout

    results = tmp_path / "out"
    result = _torchrun(str(REPO_ROOT / "run_bench.py"), "--gin=gin/tables/table4_smoke.gin",
                       f"--results_dir={results}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("results: ") == 1  # rank 0 alone reports
    folders = list((results / "table4").iterdir())
    assert len(folders) == 1 and (folders[0] / "table4.md").is_file() and (folders[0] / "metrics.json").is_file()
    client = MlflowClient(ResultsLayout(results).tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("table4").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["world_size"] == "2"
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    assert all("synthetic/seg/mIoU" in c.data.metrics for c in children)


def test_an_error_on_rank_0_stops_every_rank_with_its_one_line_message(tmp_path):
    _require_gloo()
    result = _torchrun(str(REPO_ROOT / "run_bench.py"), "--gin=gin/smoke.gin", f"--results_dir={tmp_path / 'out'}",
                       "--gin_binding=Experiment.tracking_uri = 'nosuchscheme://nowhere/x'", cwd=tmp_path)
    assert result.returncode != 0  # torchrun itself exits 1 (and prints its own report) when a rank fails
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and len(set(errors)) == 1 and "nosuchscheme://nowhere/x" in errors[0], result.stderr
    assert not any(p for p in (tmp_path / "out").rglob("*") if p.is_file())


if __name__ == "__main__":
    _worker(pathlib.Path(sys.argv[1]))

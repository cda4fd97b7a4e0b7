"""``run_bench.py --plan``: every step of a table with its cache status and cost, nothing trained, cached or logged;
after a real run the same steps say done, a checkpoint of fewer epochs says partly done, and a batch that does
not split over WORLD_SIZE fails as the run would."""
from __future__ import annotations

import io
import json
import pathlib
import shutil

import gin
import pytest
import torch

from bench.cli import main
from bench.config import parse_config
from bench.plan_schedule import SimStep, simulate
from bench.runner import Experiment
from bench.training_steps import check_batches
from bench.validation import validate_rows
from infra.errors import HarnessError
from infra.io import read_cache_file, write_cache_file

# Two rows of Table 3 at smoke size, one pretraining stage of two epochs (so that a checkpoint can be half done).
BINDINGS = ["Experiment.rows = {'none': @none/FinetuneRow, 'DD': @dd/FinetuneRow}",
            "FinetuneRow.protocols = []", "stage1_knn_nobr/TrainSchedule.epochs = 2"]
ARGS = ["--gin=gin/tables/table3_smoke.gin", *(f"--gin_binding={b}" for b in BINDINGS)]


def _plan(results: pathlib.Path, capsys) -> tuple[dict, str]:
    gin.clear_config()  # main locks the config it parses
    assert main([*ARGS, f"--results_dir={results}", "--plan"]) == 0
    printed = capsys.readouterr().out
    return json.loads((results / "table3" / "plan.json").read_text()), printed


def _by_kind(plan: dict, kind: str) -> list[dict]:
    return [step for step in plan["steps"] if step["kind"] == kind]


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> pathlib.Path:
    """The two rows run for real (the cache every later plan reads)."""
    results = tmp_path_factory.mktemp("ran")
    gin.clear_config()
    parse_config(["tables/table3_smoke.gin"], BINDINGS)
    Experiment().run(results)
    gin.clear_config()
    return results


def test_a_plan_trains_nothing_and_lists_every_step_the_run_makes(ran, tmp_path, capsys, monkeypatch, one_thread):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    plan, printed = _plan(tmp_path, capsys)
    # Nothing but the plan was written: no cache, no checkpoint, no MLflow store.
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()] == ["table3/plan.json"]
    assert plan["total_seconds"] > 0 and plan["device_seconds"] > 0 and plan["world_size"] == 1
    assert all(step["status"] == "to do" and step["seconds"] > 0 for step in plan["steps"]
               if step["kind"] != "groups")
    # Every stage and fine-tuning the real run trained, by its cache folder, and nothing more.
    trained = {f"{p.parent.parent.name}/{p.parent.name}" for p in (ran / "cache").glob("*/*/checkpoint.pt")}
    assert {s["key"] for s in plan["steps"] if s["kind"] in ("pretrain", "finetune")} == trained
    assert len(_by_kind(plan, "evaluate")) == 2 and len(_by_kind(plan, "prepare")) == 1
    stage = next(s for s in plan["steps"] if s["label"].startswith("pretrain/stage1_knn_nobr"))
    assert stage["params"]["epochs"] == 2 and stage["params"]["per_rank_batch"] == 2
    assert stage["params"]["steps_per_epoch"] == 3  # 3 pretraining rooms x 2 frames, batch 2
    for heading in ("plan of table3 (profile smoke)", "totals:", "device-hours", "what runs in parallel:"):
        assert heading in printed


def test_after_a_run_the_plan_says_done(ran, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    results = tmp_path / "copy"
    shutil.copytree(ran, results)
    plan, _ = _plan(results, capsys)
    # Every row is answered from its cached result: nothing is loaded, nothing costs.
    assert [s["status"] for s in plan["steps"]] == ["done", "done"]
    assert plan["device_seconds"] == 0
    shutil.rmtree(results / "cache" / "results")  # the rows evaluate again; every training step is cached
    plan, printed = _plan(results, capsys)
    assert {s["kind"]: s["status"] for s in plan["steps"] if s["kind"] != "evaluate"} == dict.fromkeys(
        ("scenes", "prepare", "groups", "pretrain", "finetune"), "done")
    assert [s["status"] for s in _by_kind(plan, "evaluate")] == ["to do", "to do"]
    assert all(s["seconds"] == 0 for s in plan["steps"] if s["kind"] != "evaluate")


def test_a_checkpoint_of_fewer_epochs_and_a_lost_scene_are_partly_done(ran, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    results = tmp_path / "copy"
    shutil.copytree(ran, results)
    shutil.rmtree(results / "cache" / "results")
    checkpoint = next((results / "cache" / "stages").glob("stage1_knn_nobr-*/checkpoint.pt"))
    state = torch.load(io.BytesIO(read_cache_file(checkpoint)[0]), weights_only=True)
    state["history"] = state["history"][:1]  # as if the run had stopped after its first epoch
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_cache_file(checkpoint, buffer.getvalue(), 1.0)
    next((results / "cache" / "prepare").glob("*/scenes/*.npz")).unlink()  # one scene's frames lost
    plan, printed = _plan(results, capsys)
    assert _by_kind(plan, "prepare")[0]["status"] == "partly done (scenes 2 of 3)"
    stage = next(s for s in plan["steps"] if s["key"].startswith("stages/stage1_knn_nobr-"))
    assert stage["status"] == "partly done (epochs 1 of 2)" and stage["done"] == 1 and stage["seconds"] > 0
    assert "partly done (epochs 1 of 2)" in printed
    # Its steps are timed on the frames prepared already: no mask or teacher runs again.
    assert plan["measured"]["preparation synthetic/pretrain"]["how"] == "from the 2 scenes prepared already"


def test_a_batch_that_does_not_split_over_the_world_fails_as_the_run_would(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.delenv("RANK", raising=False)
    assert main([*ARGS, f"--results_dir={tmp_path}", "--plan"]) == 2
    planned = capsys.readouterr().err.strip()
    gin.clear_config()
    parse_config(["tables/table3_smoke.gin"], BINDINGS)
    experiment = Experiment()
    built = validate_rows(experiment.rows, experiment.dataset, experiment.train_split, experiment.eval_split)
    with pytest.raises(HarnessError) as run:
        check_batches(built, 3)
    assert planned == f"error: {run.value}" and "not divisible by the 3 torchrun processes" in planned
    assert not (tmp_path / "table3").exists()


def test_a_plan_for_two_torchrun_processes_splits_each_batch(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    plan, printed = _plan(tmp_path, capsys)
    stage = next(s for s in plan["steps"] if s["label"].startswith("pretrain/stage1_knn_nobr"))
    assert plan["world_size"] == 2 and plan["workers"] == 1 and "2 torchrun processes" in printed
    assert stage["params"]["per_rank_batch"] == 1 and stage["params"]["steps_per_epoch"] == 3  # 6 frames / 2 ranks
    assert plan["device_seconds"] == pytest.approx(2 * sum(s["seconds"] for s in plan["steps"]))


def test_a_step_two_jobs_share_is_made_once_and_files_are_split():
    steps = {"scenes": SimStep(10.0, shared=True), "stage": SimStep(6.0), "own0": SimStep(1.0), "own1": SimStep(2.0)}
    jobs = [("a", 0), ("b", 0)]
    job_steps = {("a", 0): ["scenes", "stage", "own0"], ("b", 0): ["scenes", "stage", "own1"]}
    end, spans, _ = simulate(jobs, job_steps, steps, workers=2)
    # Both split the scenes (5 s), b waits for a's stage (until 11 s), then each does its own step.
    assert spans[("a", 0)] == (0.0, 12.0) and spans[("b", 0)] == (0.0, 13.0) and end == 13.0
    end, _, _ = simulate(jobs, job_steps, steps, workers=1)
    assert end == 10.0 + 6.0 + 1.0 + 2.0


def test_an_evaluation_finds_the_neighbours_of_a_seed_its_process_has_searched():
    def evaluation(seed: int, models: int) -> SimStep:  # 1 s with every search served, 3 s a search
        return SimStep(1.0, memo=f"seed {seed}", memo_search=3.0, memo_uses=models, memo_bytes=10.0)

    steps = {"a": evaluation(0, 2), "b": evaluation(0, 1), "c": evaluation(1, 1), "d": evaluation(1, 1)}
    jobs = [("a", 0), ("b", 0), ("c", 1), ("d", 1)]
    job_steps = {job: [job[0]] for job in jobs}
    _, _, charged = simulate(jobs, job_steps, steps, workers=1, memo_capacity=10.0)
    # a: its first model searches, its second finds them; b: found; the memo is full: c and d search.
    assert charged == {"a": 4.0, "b": 1.0, "c": 4.0, "d": 4.0}
    steps["c"] = evaluation(0, 1)
    _, _, charged = simulate(jobs[:3], job_steps, steps, workers=2, memo_capacity=100.0)
    assert charged == {"a": 4.0, "b": 4.0, "c": 1.0}  # b ran in the other process; c after a, in a's

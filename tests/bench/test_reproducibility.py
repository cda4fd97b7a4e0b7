"""A table's cells depend on its configuration and seeds only: not on what the cache held, nor on
whether rows ran in this process or in parallel workers; a finished row is answered from the cache."""
from __future__ import annotations

import json
import shutil

import gin
import pytest
import torch
from mlflow.tracking import MlflowClient

import bench.row_context
import bench.runner
from bench.config import parse_config
from bench.results_layout import ResultsLayout
from bench.runner import Experiment
from infra.errors import HarnessError

TABLE = ["tables/table3_smoke.gin"]
SEEDS = ["Experiment.seeds = 2"]


def _run(results, bindings=()):
    gin.clear_config()
    parse_config(TABLE, [*SEEDS, *bindings])
    folder = Experiment().run(results)
    return {(r["row"], r["seed"]): r["metrics"] for r in json.loads((folder / "metrics.json").read_text())["runs"]}


def _same(a, b):
    assert a.keys() == b.keys()
    for job in a:
        assert a[job].keys() == b[job].keys(), job
        for key, value in a[job].items():
            other = b[job][key]
            assert value == other or (value is None and other is None), (job, key, value, other)


@pytest.fixture(autouse=True)
def _no_env_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    results = tmp_path_factory.mktemp("straight")
    return results, _run(results)


def test_cells_do_not_depend_on_what_the_cache_held(straight, tmp_path):
    results, cells = straight
    again = tmp_path / "again"
    shutil.copytree(results / "cache", again / "cache")
    # empty the cache step by step: results, then fine-tuned models, then a first stage, then preparation
    shutil.rmtree(again / "cache" / "results")
    for checkpoint in (again / "cache" / "finetune").rglob("checkpoint.pt"):
        checkpoint.unlink()
    _same(cells, _run(again))
    shutil.rmtree(again / "cache" / "results")
    for stage in (again / "cache" / "stages").glob("stage1_knn_nobr-*/"):
        shutil.rmtree(stage)
    for checkpoint in (again / "cache" / "finetune").rglob("checkpoint.pt"):
        checkpoint.unlink()
    _same(cells, _run(again))


def test_a_parallel_run_gives_the_cells_of_a_sequential_one(straight, tmp_path):
    _, cells = straight
    _same(cells, _run(tmp_path, ["Experiment.workers = 2"]))
    client = MlflowClient(ResultsLayout(tmp_path).tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("table3").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 12 and {r.info.status for r in runs} == {"FINISHED"}
    # the workers' loss curves reached MLflow through the parent
    child = next(r for r in children if r.data.tags["row"] == "DD+MTP" and r.data.tags["seed"] == "0")
    assert len(client.get_metric_history(child.info.run_id, "pretrain/stage2_knn_nobr/loss")) == 1  # 1 epoch
    assert child.data.metrics["synthetic/seg/mIoU"] == cells[("DD+MTP", 0)]["synthetic/seg/mIoU"]


def test_the_seeds_of_a_table_draw_their_own_numbers(straight):
    _, cells = straight
    assert cells[("DD+MTP", 0)]["pretrain/stage2_knn_nobr/loss_last"] != cells[("DD+MTP", 1)]["pretrain/stage2_knn_nobr/loss_last"]


def test_a_rerun_of_a_finished_table_loads_no_model(straight, tmp_path, monkeypatch, capsys):
    results, cells = straight
    shutil.copytree(results / "cache", tmp_path / "cache")

    def no_loading(*args, **kwargs):
        raise AssertionError("a finished row loaded a checkpoint")

    monkeypatch.setattr(torch, "load", no_loading)
    _same(cells, _run(tmp_path))
    assert "evaluation: read from the cache" in capsys.readouterr().out
    client = MlflowClient(ResultsLayout(tmp_path).tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("table3").experiment_id])
    child = next(r for r in runs if r.data.tags.get("row") == "DD")
    assert client.get_metric_history(child.info.run_id, "finetune/seg/loss")  # curves replayed from the cache


def test_a_rerun_answered_from_the_cache_starts_no_worker_process(straight, tmp_path, monkeypatch):
    results, cells = straight
    shutil.copytree(results / "cache", tmp_path / "cache")

    def no_pool(*args, **kwargs):
        raise AssertionError("a table whose every row is cached started worker processes")

    monkeypatch.setattr(bench.runner, "WorkerPool", no_pool)
    _same(cells, _run(tmp_path, ["Experiment.workers = 2"]))


def test_a_changed_metric_code_is_never_answered_from_the_cache(straight, tmp_path, monkeypatch, capsys):
    results, cells = straight
    shutil.copytree(results / "cache", tmp_path / "cache")
    monkeypatch.setattr(bench.row_context, "metric_code_fingerprint", lambda: "another version")
    _same(cells, _run(tmp_path))
    assert "read from the cache" not in capsys.readouterr().out


def test_a_failing_row_in_a_worker_fails_its_run_in_one_line(tmp_path):
    # Masks with no region at all pass every check before the work (they depend on the data) and stop
    # the preparation inside a worker.
    with pytest.raises(HarnessError, match="no frame of synthetic/pretrain could be prepared"):
        _run(tmp_path, ["Experiment.workers = 2", "RenderedMaskSource.drop_small = 1_000_000",
                        "Experiment.rows = {'DD': @dd/FinetuneRow, 'DD+MTP': @dd_mtp/FinetuneRow}",
                        "TableSpec.baseline_row = 'DD'"])
    client = MlflowClient(ResultsLayout(tmp_path).tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("table3").experiment_id])
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert failed and any("could be prepared" in r.data.tags.get("error", "") for r in failed)
    assert "RUNNING" not in {r.info.status for r in runs}


def test_an_empty_training_split_fails_in_one_line(tmp_path):
    expected = r"SyntheticIndoor: split 'train' has no scene \(SyntheticIndoor.num_train = 0\)"
    with pytest.raises(HarnessError, match=expected):
        _run(tmp_path, ["SyntheticIndoor.num_train = 0", "Experiment.rows = {'none': @none/FinetuneRow}"])


def _damage(path) -> None:
    """Overwrite bytes in the middle of ``path`` (256, or a quarter of a small file), keeping its size."""
    data = bytearray(path.read_bytes())
    n, middle = min(256, len(data) // 4), len(data) // 2
    data[middle:middle + n] = bytes(b ^ 0xFF for b in data[middle:middle + n])
    path.write_bytes(bytes(data))


def test_a_cache_file_changed_in_place_is_recomputed_with_a_warning_never_used(straight, tmp_path, capsys):
    """One file of every kind is damaged at the same size (a bad disk, a hand edit): each is reported
    and made again, and the table is the straight run's."""
    results, cells = straight
    shutil.copytree(results / "cache", tmp_path / "cache")
    cache = tmp_path / "cache"
    row_result = next(p for p in (cache / "results").glob("*.json") if not p.name.endswith(".meta.json")
                      and json.loads(p.read_text())["metrics"] == cells[("DD+MTP", 0)])
    _damage(row_result)  # so that DD+MTP seed 0 is computed again and reads its steps
    for checkpoint in cache.rglob("checkpoint.pt"):
        _damage(checkpoint)
    preparation = next(p for p in (cache / "prepare").iterdir() if p.is_dir())
    for scene in (preparation / "scenes").glob("*.npz"):
        _damage(scene)
    _damage(next(preparation.glob("groups-*.npz")))
    _damage(next((cache / "scenes").glob("synthetic-train-*/synthetic-s0-train-0000.npz")))
    _damage(next(p for p in (cache / "figures").glob("*.png")))
    _same(cells, _run(tmp_path))
    warnings = "\n".join(line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:"))
    for kind in ("cached row result", "checkpoint", "prepared scene", "groups file", "cached scene",
                 "cached figure"):
        assert f"warning: {kind}" in warnings, kind
    assert "differ from the checksum recorded when it was written" in warnings

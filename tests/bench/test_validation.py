"""Bad input fails before any work, in one line naming the parameter or file (issue 12, item 3)."""
from __future__ import annotations

import json

import gin
import pytest

import bench.runner
from bench.config import describe_gin_error, parse_config
from bench.runner import Experiment
from bench.validation import check_table, validate_rows
from infra.errors import HarnessError
from tests.conftest import REPO_ROOT

TABLE = ["tables/table4_smoke.gin"]


@pytest.fixture(autouse=True)
def _no_env_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _error(tmp_path, bindings) -> str:
    """The one-line error of a table4 smoke run with ``bindings``, as the command line would print it;
    checks that nothing was computed or tracked."""
    parse_config(TABLE, bindings)
    with pytest.raises(HarnessError) as info:
        try:
            experiment = Experiment()
        except Exception as e:  # as bench.cli does
            raise HarnessError(describe_gin_error(e, source="config")) from None
        experiment.run(tmp_path / "results")
    message = str(info.value)
    assert "\n" not in message, message
    results = tmp_path / "results"
    assert not (results / "cache").exists() and not (results / "mlflow.db").exists()
    return message


@pytest.mark.parametrize("binding, expected", [
    ("TrainSchedule.epochs = -1", "TrainSchedule.epochs: expected an integer >= 1, got -1"),
    ("TrainSchedule.batch_size = 0", "TrainSchedule.batch_size: expected an integer >= 1, got 0"),
    ("finetune_det/TrainSchedule.lr = -1.0", "TrainSchedule.lr: expected a number > 0, got -1.0 (in gin scope 'finetune_det')"),
    ("SyntheticIndoor.num_train = 0", "SyntheticIndoor: split 'train' has no scene (SyntheticIndoor.num_train = 0)"),
    ("NUM_TOKENS = 0", "SamGuidedTokenizer.num_tokens: expected an integer >= 1, got 0"),
    ("MaskedTokenPrediction.mask_ratio = 1.5", "MaskedTokenPrediction.mask_ratio: expected a value in [0, 1), got 1.5"),
    ("Experiment.seeds = 'three'", "Experiment.seeds: expected an integer >= 1, got 'three'"),
    ("FramePreparation.num_groups = 0", "FramePreparation.num_groups: expected an integer >= 1, got 0"),
])
def test_a_bad_value_is_one_line_naming_the_parameter_before_any_work(tmp_path, binding, expected):
    assert expected in _error(tmp_path, [binding])


def _dinov2(folder, config="default", weights="default"):
    """A DINOv2 directory as save_pretrained writes it, with the config or the weights spoilt on request."""
    folder.mkdir()
    if config == "default":
        (folder / "config.json").write_text(json.dumps({"model_type": "dinov2", "hidden_size": 8, "patch_size": 14}))
    elif config is not None:
        (folder / "config.json").write_text(config)
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    data = len(header).to_bytes(8, "little") + header + bytes(16)
    if weights is not None:
        (folder / "model.safetensors").write_bytes(data if weights == "default" else weights(data))
    return folder


@pytest.mark.parametrize("spoilt, expected", [
    ({"config": None}, "has no config.json"),
    ({"config": '{"model_type": "dinov2", "hidden_si'}, "config.json: not readable as JSON"),
    ({"config": '{"model_type": "dinov2"}'}, "config.json: expected integer hidden_size and patch_size"),
    ({"weights": None}, "has no weights"),
    ({"weights": lambda data: data[:-5]}, "model.safetensors: truncated"),
    ({"weights": lambda data: b"\xff" * len(data)}, "model.safetensors: not a safetensors file"),
])
def test_a_broken_dinov2_directory_is_one_line_naming_the_file_before_any_work(tmp_path, spoilt, expected):
    folder = _dinov2(tmp_path / "dinov2", **spoilt)
    message = _error(tmp_path, ["FramePreparation.teacher = @Dinov2Teacher()",
                                f"Dinov2Teacher.model_dir = '{folder}'", "Dinov2Teacher.device = 'cpu'"])
    assert expected in message and "dinov2" in message


def test_a_complete_dinov2_directory_passes(tmp_path):
    from methods.teachers import Dinov2Teacher

    teacher = Dinov2Teacher(str(_dinov2(tmp_path / "d")), device="cpu")
    assert teacher.dim == 8 and teacher.patch_size == 14


def test_tokens_that_would_repeat_most_of_their_points_are_warned_about(capsys):
    parse_config(TABLE, ["GROUP_SIZE = 100000"])
    experiment = Experiment()
    validate_rows(experiment.rows, experiment.dataset, "train", "val")
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert warnings and all("would repeat most of its 100000 points" in line for line in warnings)
    assert any("SamGuidedTokenizer.group_size = 100000" in line and "FramePreparation.points_per_frame = 512" in line
               for line in warnings)
    gin.clear_config()
    parse_config(TABLE)
    experiment = Experiment()
    validate_rows(experiment.rows, experiment.dataset, "train", "val")
    assert "warning" not in capsys.readouterr().out


def test_an_include_cycle_is_one_line_naming_the_files(tmp_path):
    (tmp_path / "a.gin").write_text(f"include '{tmp_path / 'b.gin'}'\n")
    (tmp_path / "b.gin").write_text(f"include '{tmp_path / 'a.gin'}'\n")
    with pytest.raises(HarnessError) as info:
        parse_config([str(tmp_path / "a.gin")])
    message = str(info.value)
    assert "\n" not in message and "gin include cycle" in message
    assert f"{tmp_path / 'a.gin'} -> {tmp_path / 'b.gin'} -> {tmp_path / 'a.gin'}" in message


@pytest.mark.parametrize("binding, expected", [
    ("TableSpec.rows = ['none', 'stage1']", "TableSpec.rows: expected a non-empty dict of row name -> paper row"),
    ("TableSpec.columns = 'synthetic/seg/mIoU'", "TableSpec.columns: expected a non-empty list of metric keys"),
    ("TableSpec.columns = ['synthetic/seg/mIoU', 'synthetic/seg/mIoU']", "names a column twice"),
    ("TableSpec.alpha = 'p'", "TableSpec.alpha: expected a number in (0, 1), got 'p'"),
    ("TableSpec.paper_table = 'table9'", "TableSpec.paper_table: 'table9' is none of the paper's tables"),
    ("TableSpec.notes = 'a note'", "TableSpec.notes: expected a list of strings"),
])
def test_a_bad_table_parameter_is_one_line_before_any_work(tmp_path, binding, expected):
    assert expected in _error(tmp_path, [binding])


def test_a_misspelled_table_row_is_named_before_any_work(tmp_path):
    message = _error(tmp_path, ["TableSpec.rows = {'stage1': '', 'stage1+stage 2': ''}"])
    assert "TableSpec.rows: 'stage1+stage 2' is not a row of the experiment (did you mean 'stage1+stage2'?)" in message
    gin.clear_config()
    message = _error(tmp_path, ["Experiment.rows = {'stage1+stage2': @ours/FinetuneRow}"])
    assert "TableSpec.rows: 'stage1' is not a row of the experiment" in message and "the baseline row must run" in message


def test_a_table_leaves_out_the_rows_an_invocation_does_not_run(capsys):
    parse_config(TABLE, ["Experiment.rows = {'stage1': @s1/FinetuneRow, 'stage1+stage2': @ours/FinetuneRow}"])
    experiment = Experiment()
    built = {name: factory() for name, factory in experiment.rows.items()}
    table = check_table(experiment.table, built, experiment.dataset.info.name, experiment.tasks)
    assert list(table.rows) == ["stage1", "stage1+stage2"]
    assert "note: the table leaves out 'stage1, twice the epochs', 'stage1+MTP same stage'" in capsys.readouterr().out


def test_a_column_no_row_reports_is_named_before_any_work(tmp_path):
    message = _error(tmp_path, ["TableSpec.columns = ['synthetic/seg/mIoU', 'synthetic/det/AP99']",
                                "TableSpec.paper_columns = {}"])
    assert "TableSpec.columns: no row reports 'synthetic/det/AP99' (did you mean 'synthetic/det/AP50'?)" in message


TABLE_LEAVES = sorted(p.name for p in (REPO_ROOT / "gin" / "tables").glob("*_smoke.gin")) + \
    sorted(p.name for p in (REPO_ROOT / "gin" / "tables").glob("*_demo.gin"))


@pytest.mark.parametrize("leaf", TABLE_LEAVES)
def test_every_shipped_table_shows_rows_and_columns_its_experiment_has(leaf):
    parse_config([f"tables/{leaf}"])
    experiment = Experiment()
    built = {name: factory() for name, factory in experiment.rows.items()}
    check_table(experiment.table, built, experiment.dataset.info.name, experiment.tasks)


@pytest.fixture
def eight_gib(monkeypatch):
    """A machine with 8 GiB free, whatever this one has (the check compares estimates with it)."""
    monkeypatch.setattr(bench.runner, "available_memory_bytes", lambda device: 8 * 2**30)


@pytest.mark.parametrize("binding, expected", [
    ("SegmentationFinetune.num_points = 5_000_000", "SegmentationFinetune.num_points = 5000000 points x batch 2"),
    ("downstream/KnnTokenizer.num_tokens = 200_000", "200000 tokens x 16 points x batch 2 through the mini-PointNet"),
    ("finetune_seg/TrainSchedule.batch_size = 100_000", "x batch 100000"),
    ("EncoderSpec.depth = 50_000", "(EncoderSpec width 32, depth 50000, and the heads)"),
])
def test_a_step_too_large_for_the_machine_is_one_line_before_any_work(tmp_path, eight_gib, binding, expected):
    message = _error(tmp_path, [binding])
    assert "one training step would hold about" in message and expected in message, message
    assert "more than the 8.0 GiB this machine has free" in message


def test_the_memory_check_shares_the_machine_between_worker_processes(tmp_path, monkeypatch):
    monkeypatch.setattr(bench.runner, "available_memory_bytes", lambda device: 6 * 2**30)
    monkeypatch.setattr(bench.runner, "resolve_workers", lambda *args: 3)
    message = _error(tmp_path, ["SegmentationFinetune.num_points = 200_000"])
    assert "more than the 2.0 GiB this machine has free for each of the 3 worker processes" in message
    assert message.endswith("or Experiment.workers")


def test_generating_scenes_too_large_for_the_machine_is_one_line_before_any_work(tmp_path, eight_gib):
    message = _error(tmp_path, ["SyntheticIndoor.image_hw = (10_000, 10_000)"])
    assert message.startswith("generating a scene of SyntheticIndoor.image_hw = (10000, 10000) x frames_per_scene")
    assert "more than the 8.0 GiB this machine has free" in message


def test_a_teacher_too_large_for_the_machine_is_one_line_before_any_work(tmp_path, eight_gib):
    message = _error(tmp_path, ["SimulatedTeacher.dim = 50_000_000"])
    assert message.startswith("preparing a frame of 48 x 64 pixels with SimulatedTeacher.dim = 50000000, patch_size = 8")
    assert "more than the 8.0 GiB this machine has free" in message

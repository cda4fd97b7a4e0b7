"""gin plumbing: every shipped file parses, includes resolve from gin/, typos give one-line hints."""
from __future__ import annotations

import pytest

import bench.runner  # noqa: F401  registers the Experiment and every component
from bench.config import GIN_DIR, config_bindings, parse_config
from infra.errors import HarnessError

SHIPPED = sorted(p.relative_to(GIN_DIR).as_posix() for p in GIN_DIR.rglob("*.gin"))
LEAVES = ["demo.gin", "smoke.gin", "pretrain_demo.gin", "pretrain_smoke.gin"]


def test_there_are_shipped_gin_files():
    assert "demo.gin" in SHIPPED and len(SHIPPED) >= 4


# Values a user must give for real data and weights (%gin.REQUIRED in the shipped files).
REQUIRED_VALUES = ["SamMaskSource.checkpoint = '/models/sam_vit_h.pth'", "Dinov2Teacher.model_dir = '/models/dinov2'",
                   "ScanNetExport.root = '/data/scannet'", "ScanNetExport.meta_dir = '/data/scannet/meta_data'",
                   "S3DISBin.root = '/data/s3dis'", "SunRgbdVotenet.root = '/data/sunrgbd/sunrgbd_trainval'",
                   "SensFrames.root = '/data/scannet/frames'", "SensFrames.alignment_root = '/data/scannet/scans'"]
PAPER_LEAVES = [name for name in SHIPPED if name.startswith("tables/") and "_paper" in name]


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_gin_file_parses(name):
    parse_config([str(GIN_DIR / name)], REQUIRED_VALUES)


def test_a_required_value_left_unset_is_a_one_line_error():
    message = _error(["prepare/real.gin"])
    assert "SamMaskSource.checkpoint" in message and "REQUIRED" in message


@pytest.mark.parametrize("name", LEAVES)
def test_leaf_files_build_the_experiment(name):
    from bench.runner import Experiment

    parse_config([f"gin/{name}"], ["SyntheticIndoor.num_train = 1"])
    experiment = Experiment()
    assert experiment.rows and experiment.tasks and experiment.dataset.info.name == "synthetic"


@pytest.mark.parametrize("name", PAPER_LEAVES)
def test_paper_leaves_pretrain_on_scannet_frames_and_name_their_data(name, real_data):
    """The paper's protocol: ScanNet train frames (one in 25) pretrain every downstream dataset."""
    from bench.runner import Experiment

    scannet = real_data / "scannet" / "mmdet3d_9e39d46"
    downstream = {"scannet": [], "s3dis": [f"S3DISBin.root = '{real_data / 's3dis' / 'mmdet3d_fe25f7a' / 'tests'}'"],
                  "sunrgbd": [f"SunRgbdVotenet.root = '{real_data / 'sunrgbd' / 'mmdet3d_9e39d46' / 'sunrgbd_trainval'}'"]}
    dataset = next((d for d in ("s3dis", "sunrgbd") if d in name), "scannet")
    parse_config([name], [*REQUIRED_VALUES, f"ScanNetExport.root = '{scannet / 'scannet_train_instance_data'}'",
                          f"ScanNetExport.meta_dir = '{scannet / 'meta_data'}'", *downstream[dataset],
                          "FramePreparation.mask_source = @ClassicalMaskSource()",  # no SAM checkpoint here
                          "FramePreparation.teacher = @SimulatedTeacher()"])
    experiment = Experiment()
    assert experiment.dataset.info.name == dataset and experiment.profile == "paper"
    assert all(column.startswith(f"{dataset}/") for column in experiment.table.columns)
    for factory in experiment.rows.values():
        row = factory()
        if row.pretrain is not None:
            source = row.pretrain.dataset
            assert source.info.name == "scannet" and source.frames.every == 25 and row.pretrain.split == "train"


def test_includes_resolve_relative_to_gin_dir_from_any_working_directory(tmp_path, monkeypatch):
    (tmp_path / "base").mkdir()
    # A decoy with the include's relative name in the working directory must not be picked up.
    (tmp_path / "base" / "experiment.gin").write_text("Experiment.seeds = 99\n")
    monkeypatch.chdir(tmp_path)
    parse_config(["demo.gin"])
    import gin

    assert gin.query_parameter("Experiment.seeds") == 1


def _error(files, bindings=()) -> str:
    with pytest.raises(HarnessError) as info:
        parse_config(files, bindings)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_configurable_in_binding_names_binding_and_nearest_name():
    message = _error(["demo.gin"], ["SyntheticIndor.num_train = 3"])
    assert "--gin_binding" in message and "SyntheticIndor" in message and "'SyntheticIndoor'" in message


def test_unknown_parameter_suggests_the_nearest_parameter():
    message = _error(["demo.gin"], ["SyntheticIndoor.num_trian = 3"])
    assert "num_trian" in message and "did you mean 'num_train'" in message


def test_unknown_reference_in_a_file_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.gin"
    bad.write_text("include 'demo.gin'\n\nExperiment.rows = {'x': @NonLearnedBaselin}\n")
    message = _error([str(bad)])
    assert "bad.gin:3" in message and "'NonLearnedBaseline'" in message


def test_missing_gin_file_and_missing_include():
    assert "gin file not found: nope.gin" in _error(["nope.gin"])
    assert "gin include not found" in _error(["demo.gin"], ["include 'nope/missing.gin'"])


def test_unparsable_binding():
    assert "cannot parse" in _error(["demo.gin"], ["Experiment.seeds 3"])


def test_a_parse_error_names_the_line_and_says_what_is_wrong_in_words(tmp_path):
    bad = tmp_path / "bad.gin"
    bad.write_text("include 'demo.gin'\nExperiment.seeds = (1,\n  foo\n")
    message = _error([str(bad)])
    assert "bad.gin:3: cannot parse gin statement: 'foo' is not a value" in message and " object at 0x" not in message
    bad.write_text("include 'demo.gin'\nExperiment.seeds = (1,\n")
    assert "bad.gin:3: cannot parse gin statement: the text ends inside a statement" in _error([str(bad)])
    message = _error(["demo.gin"], ["Experiment.seeds = three"])
    assert message.startswith("--gin_binding 'Experiment.seeds = three': cannot parse") and "'three' is not" in message


def test_a_key_given_twice_in_a_dict_is_refused(tmp_path):
    message = _error(["demo.gin"], ["Experiment.rows = {'a': @NonLearnedBaseline, 'a': @NonLearnedBaseline}"])
    assert "key 'a' appears twice in a dict" in message
    bad = tmp_path / "twice.gin"
    bad.write_text("include 'demo.gin'\nExperiment.rows = {\n  'a': @NonLearnedBaseline,\n"
                   "  'b': {'x': 1, 'x': 2},\n}\n")
    assert "twice.gin:4" in _error([str(bad)]) and "key 'x' appears twice" in _error([str(bad)])
    parse_config(["demo.gin"], ["Experiment.rows = {'a': @NonLearnedBaseline, 'b': @NonLearnedBaseline}"])


def test_config_bindings_reads_single_and_multi_line_values():
    text = "# c\nA.x = 1\nB.y = {'a': 1,\n    'b': 2}\nscope/C.z = @D()\nMACRO = 3\n"
    assert config_bindings(text) == {"A.x": "1", "B.y": "{'a': 1, 'b': 2}", "scope/C.z": "@D()", "MACRO": "3"}


# ------------------------------------------------------------------------------------ gin imports

# A gin file that, when imports are allowed, runs a shell command as the experiment is built (issue 12).
EXPLOIT = """from __gin__ import dynamic_registration
import subprocess
import bench.runner
bench.runner.Experiment.name = @subprocess.getoutput()
subprocess.getoutput.cmd = 'touch {marker}'
"""


@pytest.fixture
def marker_module(tmp_path, monkeypatch):
    """A module on sys.path whose import writes a marker file: proof that a gin import ran code."""
    import sys

    marker = tmp_path / "imported.marker"
    (tmp_path / "sam3d_marker_module.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield marker
    sys.modules.pop("sam3d_marker_module", None)


def test_import_in_a_file_is_refused_before_it_runs(tmp_path, marker_module):
    bad = tmp_path / "bad.gin"
    bad.write_text("include 'demo.gin'\n\nimport sam3d_marker_module\n")
    message = _error([str(bad)])
    assert "bad.gin:3" in message and "'import sam3d_marker_module' refused" in message
    assert "--allow_gin_imports" in message and "bench, methods, datasets" in message
    assert not marker_module.exists()


def test_dynamic_registration_is_refused_and_the_command_never_runs(tmp_path):
    marker = tmp_path / "ran.marker"
    bad = tmp_path / "exploit.gin"
    bad.write_text(EXPLOIT.format(marker=marker))
    message = _error(["demo.gin", str(bad)])
    assert "exploit.gin:1" in message and "dynamic_registration' refused" in message
    assert "--allow_gin_imports" in message
    assert not marker.exists()


def test_import_reached_through_an_include_names_the_included_file(tmp_path, marker_module):
    (tmp_path / "inner.gin").write_text("# a comment\nimport sam3d_marker_module\n")
    outer = tmp_path / "outer.gin"
    outer.write_text(f"include 'demo.gin'\ninclude '{tmp_path / 'inner.gin'}'\n")
    message = _error([str(outer)])
    assert "inner.gin:2" in message and "'import sam3d_marker_module' refused" in message
    assert not marker_module.exists()


def test_import_in_a_binding_is_refused(marker_module):
    message = _error(["demo.gin"], ["import sam3d_marker_module"])
    assert "--gin_binding 'import sam3d_marker_module'" in message and "refused" in message
    assert not marker_module.exists()


def test_project_packages_may_be_imported_without_the_flag():
    parse_config(["demo.gin"], ["import methods.mask_sources\nfrom bench import metrics"])


def test_allow_imports_runs_them(tmp_path, marker_module):
    good = tmp_path / "trusted.gin"
    good.write_text("include 'demo.gin'\nimport sam3d_marker_module\n")
    parse_config([str(good)], allow_imports=True)
    assert marker_module.exists()


def test_the_import_check_is_removed_after_parsing(tmp_path, marker_module):
    _error(["demo.gin"], ["import sam3d_marker_module"])
    import gin

    gin.parse_config("import sam3d_marker_module")  # gin used directly is unchanged
    assert marker_module.exists()

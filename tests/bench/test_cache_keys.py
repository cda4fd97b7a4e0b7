"""Every cached step is keyed on every parameter of its configuration (issue 12, item 1b).

Each component that can be part of a cached step (the dataset, the preparation and its mask source and
teacher, the pretraining stages and everything in them, the fine-tuning runs, the rows and tasks whose
results are cached, the figures) is built from its defaults and again with one constructor parameter
changed, for every parameter ``inspect.signature`` lists, so a parameter added later is covered without
touching this file. A step whose key does not change with a parameter would silently answer a changed
configuration from the cache.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import pathlib
import shutil

import gin
import pandas as pd
import pytest

from bench.row_context import RowContext
from bench.tasks import DetectionTask, SemanticSegmentationTask
from bench.tracking import NullRun
from datasets.scene_cache import CachedScenes
from datasets.synthetic import SyntheticIndoor
from infra.fingerprint import fingerprint
from methods.detr_recipe import DetrRecipe
from methods.encoder import DecoderSpec, EncoderSpec
from methods.finetune import DetrDetection, FinetuneRow, SegmentationFinetune
from methods.groupfree_finetune import GroupFreeDetection, GroupFreeRecipe
from methods.learning_curve import LearningCurve
from methods.mask_sources import ClassicalMaskSource, PrecomputedMaskSource, RenderedMaskSource, SamMaskSource
from methods.objectives import Bridge3DStyle, DistillationWithMTP, MaskedTokenPrediction, PointMAE, RegionDistillation
from methods.preparation import FramePreparation
from methods.pretrain import PretrainRow, PretrainStage
from methods.protocols import LimitedReconstructions, LinearProbe
from methods.reweighting import GroupBalancing
from methods.teachers import Dinov2Teacher, SimulatedTeacher
from methods.tokenizers import ExactFPS, KnnTokenizer, RandomSampler, SamGuidedTokenizer, SubsampledFPS
from methods.train import TrainSchedule


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, pathlib.Path]:
    """Two of each input a component reads at construction: SAM checkpoints, mask folders, DINOv2 folders."""
    root = tmp_path_factory.mktemp("inputs")
    made = {}
    for i in (0, 1):
        (root / f"sam{i}.pth").write_bytes(f"weights {i}".encode())
        (root / f"masks{i}").mkdir()
        dinov2 = root / f"dinov2-{i}"
        dinov2.mkdir()
        (dinov2 / "config.json").write_text(json.dumps({"model_type": "dinov2", "hidden_size": 8, "patch_size": 14}))
        header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
        (dinov2 / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes([i] * 4))
        made.update({f"sam{i}": root / f"sam{i}.pth", f"masks{i}": root / f"masks{i}", f"dinov2{i}": dinov2})
    return made


def _stage(**changes) -> PretrainStage:
    return PretrainStage(**{"name": "s1", "objective": RegionDistillation(), "tokenizer": KnnTokenizer(), **changes})


def _finetune_row(**changes) -> FinetuneRow:
    return FinetuneRow(**{"pretrain": PretrainRow(FramePreparation(RenderedMaskSource(), SimulatedTeacher()),
                                                  _stage()),
                          "segmentation": SegmentationFinetune(KnnTokenizer()),
                          "detection": DetrDetection(KnnTokenizer()), **changes})


def _base(files) -> dict[type, dict]:
    """Values for the parameters a component has no default for."""
    return {
        SamMaskSource: {"checkpoint": str(files["sam0"]), "device": "cpu"},
        PrecomputedMaskSource: {"root": str(files["masks0"])},
        Dinov2Teacher: {"model_dir": str(files["dinov2" + "0"]), "device": "cpu"},
        FramePreparation: {"mask_source": RenderedMaskSource(), "teacher": SimulatedTeacher()},
        PretrainStage: {"name": "s1", "objective": RegionDistillation(), "tokenizer": KnnTokenizer()},
        PretrainRow: {"preparation": FramePreparation(RenderedMaskSource(), SimulatedTeacher()), "stage": _stage()},
        SegmentationFinetune: {"tokenizer": KnnTokenizer()},
        DetrDetection: {"tokenizer": KnnTokenizer()},
        GroupFreeDetection: {"tokenizer": KnnTokenizer()},
    }


def _variants(files) -> dict[tuple[type, str], list]:
    """Changed values for parameters the generic rules below cannot change (paths, choices, components)."""
    encoder, decoder = EncoderSpec(width=64), DecoderSpec(depth=3)
    return {
        (SamMaskSource, "checkpoint"): [str(files["sam1"])],
        (SamMaskSource, "model_type"): ["vit_b"],
        (SamMaskSource, "model_builder"): [lambda checkpoint=None: None],
        (PrecomputedMaskSource, "root"): [str(files["masks1"])],
        (PrecomputedMaskSource, "pattern"): ["{frame_id}.png"],
        (Dinov2Teacher, "model_dir"): [str(files["dinov21"])],
        (Dinov2Teacher, "image_size"): [224],
        (FramePreparation, "mask_source"): [RenderedMaskSource(split_prob=0.2)],
        (FramePreparation, "teacher"): [SimulatedTeacher(noise=0.1)],
        (TrainSchedule, "device_tokenization"): [True],
        (PretrainStage, "name"): ["s2"],
        (PretrainStage, "objective"): [RegionDistillation(projection_hidden=8)],
        (PretrainStage, "tokenizer"): [SamGuidedTokenizer()],
        (PretrainStage, "schedule"): [TrainSchedule(epochs=2)],
        (PretrainStage, "previous"): [_stage(name="s0")],
        (PretrainRow, "preparation"): [FramePreparation(RenderedMaskSource(), SimulatedTeacher(), num_groups=8)],
        (PretrainRow, "stage"): [_stage(tokenizer=SamGuidedTokenizer())],
        (PretrainRow, "dataset"): [SyntheticIndoor(num_pretrain=2)],
        (PretrainRow, "split"): ["pretrain"],
        (FinetuneRow, "pretrain"): [_finetune_row().pretrain],
        (FinetuneRow, "segmentation"): [SegmentationFinetune(KnnTokenizer(), hidden=64)],
        (FinetuneRow, "detection"): [DetrDetection(KnnTokenizer(), num_queries=16)],
        ("tokenizer",): [SamGuidedTokenizer()],
        ("schedule",): [TrainSchedule(epochs=2)],
        ("encoder",): [encoder],
        ("decoder",): [decoder],
        ("balancing",): [GroupBalancing(enabled=False)],
        ("sampler",): [RandomSampler()],
        ("projection_hidden",): [8],
        ("init_student",): ["scratch"],
        ("protocol",): [LimitedReconstructions(percent=10)],
        (TrainSchedule, "warmup_fraction"): [0.1],
        ("curve",): [LearningCurve(every=2)],
        (FinetuneRow, "detection_heads"): [{"groupfree": GroupFreeDetection(KnnTokenizer())}],
        (DetrDetection, "recipe"): [DetrRecipe(cost_center=5.0)],
        (GroupFreeDetection, "recipe"): [GroupFreeRecipe(weight_kps=0.2)],
        (FinetuneRow, "protocols"): [[SegmentationFinetune(KnnTokenizer(), protocol=LinearProbe())]],
        (SamGuidedTokenizer, "budget"): ["proportional"],
        (SamGuidedTokenizer, "split"): ["knn"],
        (SamGuidedTokenizer, "center"): ["all"],
        ("unassigned",): ["drop"],
        ("device",): ["cuda"],
        ("embed_norm",): ["layer"],
        ("embed_channels",): [(16, 32, 48)],
    }


def _candidates(value) -> list:
    """Generic changed values for a parameter's default."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value * 2, value - 1]
    if isinstance(value, float):
        return [value * 0.5, value + 0.5] if value else [0.1, 0.5]
    if isinstance(value, tuple) and value and all(isinstance(v, (int, float)) for v in value):
        return [(*value[:-1], value[-1] + 1), tuple(v * 2 for v in value)]
    if isinstance(value, str):
        return [value + "x"]
    return []


# Parameters whose every other value may be refused on this machine (no CUDA: 'auto' is 'cpu').
MACHINE_DEPENDENT = ("device",)


def _varied(cls: type, files) -> list[tuple[str, object, object]]:
    """(parameter, component with the defaults, component with that parameter changed) for every
    parameter of ``cls``'s constructor (but a machine-dependent one no other value of builds here)."""
    base, variants = _base(files).get(cls, {}), _variants(files)
    out = []
    for name, parameter in inspect.signature(cls).parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        default = base.get(name, parameter.default)
        assert default is not inspect.Parameter.empty and default is not gin.REQUIRED, \
            f"{cls.__name__}.{name}: give a value in _base"
        tries = variants.get((cls, name)) or variants.get((name,)) or _candidates(default)
        built = None
        for value in tries:
            if fingerprint(value) == fingerprint(default):
                continue
            try:
                built = cls(**{**base, name: value})
                break
            except Exception:  # noqa: BLE001  that value is refused; try the next one
                continue
        if built is None and name in MACHINE_DEPENDENT:
            continue
        assert built is not None, f"{cls.__name__}.{name}: no changed value builds; add one to _variants"
        out.append((name, cls(**base), built))
    return out


COMPONENTS = [SyntheticIndoor, RenderedMaskSource, ClassicalMaskSource, SamMaskSource, PrecomputedMaskSource,
              SimulatedTeacher, Dinov2Teacher, FramePreparation, RegionDistillation, MaskedTokenPrediction,
              DistillationWithMTP, PointMAE, Bridge3DStyle, EncoderSpec, DecoderSpec, GroupBalancing, KnnTokenizer,
              SamGuidedTokenizer, ExactFPS, RandomSampler, SubsampledFPS, TrainSchedule, PretrainStage,
              SegmentationFinetune, DetrDetection, GroupFreeDetection, PretrainRow, FinetuneRow,
              SemanticSegmentationTask, DetectionTask]


# Settings that change how fast or where a component computes, never what: out of its key.
SPEED_ONLY = {(SamMaskSource, "points_per_batch"), *((FramePreparation, name) for name in FramePreparation.SPEED_ONLY),
              *((TrainSchedule, name) for name in TrainSchedule.SPEED_ONLY)}


@pytest.mark.parametrize("cls", COMPONENTS, ids=lambda c: c.__name__)
def test_every_parameter_of_a_component_changes_its_fingerprint(cls, files):
    same = [name for name, base, changed in _varied(cls, files)
            if fingerprint(base) == fingerprint(changed) and (cls, name) not in SPEED_ONLY]
    assert not same, f"{cls.__name__}: the fingerprint ignores {same} (keep them in public attributes)"


def test_weights_are_keyed_by_their_content_and_speed_settings_not_at_all(files, tmp_path):
    """Moving the weights (or copying them elsewhere) keeps a SAM source's and a DINOv2 teacher's key; another
    batch size or device too; a threshold or other weights change it."""
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (moved / "sam.pth").write_bytes(files["sam0"].read_bytes())
    shutil.copytree(files["dinov20"], moved / "dinov2")
    sam = fingerprint(SamMaskSource(str(files["sam0"]), device="cpu"))
    assert fingerprint(SamMaskSource(str(moved / "sam.pth"), device="cpu", points_per_batch=16)) == sam
    assert fingerprint(SamMaskSource(str(files["sam0"]), device="cpu", pred_iou_thresh=0.5)) != sam
    assert fingerprint(SamMaskSource(str(files["sam1"]), device="cpu")) != sam
    teacher = fingerprint(Dinov2Teacher(str(files["dinov20"]), device="cpu"))
    assert fingerprint(Dinov2Teacher(str(moved / "dinov2"), device="cpu")) == teacher
    assert fingerprint(Dinov2Teacher(str(files["dinov21"]), device="cpu")) != teacher
    preparation = FramePreparation(SamMaskSource(str(files["sam0"]), device="cpu"), Dinov2Teacher(str(files["dinov20"])))
    relocated = FramePreparation(SamMaskSource(str(moved / "sam.pth"), device="cpu", points_per_batch=16),
                                 Dinov2Teacher(str(moved / "dinov2")))
    dataset = SyntheticIndoor()
    assert preparation.cache_dir(dataset, "train", tmp_path) == relocated.cache_dir(dataset, "train", tmp_path)


def test_the_scene_cache_is_keyed_on_every_dataset_parameter(tmp_path, files):
    same = [name for name, base, changed in _varied(SyntheticIndoor, files)
            if CachedScenes.folder_for(base, "train", tmp_path) == CachedScenes.folder_for(changed, "train", tmp_path)]
    assert not same, f"the scene cache folder ignores SyntheticIndoor {same}"


def test_the_preparation_is_keyed_on_every_parameter_and_the_frames_on_all_but_the_groups(tmp_path, files):
    dataset = SyntheticIndoor()
    same, frames_same = [], []
    for name, base, changed in _varied(FramePreparation, files):
        if base.data_key(dataset, "train", tmp_path) == changed.data_key(dataset, "train", tmp_path):
            same.append(name)
        if base.cache_dir(dataset, "train", tmp_path) == changed.cache_dir(dataset, "train", tmp_path):
            frames_same.append(name)
    assert sorted(same) == sorted(FramePreparation.SPEED_ONLY), f"the preparation's key ignores FramePreparation {same}"
    assert sorted(frames_same) == sorted(FramePreparation.GROUPS_ONLY + FramePreparation.SPEED_ONLY)
    preparation = FramePreparation(RenderedMaskSource(), SimulatedTeacher())
    same = [name for name, base, changed in _varied(SyntheticIndoor, files)
            if preparation.data_key(base, "train", tmp_path) == preparation.data_key(changed, "train", tmp_path)]
    assert not same, f"the preparation's key ignores SyntheticIndoor {same}"


@pytest.mark.parametrize("cls", [PretrainStage, SegmentationFinetune, DetrDetection, GroupFreeDetection], ids=lambda c: c.__name__)
def test_training_steps_are_keyed_on_every_parameter(cls, files):
    def key(step):
        return step.key("data", 0) if cls is PretrainStage else step.key("none", "scenes", 0)

    same = [name for name, base, changed in _varied(cls, files) if key(base) == key(changed)]
    assert not same, f"{cls.__name__}.key ignores {same}"


class _KeyOnly(RowContext):
    """A context whose ``cached_result`` records the key the row asks for instead of computing."""

    def cached_result(self, parts, compute):
        self.notes["key"] = self.result_key(parts)
        return {}


def _result_key(row, tmp_path, dataset=None, tasks=(SemanticSegmentationTask, DetectionTask)) -> str:
    context = _KeyOnly("row", 0, dataset or SyntheticIndoor(num_train=1, num_val=1, frames_per_scene=1,
                                                            image_hw=(24, 32)),
                       "train", "val", list(tasks), tmp_path / "cache", tmp_path / "cache" / "results", NullRun())
    row.run(context)
    return context.notes["key"]


def test_row_results_are_keyed_on_every_parameter_of_the_row_and_its_tasks(tmp_path, files):
    same = [f"FinetuneRow.{name}" for name, base, changed in _varied(FinetuneRow, files)
            if _result_key(base, tmp_path) == _result_key(changed, tmp_path)]
    for name, base, changed in _varied(DetectionTask, files):
        if _result_key(_finetune_row(), tmp_path, tasks=[lambda: base]) == \
                _result_key(_finetune_row(), tmp_path, tasks=[lambda: changed]):
            same.append(f"DetectionTask.{name}")
    small = {"num_train": 1, "num_val": 1, "frames_per_scene": 1, "image_hw": (24, 32)}
    if _result_key(_finetune_row(), tmp_path, SyntheticIndoor(**small)) == \
            _result_key(_finetune_row(), tmp_path, SyntheticIndoor(**{**small, "num_val": 2})):
        same.append("SyntheticIndoor.num_val (the evaluation scenes)")
    assert not same, f"the row result key ignores {same}"


def _figure_arguments() -> dict[str, tuple[dict, dict]]:
    """Per plotting function: the arguments of one call and, per argument, a changed value."""
    from bench.tables import TableSpec

    spec = TableSpec(name="t", rows={"a": "a"}, baseline_row="a", columns=["d/seg/mIoU"])
    table = pd.DataFrame({"row": ["a"], "column": ["d/seg/mIoU"], "mean": [1.0]})
    label = {"simulation": True}
    return {
        "plot_ablation": ({"table": table, "spec": spec, "conventions": label},
                          {"table": table.assign(mean=[2.0]), "spec": dataclasses.replace(spec, name="u"),
                           "conventions": {"simulation": False}}),
        "plot_class_iou_vs_frequency": (
            {"per_class": {"a": {"wall": 50.0}}, "class_frequency": {"wall": 10}, "title": "x", "conventions": label},
            {"per_class": {"a": {"wall": 51.0}}, "class_frequency": {"wall": 11}, "title": "y",
             "conventions": {"simulation": False}}),
        "plot_loss_curves": ({"curves": {"a": [(0, 1.0)]}, "title": "x", "log_y": None, "xlabel": "epoch",
                              "conventions": label, "ylabel": "loss"},
                             {"curves": {"a": [(0, 2.0)]}, "title": "y", "log_y": True, "xlabel": "step",
                              "conventions": {"simulation": False}, "ylabel": "AP25"}),
    }


def test_figures_are_keyed_on_every_argument_of_their_plotting_call():
    from bench import report
    from bench.plots import ablation

    same = []
    for plot, (arguments, changes) in _figure_arguments().items():
        parameters = [p for p in inspect.signature(getattr(ablation, plot)).parameters if p != "path"]
        assert sorted(parameters) == sorted(arguments), f"{plot}: give every argument in _figure_arguments"
        for name in parameters:
            if report.figure_key("f.png", plot, arguments) == report.figure_key("f.png", plot,
                                                                                {**arguments, name: changes[name]}):
                same.append(f"{plot}({name})")
    assert not same, f"the figure key ignores {same}"

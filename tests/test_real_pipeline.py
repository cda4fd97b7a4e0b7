"""The whole protocol at smoke size on real frames: a real segmenter (Felzenszwalb), a tiny randomly
initialised DINOv2 saved like a real checkpoint, pretraining, fine-tuning, the table; on the SUN RGB-D
excerpt (RGB-D frames) and on the ScanNet excerpt (posed colour images, depth by z-buffering)."""
from __future__ import annotations

import json

import gin
import transformers

from bench.config import parse_config
from bench.runner import Experiment
from infra.io import read_cache_meta


def _run_table4_smoke(tmp_path, dataset_bindings: list[str], columns: list[str], tasks: list[str]) -> tuple:
    dino = tmp_path / "dinov2-tiny"
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, image_size=56, patch_size=14)
    transformers.Dinov2Model(config).save_pretrained(dino)
    gin.clear_config()
    parse_config(["tables/table4_smoke.gin"], [
        "PretrainRow.split = 'train'",  # real readers have no unlabelled 'pretrain' split of their own
        *dataset_bindings,
        "FramePreparation.mask_source = @ClassicalMaskSource()", "FramePreparation.teacher = @Dinov2Teacher()",
        f"Dinov2Teacher.model_dir = '{dino}'", "Dinov2Teacher.image_size = 112",
        f"Experiment.tasks = [{', '.join(tasks)}]",
        f"TableSpec.columns = {columns!r}", "TableSpec.paper_columns = {}", "TableSpec.paper_table = ''"])
    folder = Experiment().run(tmp_path / "results")
    runs = json.loads((folder / "metrics.json").read_text())["runs"]
    assert [r["row"] for r in runs] == ["stage1", "stage1, twice the epochs", "stage1+MTP same stage",
                                          "stage1+stage2"]
    for run in runs:
        assert all(column in run["metrics"] for column in columns)
        assert any(key.startswith("pretrain/") for key in run["metrics"])
    table = (folder / "table4.md").read_text()
    assert "Felzenszwalb" in table and "not SAM" in table and "DINOv2" in table
    return folder, runs, table


def test_table4_smoke_on_real_sunrgbd_frames(real_data, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = real_data / "sunrgbd" / "mmdet3d_9e39d46" / "sunrgbd_trainval"
    _, _, table = _run_table4_smoke(
        tmp_path, ["Experiment.dataset = @SunRgbdVotenet()", f"SunRgbdVotenet.root = '{root}'",
                   "FinetuneRow.segmentation = None"],  # no per-point labels
        ["sunrgbd/det/AP25", "sunrgbd/det/AP50"], ["@DetectionTask"])
    assert "dataset: sunrgbd" in table


def test_table4_smoke_on_real_scannet_posed_images(real_data, tmp_path, monkeypatch):
    """Wired as the paper leaves are: a frameless downstream reader and a pretraining reader with frames."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    scannet = real_data / "scannet"
    _, runs, table = _run_table4_smoke(
        tmp_path, ["Experiment.dataset = @ScanNetExport()",
                   f"ScanNetExport.root = '{scannet / 'mmdet3d_9e39d46' / 'scannet_train_instance_data'}'",
                   f"ScanNetExport.meta_dir = '{scannet / 'mmdet3d_9e39d46' / 'meta_data'}'",
                   "PretrainRow.dataset = @pretrain/ScanNetExport()", "pretrain/ScanNetExport.splits = ('train',)",
                   "pretrain/ScanNetExport.frames = @PosedImageFrames()",
                   f"PosedImageFrames.infos = '{scannet / 'mmdet3d_89defca' / 'scannet_infos.pkl'}'"],
        ["scannet/det/AP25", "scannet/det/AP50", "scannet/seg/mIoU", "scannet/seg/mAcc"],
        ["@SemanticSegmentationTask", "@DetectionTask"])
    assert "dataset: scannet" in table and "pretraining frames: scannet/train" in table
    # Pretraining read the three posed images of scene0000_00 (the train split).
    prepared = list((tmp_path / "results" / "cache" / "prepare").glob("scannet-train-*/scenes/scene0000_00.npz"))
    assert len(prepared) == 1 and read_cache_meta(prepared[0])["frames"] == [
        "scene0000_00-00000", "scene0000_00-00011", "scene0000_00-00102"]
    assert all(0 <= r["metrics"]["scannet/seg/mIoU"] <= 100 for r in runs)

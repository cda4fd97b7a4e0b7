"""The whole protocol at smoke size on real frames: SUN RGB-D excerpt, a real segmenter (Felzenszwalb),
a tiny randomly initialised DINOv2 saved like a real checkpoint, pretraining, fine-tuning, the table."""
from __future__ import annotations

import json

import gin
import transformers

from bench.config import parse_config
from bench.runner import Experiment


def test_table4_smoke_on_real_sunrgbd_frames(real_data, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    dino = tmp_path / "dinov2-tiny"
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, image_size=56, patch_size=14)
    transformers.Dinov2Model(config).save_pretrained(dino)
    root = real_data / "sunrgbd" / "mmdet3d_9e39d46" / "sunrgbd_trainval"
    gin.clear_config()
    parse_config(["tables/table4_smoke.gin"], [
        "Experiment.dataset = @SunRgbdVotenet()", f"SunRgbdVotenet.root = '{root}'",
        "FramePreparation.mask_source = @ClassicalMaskSource()", "FramePreparation.teacher = @Dinov2Teacher()",
        f"Dinov2Teacher.model_dir = '{dino}'", "Dinov2Teacher.image_size = 112",
        "Experiment.tasks = [@DetectionTask]", "FinetuneRow.segmentation = None",  # no per-point labels
        "TableSpec.columns = ['sunrgbd/det/AP25', 'sunrgbd/det/AP50']", "TableSpec.paper_columns = {}",
        "TableSpec.paper_table = ''"])
    folder = Experiment().run(tmp_path / "results")
    runs = json.loads((folder / "metrics.json").read_text())["runs"]
    assert [r["row"] for r in runs] == ["stage1", "stage1+MTP same stage", "stage1+stage2"]
    for run in runs:
        assert "sunrgbd/det/AP25" in run["metrics"]
        assert any(key.startswith("pretrain/") for key in run["metrics"])
    table = (folder / "table4.md").read_text()
    assert "Felzenszwalb" in table and "not SAM" in table and "DINOv2" in table
    assert "dataset: sunrgbd" in table

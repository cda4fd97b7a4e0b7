"""The whole protocol on complete scenes in a real layout: the simulated benchmark exported as a raw
ScanNet download (scans/ + .sens exports), read by ScanNetRaw with SensFrames, pretrained and fine-tuned
at smoke size."""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from datasets.geometry import backproject
from datasets.scannet import ScanNetRaw, SensFrames
from datasets.synthetic import SyntheticIndoor
from datasets.synthetic.export import export_scannet_raw
from infra.io import read_cache_meta
from tests.test_real_pipeline import _run_table4_smoke


def _export(tmp_path):
    dataset = SyntheticIndoor(seed=2, num_train=2, num_val=1, frames_per_scene=2, image_hw=(48, 64))
    return dataset, export_scannet_raw(dataset, tmp_path / "scannet")


def test_sens_frames_of_the_export_land_on_the_aligned_scene(tmp_path):
    dataset, root = _export(tmp_path)
    ds = ScanNetRaw(root / "scans", root / "scannetv2-labels.combined.tsv", root / "meta_data",
                    frames=SensFrames(root / "sens", every=1, alignment_root=root / "scans"))
    scene, source = ds.scene("train", 1), dataset.scene("train", 1)
    assert len(scene.frames) == len(source.frames) == 2
    for frame, original in zip(scene.frames, source.frames):
        np.testing.assert_allclose(frame.pose, original.pose, atol=1e-6)  # axisAlignment @ raw pose
        xyz, _ = backproject(frame.depth, frame.intrinsics, frame.pose)
        dist, _ = cKDTree(scene.points).query(xyz)
        assert np.median(dist) < 0.05


def test_table4_smoke_on_the_scannet_raw_export(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _, root = _export(tmp_path)
    _, runs, table = _run_table4_smoke(
        tmp_path, ["Experiment.dataset = @ScanNetRaw()", f"ScanNetRaw.scans_root = '{root / 'scans'}'",
                   f"ScanNetRaw.label_map_tsv = '{root / 'scannetv2-labels.combined.tsv'}'",
                   f"ScanNetRaw.meta_dir = '{root / 'meta_data'}'",
                   "PretrainRow.dataset = @pretrain/ScanNetRaw()", "pretrain/ScanNetRaw.frames = @SensFrames()",
                   f"SensFrames.root = '{root / 'sens'}'", f"SensFrames.alignment_root = '{root / 'scans'}'",
                   "SensFrames.every = 1"],
        ["scannet/det/AP25", "scannet/det/AP50", "scannet/seg/mIoU", "scannet/seg/mAcc"],
        ["@SemanticSegmentationTask", "@DetectionTask"])
    prepared = list((tmp_path / "results" / "cache" / "prepare").glob("scannet-train-*/scenes/*.npz"))
    assert len(prepared) == 2 and all(len(read_cache_meta(p)["frames"]) == 2 for p in prepared)  # 2 scenes x 2 frames
    assert all(np.isfinite(r["metrics"]["scannet/seg/mIoU"]) for r in runs)

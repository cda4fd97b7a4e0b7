"""ScanNet v2 datasets for the harness, one small class per on-disk layout (wired by gin reference).

Each follows the ``SyntheticIndoor`` protocol: ``info``, ``splits``, ``num_scenes(split)``,
``scene_id(split, i)``, ``scene(split, i) -> Scene`` and lazy ``scenes(split)``. Splits come from
ScanNet's ``scannetv2_<split>.txt`` lists in ``meta_dir``; scenes listed there but absent on disk
are an error unless ``skip_missing=True``, and are reported in one log line either way. Points with
NaN/inf coordinates are dropped or refused per ``non_finite`` (``datasets/scene_list.py``).
"""
from __future__ import annotations

import logging
import pathlib

import gin

from datasets.scannet.labels import SCANNET_INFO
from datasets.scannet.raw import raw_scene_present, read_label_map, read_raw_scene
from datasets.scannet.readers import (
    bin_scene_present,
    export_path,
    export_scene_present,
    read_bin_scene,
    read_export_scene,
)
from datasets.scene_list import SceneListDataset, non_finite_policy
from datasets.types import DatasetInfo, Scene

log = logging.getLogger(__name__)


def read_split_list(meta_dir: str | pathlib.Path, split: str) -> list[str]:
    """Scene ids listed in ``<meta_dir>/scannetv2_<split>.txt`` (one per line)."""
    path = pathlib.Path(meta_dir) / f"scannetv2_{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"missing split list {path} (ScanNet meta_data/scannetv2_<split>.txt)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def with_frames(scene: Scene, frames) -> Scene:
    """``scene`` with the frames the frame source ``frames`` gives it (None: left without frames)."""
    if frames is not None:
        scene.frames = frames(scene)
    return scene


class _ScanNetSplits(SceneListDataset):
    """Scenes from the split lists; subclasses say where a scene is and how to read it."""

    info: DatasetInfo = SCANNET_INFO

    def __init__(self, meta_dir: str, splits: tuple[str, ...], skip_missing: bool, frames, non_finite: str):
        self.frames = frames
        self.non_finite = non_finite_policy(non_finite)
        self.scene_ids: dict[str, list[str]] = {}
        for split in splits:
            listed = read_split_list(meta_dir, split)
            present = [s for s in listed if self._present(s)]
            missing = [s for s in listed if s not in set(present)]
            if missing:
                msg = (f"{type(self).__name__}: {len(missing)} of {len(listed)} scenes of split {split!r} are missing "
                       f"under {self._where()} (first: {missing[0]})")
                if not skip_missing:
                    raise FileNotFoundError(msg + "; pass skip_missing=True to use the others")
                log.warning("%s; skipped", msg)
            self.scene_ids[split] = present

    def read_scene(self, scene_id: str) -> Scene:
        return with_frames(self._read_points(scene_id), self.frames)

    def _read_points(self, scene_id: str) -> Scene:
        raise NotImplementedError

    def _present(self, scene_id: str) -> bool:
        raise NotImplementedError

    def _where(self) -> str:
        raise NotImplementedError


@gin.register
class ScanNetExport(_ScanNetSplits):
    """votenet / mmdet3d v0.x export (``scannet_train_instance_data/<scene>_vert[_all].npy`` ...).

    Args:
        root: the export folder holding the ``<scene>_*.npy`` files.
        meta_dir: folder with ``scannetv2_train.txt`` / ``scannetv2_val.txt``.
        splits: split names to load lists for.
        skip_missing: drop listed scenes absent from ``root`` (logged) instead of raising.
        use_bbox_file: take boxes from ``<scene>_bbox.npy`` when present (else from the instances).
        frames: a frame source (``@SensFrames()``, ``@PosedImageFrames()``) giving each scene its frames,
            which pretraining needs; None = scenes without frames.
        non_finite: points with a NaN/inf coordinate: "drop" them (default; one warning line per scene)
            or "error" (refuse the scene with a one-line DataError).
    """

    def __init__(self, root: str = gin.REQUIRED, meta_dir: str = gin.REQUIRED,
                 splits: tuple[str, ...] = ("train", "val"), skip_missing: bool = False, use_bbox_file: bool = True,
                 frames=None, non_finite: str = "drop"):
        self.root = pathlib.Path(root)
        self.use_bbox_file = bool(use_bbox_file)
        super().__init__(meta_dir, splits, skip_missing, frames, non_finite)

    def _present(self, scene_id: str) -> bool:
        return export_scene_present(self.root, scene_id)

    def _where(self) -> str:
        return str(self.root)

    def _read_points(self, scene_id: str) -> Scene:
        return read_export_scene(self.root, scene_id, self.use_bbox_file)

    def points_source(self, scene_id: str) -> str:
        return str(export_path(self.root, scene_id, "vert"))


@gin.register
class ScanNetBin(_ScanNetSplits):
    """mmdet3d v1.x layout: ``points/``, ``semantic_mask/``, ``instance_mask/`` ``<scene>.bin`` under ``root``.

    ``frames``: a frame source, as for ``ScanNetExport``.

    Args:
        non_finite: points with a NaN/inf coordinate: "drop" them (default; one warning line per scene)
            or "error" (refuse the scene with a one-line DataError).
    """

    def __init__(self, root: str = gin.REQUIRED, meta_dir: str = gin.REQUIRED,
                 splits: tuple[str, ...] = ("train", "val"), skip_missing: bool = False, frames=None,
                 non_finite: str = "drop"):
        self.root = pathlib.Path(root)
        super().__init__(meta_dir, splits, skip_missing, frames, non_finite)

    def _present(self, scene_id: str) -> bool:
        return bin_scene_present(self.root, scene_id)

    def _where(self) -> str:
        return str(self.root / "points")

    def _read_points(self, scene_id: str) -> Scene:
        return read_bin_scene(self.root, scene_id)

    def points_source(self, scene_id: str) -> str:
        return str(self.root / "points" / f"{scene_id}.bin")


@gin.register
class ScanNetRaw(_ScanNetSplits):
    """Raw ScanNet v2 ``scans/<scene>/`` folders plus ``scannetv2-labels.combined.tsv``; axis-aligned points.

    ``frames``: a frame source, as for ``ScanNetExport`` (``@SensFrames()`` with
    ``SensFrames.alignment_root`` = ``scans_root``).

    Args:
        non_finite: points with a NaN/inf coordinate: "drop" them (default; one warning line per scene)
            or "error" (refuse the scene with a one-line DataError).
    """

    def __init__(self, scans_root: str = gin.REQUIRED, label_map_tsv: str = gin.REQUIRED, meta_dir: str = gin.REQUIRED,
                 splits: tuple[str, ...] = ("train", "val"), skip_missing: bool = False, frames=None,
                 non_finite: str = "drop"):
        self.scans_root = pathlib.Path(scans_root)
        self.label_map_tsv = pathlib.Path(label_map_tsv)
        read_label_map(self.label_map_tsv)  # fail at construction, not at the first scene
        super().__init__(meta_dir, splits, skip_missing, frames, non_finite)

    def _present(self, scene_id: str) -> bool:
        return raw_scene_present(self.scans_root, scene_id)

    def _where(self) -> str:
        return str(self.scans_root)

    def _read_points(self, scene_id: str) -> Scene:
        return read_raw_scene(self.scans_root, scene_id, self.label_map_tsv)

    def points_source(self, scene_id: str) -> str:
        return str(self.scans_root / scene_id / f"{scene_id}_vh_clean_2.ply")

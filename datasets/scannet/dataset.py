"""ScanNet v2 datasets for the harness, one small class per on-disk layout (wired by gin reference).

Each follows the ``SyntheticIndoor`` protocol: ``info``, ``splits``, ``num_scenes(split)``,
``scene_id(split, i)``, ``scene(split, i) -> Scene`` and lazy ``scenes(split)``. A reader's root may be
its layout's folder or the dataset root that holds it (``datasets/scannet/roots.py``: a VoteNet
``scannet/`` or an mmdetection3d ``data/scannet/``). Splits come from ScanNet's
``scannetv2_<split>.txt`` lists in ``meta_dir`` (default: the ``meta_data/`` found with the root); scenes
listed there but absent on disk are an error unless ``skip_missing=True``, and are reported in one log
line either way. Points with NaN/inf coordinates are dropped or refused per ``non_finite``
(``datasets/scene_list.py``).
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
from datasets.scannet.roots import ScanNetRoot, resolve_scannet_root
from datasets.scene_list import SceneListDataset, non_finite_policy
from datasets.types import DatasetInfo, Scene
from infra.errors import DataError

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

    def __init__(self, found: ScanNetRoot, splits: tuple[str, ...], skip_missing: bool, frames, non_finite: str):
        if found.meta_dir is None:
            raise DataError(f"{type(self).__name__}: no split lists (meta_data/scannetv2_<split>.txt) found with "
                            f"{found.folder}; set meta_dir")
        self.frames = frames
        self.non_finite = non_finite_policy(non_finite)
        self.scene_ids: dict[str, list[str]] = {}
        for split in splits:
            listed = read_split_list(found.meta_dir, split)
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
    """votenet / mmdet3d export (``<scene>_vert[_all].npy``, ``_sem_label``, ``_ins_label``, ``_bbox`` ...).

    Args:
        root: the export folder holding the ``<scene>_*.npy`` files, or the dataset root holding it
            (``scannet_instance_data/``, ``scannet_train_instance_data/``, ``scannet_train_detection_data/``).
        meta_dir: folder with ``scannetv2_train.txt`` / ``scannetv2_val.txt``; None = the ``meta_data/``
            in ``root`` or beside the export folder.
        splits: split names to load lists for.
        skip_missing: drop listed scenes absent from ``root`` (logged) instead of raising.
        use_bbox_file: take boxes from ``<scene>_bbox.npy`` (``_aligned_bbox.npy``) when present, else
            from the instances.
        frames: a frame source (``@SensFrames()``, ``@PosedImageFrames()``) giving each scene its frames,
            which pretraining needs; None = scenes without frames.
        non_finite: points with a NaN/inf coordinate: "drop" them (default; one warning line per scene)
            or "error" (refuse the scene with a one-line DataError).
    """

    def __init__(self, root: str = gin.REQUIRED, meta_dir: str | None = None,
                 splits: tuple[str, ...] = ("train", "val"), skip_missing: bool = False, use_bbox_file: bool = True,
                 frames=None, non_finite: str = "drop"):
        found = resolve_scannet_root(root, "export", meta_dir)
        self.root, self.meta_dir = found.folder, found.meta_dir
        self.use_bbox_file = bool(use_bbox_file)
        super().__init__(found, splits, skip_missing, frames, non_finite)

    def _present(self, scene_id: str) -> bool:
        return export_scene_present(self.root, scene_id)

    def _where(self) -> str:
        return str(self.root)

    def _read_points(self, scene_id: str) -> Scene:
        return read_export_scene(self.root, scene_id, self.use_bbox_file)

    def points_source(self, scene_id: str) -> str:
        return str(export_path(self.root, scene_id, "vert"))

    def field_source(self, scene_id: str, field: str) -> str:
        labels = export_path(self.root, scene_id, "sem_label")
        instances = export_path(self.root, scene_id, "ins_label")
        if field.startswith("box"):
            files = [self.root / f"{scene_id}_bbox.npy", self.root / f"{scene_id}_aligned_bbox.npy"]
            found = next((p for p in files if p.is_file()), None) if self.use_bbox_file else None
            return str(found) if found else f"{instances} (boxes from the instances)"
        return str({"semantic": labels, "instance": instances}.get(field, self.points_source(scene_id)))


@gin.register
class ScanNetBin(_ScanNetSplits):
    """mmdet3d v1.x layout: ``points/``, ``semantic_mask/``, ``instance_mask/`` ``<scene>.bin`` under ``root``.

    Points are read as they are stored: mmdet3d's own test fixture is axis-aligned, while the files its
    current ``create_data`` writes are in the scan's own frame (the alignment is in its infos pkl, which
    this reader does not apply); ``ScanNetExport`` on ``scannet_instance_data/`` aligns them.

    Args:
        root: the folder holding ``points/`` (mmdet3d's ``data/scannet``).
        meta_dir, splits, skip_missing, frames: as for ``ScanNetExport``.
        non_finite: points with a NaN/inf coordinate: "drop" them (default; one warning line per scene)
            or "error" (refuse the scene with a one-line DataError).
    """

    def __init__(self, root: str = gin.REQUIRED, meta_dir: str | None = None,
                 splits: tuple[str, ...] = ("train", "val"), skip_missing: bool = False, frames=None,
                 non_finite: str = "drop"):
        found = resolve_scannet_root(root, "bin", meta_dir)
        self.root, self.meta_dir = found.folder, found.meta_dir
        super().__init__(found, splits, skip_missing, frames, non_finite)

    def _present(self, scene_id: str) -> bool:
        return bin_scene_present(self.root, scene_id)

    def _where(self) -> str:
        return str(self.root / "points")

    def _read_points(self, scene_id: str) -> Scene:
        return read_bin_scene(self.root, scene_id)

    def points_source(self, scene_id: str) -> str:
        return str(self.root / "points" / f"{scene_id}.bin")

    def field_source(self, scene_id: str, field: str) -> str:
        masks = {"semantic": "semantic_mask", "instance": "instance_mask", "boxes": "instance_mask",
                 "box_labels": "semantic_mask", "box_instance": "instance_mask"}
        return str(self.root / masks.get(field, "points") / f"{scene_id}.bin")


@gin.register
class ScanNetRaw(_ScanNetSplits):
    """Raw ScanNet v2 ``scans/<scene>/`` folders plus ``scannetv2-labels.combined.tsv``; axis-aligned points.

    Args:
        scans_root: the ``scans/`` folder, or the folder holding it.
        label_map_tsv: ``scannetv2-labels.combined.tsv``; None = the one beside ``scans/`` or in its
            ``meta_data/``.
        meta_dir, splits, skip_missing: as for ``ScanNetExport``.
        frames: a frame source, as for ``ScanNetExport`` (``@SensFrames()`` with
            ``SensFrames.alignment_root`` = the ``scans/`` folder).
        non_finite: points with a NaN/inf coordinate: "drop" them (default; one warning line per scene)
            or "error" (refuse the scene with a one-line DataError).
    """

    def __init__(self, scans_root: str = gin.REQUIRED, label_map_tsv: str | None = None, meta_dir: str | None = None,
                 splits: tuple[str, ...] = ("train", "val"), skip_missing: bool = False, frames=None,
                 non_finite: str = "drop"):
        found = resolve_scannet_root(scans_root, "raw", meta_dir)
        self.scans_root, self.meta_dir = found.folder, found.meta_dir
        label_map = label_map_tsv if label_map_tsv is not None else found.label_map
        if label_map is None:
            raise DataError(f"ScanNetRaw: no scannetv2-labels.combined.tsv found beside {found.folder}; "
                            "set label_map_tsv")
        self.label_map_tsv = pathlib.Path(label_map)
        read_label_map(self.label_map_tsv)  # fail at construction, not at the first scene
        super().__init__(found, splits, skip_missing, frames, non_finite)

    def _present(self, scene_id: str) -> bool:
        return raw_scene_present(self.scans_root, scene_id)

    def _where(self) -> str:
        return str(self.scans_root)

    def _read_points(self, scene_id: str) -> Scene:
        return read_raw_scene(self.scans_root, scene_id, self.label_map_tsv)

    def points_source(self, scene_id: str) -> str:
        return str(self.scans_root / scene_id / f"{scene_id}_vh_clean_2.ply")

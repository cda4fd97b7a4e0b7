"""Find the ScanNet files under the folder a user points at; ``verify`` and the readers both use this.

A user's root is a layout's own folder or the dataset root that holds it:

- VoteNet ``scannet/``: ``scannet_train_detection_data/<scene>_vert.npy, _sem_label.npy, _ins_label.npy,
  _bbox.npy`` and ``meta_data/scannetv2_<split>.txt``;
- mmdetection3d ``data/scannet/``: ``scannet_instance_data/`` (points in the scan's own frame, with
  ``<scene>_axis_align_matrix.npy`` and ``_aligned_bbox.npy``) or, in its 2020 releases,
  ``scannet_train_instance_data/`` (aligned, as VoteNet's); ``meta_data/``; ``points/``, ``semantic_mask/``,
  ``instance_mask/`` ``<scene>.bin``; often ``scans/`` too;
- the raw download: ``scans/<scene>/`` and ``scannetv2-labels.combined.tsv``.

``auto`` takes the first layout found in the order export, raw, bin: the export is what the ScanNet gin
config reads, and the raw scans come before ``points/`` because mmdetection3d's current ``points/*.bin``
are in the scan's own frame with the alignment only in its infos pkl, which ``ScanNetBin`` does not read.
"""
from __future__ import annotations

import dataclasses
import pathlib

from infra.errors import DataError

# Export folder names -> who writes them.
EXPORT_FOLDERS = {"scannet_instance_data": "mmdetection3d export",
                  "scannet_train_instance_data": "mmdetection3d 2020 export",
                  "scannet_train_detection_data": "VoteNet export"}
LABEL_MAP_NAME = "scannetv2-labels.combined.tsv"
LAYOUTS = ("export", "raw", "bin")
_EXPECTED = {
    "export": f"<scene>_vert[_all].npy files, here or in {', '.join(f'{n}/' for n in EXPORT_FOLDERS)}",
    "raw": "scans/<scene>/<scene>_vh_clean_2.ply",
    "bin": "points/<scene>.bin",
}


@dataclasses.dataclass(frozen=True)
class ScanNetRoot:
    """Where one layout's files are under a user's root."""

    layout: str  # "export", "raw" or "bin"
    folder: pathlib.Path  # export: the <scene>_*.npy folder; raw: scans/; bin: the folder holding points/
    meta_dir: pathlib.Path | None  # the folder with scannetv2_<split>.txt; None where none was found
    label_map: pathlib.Path | None  # scannetv2-labels.combined.tsv (the raw layout needs it); None if not found
    description: str  # who wrote this layout, e.g. "VoteNet export"

    def summary(self) -> str:
        """One line: the layout, its folder and the split lists found."""
        text = (f"{self.description} ({self.layout} layout) in {self.folder}; "
                f"split lists: {self.meta_dir or 'none found'}")
        return text + (f"; label map: {self.label_map or 'none found'}" if self.layout == "raw" else "")

    def scene_ids_on_disk(self) -> list[str]:
        """Every scene with a points file, sorted (what ``verify`` checks when there are no split lists)."""
        if self.layout == "export":
            return sorted({p.name.split("_vert")[0] for p in self.folder.glob("*_vert*.npy")})
        if self.layout == "raw":
            return sorted(p.name for p in self.folder.iterdir() if p.is_dir())
        return sorted(p.stem for p in (self.folder / "points").glob("*.bin"))


def _has(folder: pathlib.Path, pattern: str) -> bool:
    return folder.is_dir() and next(folder.glob(pattern), None) is not None


def _find(root: pathlib.Path, layout: str) -> tuple[pathlib.Path, str] | None:
    """(folder, description) of ``layout`` under ``root``, or None."""
    if layout == "export":
        for folder in (root, *(root / name for name in EXPORT_FOLDERS)):
            if _has(folder, "*_vert*.npy"):
                return folder, EXPORT_FOLDERS.get(folder.name, "VoteNet/mmdetection3d export")
    elif layout == "raw":
        if _has(root / "scans", "*/*_vh_clean_2.ply"):
            return root / "scans", "raw ScanNet scans/"
        if _has(root, "*/*_vh_clean_2.ply"):
            return root, "raw ScanNet scans/"
    elif _has(root / "points", "*.bin"):
        return root, "mmdetection3d points/ .bin files"
    return None


def _first(paths) -> pathlib.Path | None:
    return next((p for p in paths if p.is_file()), None)


def resolve_scannet_root(root: str | pathlib.Path, layout: str = "auto",
                         meta_dir: str | pathlib.Path | None = None) -> ScanNetRoot:
    """Where the ScanNet files of ``layout`` ("auto" or one of ``LAYOUTS``) are under ``root``.

    Split lists come from ``meta_dir`` when given, else from ``meta_data/`` in ``root`` or beside the
    layout's folder; the label map from ``root`` or beside the folder, or their ``meta_data/``. Raises
    a one-line ``DataError`` naming ``root`` and what was looked for when nothing is found.
    """
    root = pathlib.Path(root)
    if layout != "auto" and layout not in LAYOUTS:
        raise DataError(f"unknown ScanNet layout {layout!r}; use auto, {', '.join(LAYOUTS)}")
    if not root.is_dir():
        raise DataError(f"{root}: ScanNet root folder not found")
    wanted = LAYOUTS if layout == "auto" else (layout,)
    for name in wanted:
        found = _find(root, name)
        if found is None:
            continue
        folder, description = found
        bases = (root, folder.parent)
        meta = pathlib.Path(meta_dir) if meta_dir is not None else next(
            (b / "meta_data" for b in bases if (b / "meta_data" / "scannetv2_train.txt").is_file()), None)
        label_map = _first([b / LABEL_MAP_NAME for b in bases] + [b / "meta_data" / LABEL_MAP_NAME for b in bases])
        return ScanNetRoot(name, folder, meta, label_map, description)
    expected = "; or ".join(_EXPECTED[name] for name in wanted)
    what = "data" if layout == "auto" else f"{layout} layout"
    raise DataError(f"{root}: no ScanNet {what} found; expected {expected}")

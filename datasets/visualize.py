"""Pictures of frames and fused scenes, for looking at a dataset (PNG files via matplotlib's Agg).

Figures are built with ``matplotlib.figure.Figure`` directly, never through pyplot, so nothing here
touches global plotting state or needs a display.
"""
from __future__ import annotations

import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from datasets.geometry import box_corners
from datasets.types import DatasetInfo, Frame, Scene


def _label_colors(n: int) -> np.ndarray:
    """n distinct-ish RGB colours in [0, 1]: tab20 first, then a golden-ratio hue walk."""
    from matplotlib import colormaps
    from matplotlib.colors import hsv_to_rgb

    base = colormaps["tab20"](np.arange(20))[:, :3]
    if n <= 20:
        return base[:n]
    hues = (np.arange(n - 20) * 0.618034) % 1.0
    extra = hsv_to_rgb(np.stack([hues, np.full_like(hues, 0.65), np.full_like(hues, 0.9)], axis=1))
    return np.concatenate([base, extra])


def _id_image(ids: np.ndarray, background: int) -> np.ndarray:
    """RGB (H, W, 3) image of an id map: a fixed pseudo-random colour per id, black for ``background``."""
    ids = ids.astype(np.int64)
    rng = np.random.default_rng(12345)
    palette = rng.uniform(0.15, 1.0, size=(int(max(ids.max(), 0)) + 1, 3))
    out = palette[np.clip(ids, 0, None)]
    out[ids == background] = 0.0
    return out


def _save(fig: Figure, path: str | os.PathLike) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(os.fspath(path), dpi=110)


def save_frame_figure(frame: Frame, path: str | os.PathLike) -> None:
    """Write RGB, depth, instance map (and semantic map when present) of a frame side by side, PNG.

    Depth 0 (no measurement) is drawn white; instance 0 and unlabelled semantic pixels black.
    """
    panels = [("RGB", frame.rgb, {})]
    depth = np.ma.masked_equal(frame.depth, 0)
    panels.append(("depth (m)", depth, {"cmap": "viridis"}))
    if frame.instance is not None:
        panels.append((f"instance ({len(np.unique(frame.instance[frame.instance > 0]))} ids)",
                       _id_image(frame.instance, 0), {}))
    if frame.semantic is not None:
        panels.append(("semantic", _id_image(frame.semantic + 1, 0), {}))
    h, w = frame.hw
    fig = Figure(figsize=(3.2 * len(panels), 3.2 * h / w + 0.6))
    for i, (title, image, kwargs) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        im = ax.imshow(image, interpolation="nearest", **kwargs)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if title.startswith("depth"):
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle(frame.frame_id, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def save_scene_topview(scene: Scene, info: DatasetInfo, path: str | os.PathLike) -> None:
    """Write a top view (x right, y up) of a fused scene as PNG.

    Points are coloured by segmentation class (grey where unlabelled), boxes drawn as rotated
    rectangles in their class colour with the class name, camera positions (when the scene carries
    frames) as black arrows along their viewing direction; the legend names the classes present.
    """
    colors = _label_colors(len(info.seg_classes))
    span = np.ptp(scene.points[:, :2], axis=0) if scene.num_points else np.ones(2)
    fig = Figure(figsize=(8.0, float(np.clip(6.0 * span[1] / max(span[0], 1e-6), 3.0, 9.0)) + 0.8))
    ax = fig.add_subplot(1, 1, 1)
    sem = scene.semantic
    # Draw low points first so furniture tops stay visible over the floor.
    order = np.argsort(scene.points[:, 2], kind="stable")
    point_rgb = np.where((sem >= 0)[:, None], colors[np.clip(sem, 0, None)], 0.6)
    ax.scatter(scene.points[order, 0], scene.points[order, 1], c=point_rgb[order], s=1.0, linewidths=0)
    det_seg = {d: s for s, d in enumerate(info.seg_to_det) if d >= 0}
    for box, label in zip(box_corners(scene.boxes), scene.box_labels):
        col = colors[det_seg.get(int(label), 0)] * 0.6
        foot = np.concatenate([box[:4, :2], box[:1, :2]])
        ax.plot(foot[:, 0], foot[:, 1], color=col, linewidth=1.5)
        ax.plot(foot[:2, 0], foot[:2, 1], color=col, linewidth=3.0)  # the box's front edge (local -y)
        ax.text(*box[:4, :2].mean(axis=0), info.det_classes[int(label)], fontsize=7, ha="center", va="center")
    for f in scene.frames:
        eye, forward = f.pose[:3, 3], f.pose[:3, 2]
        ax.annotate("", xy=eye[:2] + 0.5 * forward[:2], xytext=eye[:2],
                    arrowprops={"arrowstyle": "->", "color": "black", "linewidth": 1.2})
    present = sorted(set(np.unique(sem[sem >= 0]).tolist()) | {det_seg[int(b)] for b in scene.box_labels})
    handles = [Line2D([], [], marker="s", linestyle="", color=colors[c], label=info.seg_classes[c]) for c in present]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_title(f"{scene.scene_id}: {scene.num_points} points, {len(scene.boxes)} boxes ({info.name})", fontsize=9)
    fig.tight_layout()
    _save(fig, path)

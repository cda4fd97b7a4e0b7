"""Procedural room layouts for the simulated indoor benchmark: a room, furniture, camera poses.

A room spans ``[0, W] x [0, L]`` with its floor at z = 0 and four walls (no ceiling). Furniture is
drawn from the long-tailed catalogue in ``furniture.py``, sized with per-object jitter, and placed by
rejection sampling so that footprints stay inside the room and never overlap. Furniture colours come from
the palette in ``materials.py``, shared by all classes; the floor and walls keep their own looks.
Everything here is cheap (no rendering), so layouts can be sampled by the hundred for statistics.

Instance ids: 1 is the floor, 2-5 the four walls, furniture takes 6, 7, ... in placement order.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from datasets.geometry import look_at_pose
from datasets.synthetic.furniture import FURNITURE, Part, box, sampling_probabilities
from datasets.synthetic.materials import JITTER, draw_materials

WALL, FLOOR = 0, 1  # segmentation ids of the two structural classes
NUM_STRUCTURAL = 2  # furniture detection class k has segmentation id k + NUM_STRUCTURAL
SEG_CLASSES: tuple[str, ...] = ("wall", "floor") + tuple(c.name for c in FURNITURE)
DET_CLASSES: tuple[str, ...] = tuple(c.name for c in FURNITURE)
FLOOR_INSTANCE, FIRST_WALL_INSTANCE, FIRST_OBJECT_INSTANCE = 1, 2, 6

_WALL_COLOR, _FLOOR_COLOR = (205, 200, 188), (150, 118, 86)
_WALL_T = 0.1  # wall and floor slab thickness, outside the room so the interior stays [0, W] x [0, L]
_GAP = 0.1  # minimum free space between two footprints (m)


@dataclasses.dataclass
class Primitives:
    """All primitives of a room as parallel arrays (M = number of primitives).

    ``kind`` is BOX or CYLINDER; ``half`` is a box's half extents along its own axes, or
    (radius, radius, half height) for a vertical cylinder; ``yaw`` rotates a box about +z.
    """

    kind: np.ndarray  # (M,) int8
    center: np.ndarray  # (M, 3) float64
    half: np.ndarray  # (M, 3) float64
    yaw: np.ndarray  # (M,) float64
    instance: np.ndarray  # (M,) int32
    semantic: np.ndarray  # (M,) int32
    color: np.ndarray  # (M, 3) float64 RGB before shading


@dataclasses.dataclass
class SceneObject:
    """One piece of furniture: its detection class, instance id and amodal box (7,)."""

    det_class: int
    instance: int
    box: np.ndarray


@dataclasses.dataclass
class Layout:
    """A sampled room: size (W, L, H), furniture, all primitives and the camera poses to render."""

    room: np.ndarray  # (3,) W, L, H in metres
    objects: list[SceneObject]
    primitives: Primitives
    poses: np.ndarray  # (F, 4, 4) camera-to-world


def _rot(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s], [s, c]])


def _footprint_corners(fp: np.ndarray) -> np.ndarray:
    """Corners (4, 2) of a footprint ``[cx, cy, hx, hy, yaw]``."""
    local = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * fp[2:4]
    return local @ _rot(fp[4]).T + fp[:2]


def _overlap(a: np.ndarray, b: np.ndarray, gap: float) -> bool:
    """Separating-axis test: whether two footprints come closer than ``gap`` (a touch counts)."""
    rot_a, rot_b = _rot(a[4]), _rot(b[4])
    d = b[:2] - a[:2]
    for axis in (*rot_a.T, *rot_b.T):
        ra = a[2] * abs(rot_a[:, 0] @ axis) + a[3] * abs(rot_a[:, 1] @ axis)
        rb = b[2] * abs(rot_b[:, 0] @ axis) + b[3] * abs(rot_b[:, 1] @ axis)
        if abs(d @ axis) > ra + rb + gap:
            return False
    return True


def _build_parts(cls_index: int, rng: np.random.Generator) -> tuple[list[Part], np.ndarray]:
    """Build one object's parts, recentred so their bounding box is centred on x = y = 0, z from 0.

    Returns the parts and the object's extents (3,).
    """
    spec = FURNITURE[cls_index]
    size = np.array(spec.size) * rng.uniform(0.85, 1.15, size=3)
    parts = spec.build(*size)
    c = np.array([p.center for p in parts])
    h = np.array([p.half for p in parts])
    lo, hi = (c - h).min(axis=0), (c + h).max(axis=0)
    shift = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]])
    parts = [dataclasses.replace(p, center=tuple(np.array(p.center) - shift)) for p in parts]
    return parts, hi - lo


def _propose(rng: np.random.Generator, ext: np.ndarray, room: np.ndarray, wall_prob: float) -> np.ndarray:
    """A candidate footprint ``[cx, cy, hx, hy, yaw]``: back against a random wall, or free."""
    hx, hy = ext[0] / 2, ext[1] / 2
    w, l = room[0], room[1]
    if rng.random() < wall_prob:
        # The back (+y) faces the wall: yaw 0 -> north (y = L), pi -> south, -pi/2 -> east, pi/2 -> west.
        wall = int(rng.integers(4))
        along = (w, w, l, l)[wall]
        u = rng.uniform(hx, max(hx, along - hx))
        gap = 0.02
        cx, cy, yaw = ((u, l - gap - hy, 0.0), (u, gap + hy, np.pi),
                       (w - gap - hy, u, -np.pi / 2), (gap + hy, u, np.pi / 2))[wall]
        return np.array([cx, cy, hx, hy, yaw])
    return np.array([rng.uniform(0, w), rng.uniform(0, l), hx, hy, rng.uniform(-np.pi, np.pi)])


def _fits(fp: np.ndarray, room: np.ndarray, placed: list[np.ndarray]) -> bool:
    corners = _footprint_corners(fp)
    if corners.min() < 0.005 or (corners[:, 0] > room[0] - 0.005).any() or (corners[:, 1] > room[1] - 0.005).any():
        return False
    return not any(_overlap(fp, other, _GAP) for other in placed)


def _structural(room: np.ndarray, rng: np.random.Generator) -> list[tuple[Part, int, int, np.ndarray]]:
    """Floor and walls as (part in world frame, instance, semantic, colour)."""
    w, l, h = room
    t = _WALL_T
    wall_color = np.array(_WALL_COLOR) + rng.normal(0, 6, 3)
    walls = [box(-t, w + t, l, l + t, 0, h), box(-t, w + t, -t, 0, 0, h),
             box(w, w + t, 0, l, 0, h), box(-t, 0, 0, l, 0, h)]
    out = [(box(-t, w + t, -t, l + t, -t, 0), FLOOR_INSTANCE, FLOOR, np.array(_FLOOR_COLOR) + rng.normal(0, 8, 3))]
    for i, part in enumerate(walls):
        # Neighbouring walls differ a little in tone so their boundary is visible in the image.
        out.append((part, FIRST_WALL_INSTANCE + i, WALL, wall_color * (0.94 + 0.04 * i)))
    return out


def _place_furniture(room: np.ndarray, rng: np.random.Generator, max_tries: int = 30):
    """Draw and place furniture; yields (class index, parts, extents, footprint) per placed object."""
    probs = sampling_probabilities()
    area = room[0] * room[1]
    target = int(rng.integers(4, 8)) + int(area / 10)
    placed: list[np.ndarray] = []
    for _ in range(target):
        cls = int(rng.choice(len(FURNITURE), p=probs))
        parts, ext = _build_parts(cls, rng)
        for _ in range(max_tries):
            fp = _propose(rng, ext, room, FURNITURE[cls].wall_prob)
            if _fits(fp, room, placed):
                placed.append(fp)
                yield cls, parts, ext, fp
                break


def _camera_poses(room: np.ndarray, objects: list[tuple[np.ndarray, float]], num: int,
                  rng: np.random.Generator) -> np.ndarray:
    """Poses of ``num`` cameras spread around the room, each looking across it, pitched down.

    ``objects`` holds (footprint, height) pairs. A camera keeps 0.3 m from every footprint when it
    can, and otherwise at least from objects taller than itself (lower ones are below the lens).
    """
    w, l = room[0], room[1]
    centre = np.array([w / 2, l / 2])
    phase = rng.uniform(-np.pi, np.pi)
    poses = []
    for i in range(num):
        eye_z = rng.uniform(1.2, 1.8)
        tall = [fp for fp, height in objects if height > eye_z - 0.15]
        # Stand clear of all furniture if possible (like a person), else at least of taller pieces.
        for attempt in range(120):
            blockers = [fp for fp, _ in objects] if attempt < 60 else tall
            phi = phase + 2 * np.pi * i / num + rng.normal(0, 0.25 + 0.02 * (attempt % 60))
            radius = rng.uniform(0.35, 0.75)
            eye_xy = centre + radius * np.array([w / 2 * np.cos(phi), l / 2 * np.sin(phi)])
            if not any(_overlap(np.array([*eye_xy, 0.0, 0.0, 0.0]), fp, 0.3) for fp in blockers):
                break
        target_xy = centre + rng.uniform(-0.25, 0.25, 2) * np.array([w, l])
        heading = target_xy - eye_xy
        if np.linalg.norm(heading) < 0.3:  # the eye sits near the room centre: look outwards
            heading = eye_xy - centre + 1e-3
        heading = heading / np.linalg.norm(heading)
        pitch = np.deg2rad(rng.uniform(12.0, 30.0))
        eye = np.array([*eye_xy, eye_z])
        look = np.array([*(heading * np.cos(pitch)), -np.sin(pitch)])
        poses.append(look_at_pose(eye, eye + look))
    return np.stack(poses)


def sample_layout(rng: np.random.Generator, num_cameras: int, material_rng: np.random.Generator) -> Layout:
    """Sample one room with furniture and ``num_cameras`` camera poses from ``rng``, and the furniture's
    materials from ``material_rng``."""
    room = np.array([rng.uniform(3.5, 7.0), rng.uniform(3.0, 6.0), rng.uniform(2.6, 3.0)])
    rows: list[tuple[Part, float, int, int, np.ndarray]] = []  # part, yaw, instance, semantic, colour
    offsets: list[np.ndarray] = []
    for part, inst, sem, color in _structural(room, rng):
        rows.append((part, 0.0, inst, sem, color))
        offsets.append(np.zeros(3))
    objects: list[SceneObject] = []
    footprints: list[tuple[np.ndarray, float]] = []
    for cls, parts, ext, fp in _place_furniture(room, rng):
        inst = FIRST_OBJECT_INSTANCE + len(objects)
        yaw = float(np.arctan2(np.sin(fp[4]), np.cos(fp[4])))
        # The main material's jitter is drawn from the layout stream, where the colour jitter of the
        # earlier class-coloured furniture was drawn, so rooms and cameras keep their former draws.
        slots = draw_materials(material_rng, rng.normal(0, JITTER, 3))
        for part in parts:
            rows.append((part, yaw, inst, cls + NUM_STRUCTURAL, slots[part.slot] * part.tone))
            offsets.append(np.array([fp[0], fp[1], 0.0]))
        objects.append(SceneObject(cls, inst, np.array([fp[0], fp[1], ext[2] / 2, *ext, yaw])))
        footprints.append((fp, float(ext[2])))
    local = np.array([r[0].center for r in rows])
    yaws = np.array([r[1] for r in rows])
    c, s = np.cos(yaws), np.sin(yaws)
    world = np.stack([c * local[:, 0] - s * local[:, 1], s * local[:, 0] + c * local[:, 1], local[:, 2]], axis=1)
    prims = Primitives(
        kind=np.array([r[0].kind for r in rows], dtype=np.int8),
        center=world + np.array(offsets),
        half=np.array([r[0].half for r in rows], dtype=np.float64),
        yaw=yaws,
        instance=np.array([r[2] for r in rows], dtype=np.int32),
        semantic=np.array([r[3] for r in rows], dtype=np.int32),
        color=np.clip(np.array([r[4] for r in rows]), 0, 255),
    )
    return Layout(room, objects, prims, _camera_poses(room, footprints, num_cameras, rng))


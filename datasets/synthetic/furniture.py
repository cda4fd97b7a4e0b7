"""The simulated furniture catalogue: one entry per detection class, each built from primitives.

Every builder takes the object's jittered nominal size ``(dx, dy, dz)`` and returns parts in the
object's own frame: x across the object, y front (-y) to back (+y), z up from the floor. Objects
placed against a wall turn their back (+y) to it. A part names its material slot (``materials.py``:
main, trim or accent); the colours come from a palette shared by all classes, so a class is told
apart by its shape and size only.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from datasets.synthetic.materials import ACCENT, MAIN, TRIM

BOX, CYLINDER = 0, 1


@dataclasses.dataclass(frozen=True)
class Part:
    """One primitive in an object's frame; for a cylinder ``half`` is (radius, radius, half height)."""

    kind: int
    center: tuple[float, float, float]
    half: tuple[float, float, float]
    tone: float = 1.0  # multiplies the slot's colour, so parts of one material still read apart
    slot: int = MAIN  # material slot of the object (materials.py)


def box(x0: float, x1: float, y0: float, y1: float, z0: float, z1: float, tone: float = 1.0,
        slot: int = MAIN) -> Part:
    """A box part from its bounds in the object frame."""
    return Part(BOX, ((x0 + x1) / 2, (y0 + y1) / 2, (z0 + z1) / 2), ((x1 - x0) / 2, (y1 - y0) / 2, (z1 - z0) / 2),
                tone, slot)


def cylinder(x: float, y: float, r: float, z0: float, z1: float, tone: float = 1.0, slot: int = MAIN) -> Part:
    """A vertical cylinder part (axis along z) with caps at z0 and z1."""
    return Part(CYLINDER, (x, y, (z0 + z1) / 2), (r, r, (z1 - z0) / 2), tone, slot)


def _legs(dx: float, dy: float, z1: float, t: float, inset: float, tone: float = 0.8) -> list[Part]:
    xs, ys = dx / 2 - inset, dy / 2 - inset
    return [box(sx * xs - t / 2, sx * xs + t / 2, sy * ys - t / 2, sy * ys + t / 2, 0.0, z1, tone, TRIM)
            for sx in (-1, 1) for sy in (-1, 1)]


def build_chair(dx: float, dy: float, dz: float) -> list[Part]:
    seat = 0.5 * dz
    return _legs(dx, dy, seat - 0.05, 0.04, 0.03) + [
        box(-dx / 2, dx / 2, -dy / 2, dy / 2, seat - 0.05, seat),
        box(-dx / 2, dx / 2, dy / 2 - 0.05, dy / 2, seat, dz, 0.9),
    ]


def build_table(dx: float, dy: float, dz: float) -> list[Part]:
    return _legs(dx, dy, dz - 0.04, 0.06, 0.06) + [box(-dx / 2, dx / 2, -dy / 2, dy / 2, dz - 0.04, dz)]


def build_cabinet(dx: float, dy: float, dz: float) -> list[Part]:
    return [
        box(-dx / 2 + 0.03, dx / 2 - 0.03, -dy / 2 + 0.05, dy / 2, 0.0, 0.08, 0.6, TRIM),
        box(-dx / 2, dx / 2, -dy / 2 + 0.02, dy / 2, 0.08, dz - 0.03),
        box(-dx / 2, dx / 2, -dy / 2, dy / 2, dz - 0.03, dz, 0.8, TRIM),
        box(-0.08, -0.03, -dy / 2, -dy / 2 + 0.02, 0.6 * dz, 0.6 * dz + 0.12, 0.4, ACCENT),
        box(0.03, 0.08, -dy / 2, -dy / 2 + 0.02, 0.6 * dz, 0.6 * dz + 0.12, 0.4, ACCENT),
    ]


def build_sofa(dx: float, dy: float, dz: float) -> list[Part]:
    arm = 0.18
    feet = [cylinder(sx * (dx / 2 - 0.06), sy * (dy / 2 - 0.06), 0.03, 0.0, 0.06, 0.4, ACCENT)
            for sx in (-1, 1) for sy in (-1, 1)]
    return feet + [
        box(-dx / 2 + arm, dx / 2 - arm, -dy / 2, dy / 2 - 0.2, 0.06, 0.44),
        box(-dx / 2, dx / 2, dy / 2 - 0.2, dy / 2, 0.06, dz, 0.85),
        box(-dx / 2, -dx / 2 + arm, -dy / 2, dy / 2 - 0.2, 0.06, 0.62, 0.9, TRIM),
        box(dx / 2 - arm, dx / 2, -dy / 2, dy / 2 - 0.2, 0.06, 0.62, 0.9, TRIM),
    ]


def build_desk(dx: float, dy: float, dz: float) -> list[Part]:
    top = dz - 0.04
    return [
        box(-dx / 2, dx / 2, -dy / 2, dy / 2, top, dz),
        box(-dx / 2 + 0.02, -dx / 2 + 0.42, -dy / 2 + 0.03, dy / 2 - 0.03, 0.0, top, 0.8, TRIM),
        box(dx / 2 - 0.05, dx / 2 - 0.02, -dy / 2 + 0.03, dy / 2 - 0.03, 0.0, top, 0.8, TRIM),
        box(-dx / 2 + 0.42, dx / 2 - 0.05, dy / 2 - 0.06, dy / 2 - 0.03, 0.3, top, 0.7, TRIM),
        box(-dx / 2 + 0.17, -dx / 2 + 0.27, -dy / 2 + 0.01, -dy / 2 + 0.03, top - 0.12, top - 0.09, 0.4, ACCENT),
    ]


def build_bookshelf(dx: float, dy: float, dz: float) -> list[Part]:
    t = 0.03
    parts = [
        box(-dx / 2, -dx / 2 + t, -dy / 2, dy / 2, 0.0, dz, 0.9),
        box(dx / 2 - t, dx / 2, -dy / 2, dy / 2, 0.0, dz, 0.9),
        box(-dx / 2 + t, dx / 2 - t, dy / 2 - 0.02, dy / 2, 0.0, dz, 0.7, TRIM),
        box(-dx / 2 + t, dx / 2 - t, -dy / 2, dy / 2 - 0.02, dz - t, dz),
    ]
    shelves = max(2, int(dz / 0.38))
    for i in range(shelves):
        z = i * (dz - t) / shelves
        parts.append(box(-dx / 2 + t, dx / 2 - t, -dy / 2, dy / 2 - 0.02, z, z + t))
        # A block of books on each shelf; its width and tone vary by shelf so the front is not flat.
        width = (0.45 + 0.4 * ((i * 0.37) % 1.0)) * (dx - 2 * t)
        x0 = -dx / 2 + t + 0.5 * (i % 2) * (dx - 2 * t - width)
        parts.append(box(x0, x0 + width, -dy / 2 + 0.05, dy / 2 - 0.02, z + t, z + t + 0.22, 0.55 + 0.25 * (i % 3),
                         ACCENT))
    return parts


def build_bed(dx: float, dy: float, dz: float) -> list[Part]:
    return [
        box(-dx / 2, dx / 2, -dy / 2, dy / 2 - 0.06, 0.0, 0.3, 0.7, TRIM),
        box(-dx / 2 + 0.03, dx / 2 - 0.03, -dy / 2 + 0.03, dy / 2 - 0.08, 0.3, 0.5, 1.15),
        box(-dx / 2 + 0.12, dx / 2 - 0.12, dy / 2 - 0.5, dy / 2 - 0.12, 0.5, 0.6, 1.3),
        box(-dx / 2, dx / 2, dy / 2 - 0.06, dy / 2, 0.0, dz, 0.65, TRIM),
    ]


def build_lamp(dx: float, dy: float, dz: float) -> list[Part]:
    r = min(dx, dy) / 2
    return [
        cylinder(0.0, 0.0, 0.6 * r, 0.0, 0.03, 0.5, TRIM),
        cylinder(0.0, 0.0, 0.02, 0.03, dz - 0.3, 0.5, TRIM),
        cylinder(0.0, 0.0, r, dz - 0.32, dz, 1.0),
    ]


def build_sink(dx: float, dy: float, dz: float) -> list[Part]:
    return [
        cylinder(0.0, 0.05, 0.09, 0.0, dz - 0.2, 0.9),
        box(-dx / 2, dx / 2, -dy / 2, dy / 2, dz - 0.2, dz - 0.07),
        cylinder(0.0, dy / 2 - 0.06, 0.025, dz - 0.07, dz, 0.5, ACCENT),
    ]


def build_toilet(dx: float, dy: float, dz: float) -> list[Part]:
    r = dx / 2
    return [
        cylinder(0.0, -dy / 2 + r, r, 0.2, 0.42),
        box(-0.13, 0.13, -dy / 2 + r, dy / 2 - 0.1, 0.0, 0.38, 0.9),
        box(-dx / 2, dx / 2, dy / 2 - 0.2, dy / 2, 0.38, dz, 0.95),
    ]


def build_refrigerator(dx: float, dy: float, dz: float) -> list[Part]:
    split = 0.65 * dz
    return [
        box(-dx / 2, dx / 2, -dy / 2 + 0.04, dy / 2, 0.0, dz),
        box(-dx / 2, dx / 2, -dy / 2 + 0.03, -dy / 2 + 0.04, split - 0.01, split + 0.01, 0.5, TRIM),
        box(dx / 2 - 0.1, dx / 2 - 0.07, -dy / 2, -dy / 2 + 0.03, split - 0.45, split - 0.1, 0.4, ACCENT),
        box(dx / 2 - 0.1, dx / 2 - 0.07, -dy / 2, -dy / 2 + 0.03, split + 0.1, split + 0.35, 0.4, ACCENT),
    ]


def build_bathtub(dx: float, dy: float, dz: float) -> list[Part]:
    t = 0.08
    return [
        box(-dx / 2 + t, dx / 2 - t, -dy / 2 + t, dy / 2 - t, 0.0, 0.12, 1.1),
        box(-dx / 2, dx / 2, -dy / 2, -dy / 2 + t, 0.0, dz),
        box(-dx / 2, dx / 2, dy / 2 - t, dy / 2, 0.0, dz),
        box(-dx / 2, -dx / 2 + t, -dy / 2 + t, dy / 2 - t, 0.0, dz),
        box(dx / 2 - t, dx / 2, -dy / 2 + t, dy / 2 - t, 0.0, dz),
    ]


@dataclasses.dataclass(frozen=True)
class FurnitureClass:
    """A detection class of the simulation: how often it is drawn, its size, shape and placement."""

    name: str
    weight: float  # relative sampling frequency (long-tailed across the table)
    size: tuple[float, float, float]  # nominal (dx, dy, dz) in metres, jittered per object
    wall_prob: float  # probability of standing with its back against a wall
    build: Callable[[float, float, float], list[Part]]


# Weights fall roughly as a Zipf law from chair (40) to bathtub (1), a 1:40 ratio: twice the 1:20
# the benchmark promises, so realised counts over a few hundred rooms stay inside it.
FURNITURE: tuple[FurnitureClass, ...] = (
    FurnitureClass("chair", 40.0, (0.48, 0.50, 0.90), 0.2, build_chair),
    FurnitureClass("table", 18.0, (1.20, 0.80, 0.75), 0.1, build_table),
    FurnitureClass("cabinet", 12.0, (0.90, 0.50, 0.90), 0.9, build_cabinet),
    FurnitureClass("sofa", 8.0, (1.90, 0.90, 0.85), 0.7, build_sofa),
    FurnitureClass("desk", 6.0, (1.30, 0.65, 0.75), 0.8, build_desk),
    FurnitureClass("bookshelf", 5.0, (0.90, 0.35, 1.90), 1.0, build_bookshelf),
    FurnitureClass("bed", 4.0, (1.50, 2.00, 0.90), 0.9, build_bed),
    FurnitureClass("lamp", 3.0, (0.40, 0.40, 1.60), 0.3, build_lamp),
    FurnitureClass("sink", 2.5, (0.55, 0.45, 0.90), 1.0, build_sink),
    FurnitureClass("toilet", 2.0, (0.42, 0.65, 0.80), 1.0, build_toilet),
    FurnitureClass("refrigerator", 1.5, (0.75, 0.70, 1.80), 1.0, build_refrigerator),
    FurnitureClass("bathtub", 1.0, (1.60, 0.80, 0.55), 1.0, build_bathtub),
)


def sampling_probabilities() -> np.ndarray:
    """Probability of drawing each furniture class (before placement rejections), in table order."""
    w = np.array([c.weight for c in FURNITURE])
    return w / w.sum()

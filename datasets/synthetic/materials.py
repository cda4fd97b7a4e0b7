"""The simulated furniture materials: one palette shared by every furniture class.

In real rooms colour does not name the object (chairs, tables and sofas come in any wood, fabric or
paint), so every piece of furniture draws its materials from the same palette, whatever its class;
class identity lives in shape and size only. Each object has three material slots: ``MAIN`` (body,
top, seat and back, mattress), ``TRIM`` (legs, frame, base, headboard) and ``ACCENT`` (handles,
feet, faucet, books). A slot repeats the slot before it or draws its own material, so the parts
of one object may match (an all-walnut table) or differ (a white top on steel legs).
"""
from __future__ import annotations

import numpy as np

MAIN, TRIM, ACCENT = 0, 1, 2
NUM_SLOTS = 3

# Base RGB (before shading) by family. Families are drawn with equal probability, then a colour
# within the family uniformly.
PALETTE: dict[str, tuple[tuple[int, int, int], ...]] = {
    "wood": ((214, 186, 140), (180, 138, 90), (150, 84, 52), (105, 70, 45), (60, 42, 32)),
    "fabric": ((170, 170, 165), (70, 72, 76), (200, 184, 156), (48, 62, 105), (60, 100, 70),
               (160, 70, 55), (200, 160, 60), (50, 120, 125)),
    "metal": ((165, 170, 175), (200, 205, 210), (40, 40, 44), (180, 150, 80)),
    "paint": ((235, 235, 230), (225, 218, 200), (190, 192, 195), (95, 98, 102), (30, 30, 32),
              (120, 170, 210), (150, 175, 140), (190, 50, 45), (230, 200, 80), (220, 150, 160)),
}
MATCH_PROB = 0.5  # chance that a slot repeats the slot before it instead of drawing its own material
JITTER = 14.0  # per-material colour standard deviation (RGB units)


def draw_material(rng: np.random.Generator) -> np.ndarray:
    """One palette colour (3,) float64, before jitter: a family at random, then a colour in it."""
    family = PALETTE[tuple(PALETTE)[int(rng.integers(len(PALETTE)))]]
    return np.array(family[int(rng.integers(len(family)))], dtype=np.float64)


def draw_materials(rng: np.random.Generator, main_jitter: np.ndarray) -> np.ndarray:
    """Colours (NUM_SLOTS, 3) of one object's material slots, drawn from ``rng``.

    ``main_jitter`` (3,) is added to the main material; the other slots, when they draw their own
    material, get their own jitter of standard deviation ``JITTER``.
    """
    slots = [draw_material(rng) + main_jitter]
    for _ in range(1, NUM_SLOTS):
        own = draw_material(rng) + rng.normal(0.0, JITTER, 3)
        # Both draws happen whatever the outcome, so each object consumes a fixed share of the stream.
        slots.append(slots[-1] if rng.random() < MATCH_PROB else own)
    return np.stack(slots)

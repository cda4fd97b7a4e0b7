"""Checks of configured values, each failing in one line that names the parameter and what was expected.

Components call these in their constructors, so a bad value fails while the experiment is built, before
any work (``bench.runner.Experiment.run`` builds every row first). They raise ValueError, which gin
passes through with the configurable's name, and the runner turns into its one-line error.
"""
from __future__ import annotations

import math
from collections.abc import Sequence


def check_integer(where: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` if it is an integer (not a bool) within [minimum, maximum]; else ValueError naming ``where``."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        bounds = [f">= {minimum}" if minimum is not None else "", f"<= {maximum}" if maximum is not None else ""]
        raise ValueError(f"{where}: expected an integer {' and '.join(b for b in bounds if b)}".rstrip()
                         + f", got {value!r}")
    return value


def check_number(where: str, value, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """``value`` if it is a finite real number in the interval; else ValueError naming ``where``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low is None or (value > low if low_open else value >= low))
    ok = ok and (high is None or (value < high if high_open else value <= high))
    if not ok:
        if low is not None and high is not None:
            interval = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            interval = f"{'>' if low_open else '>='} {low:g}"
        elif high is not None:
            interval = f"{'<' if high_open else '<='} {high:g}"
        else:
            interval = "finite"
        raise ValueError(f"{where}: expected a number {interval}, got {value!r}")
    return value


def check_choice(where: str, value, choices: Sequence) -> object:
    """``value`` if it is one of ``choices``; else ValueError naming ``where``."""
    if not any(value is c or (type(value) is type(c) and value == c) for c in choices):
        raise ValueError(f"{where}: expected one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value

"""Where a run's wall time goes: exclusive seconds per step kind, and the phases of every training step.

Code marks what it is doing with ``span(kind)``; time is charged to the innermost open span only, so the
kinds never double-count and their sum is the instrumented part of the run. Kinds are plain names
(``scene generation``, ``preparation``, ``pretrain/stage1``, ``finetune/seg``, ``evaluation``,
``mlflow``, ``tables and plots``, ...); a training phase is ``<step>|<phase>`` (``finetune/seg|forward``),
so a step's inclusive time is its own kind plus its phases.

The totals are per process: a worker process returns ``totals()`` with its job and the parent ``merge``s
them, so a parallel run's profile sums the seconds of every process (more than its wall time).
Recording costs two ``perf_counter`` calls per span and is always on (the progress lines use it).
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping

PHASE_SEPARATOR = "|"

_totals: dict[str, list[float]] = {}  # kind -> [exclusive seconds, number of spans]
_stack: list[list] = []  # open spans: [kind, start of the current uncharged stretch]


def _charge(kind: str, seconds: float, count: int) -> None:
    entry = _totals.setdefault(kind, [0.0, 0])
    entry[0] += seconds
    entry[1] += count


@contextlib.contextmanager
def span(kind: str) -> Iterator[None]:
    """Charge the time spent inside the block (minus inner spans) to ``kind``."""
    now = time.perf_counter()
    if _stack:  # pause the enclosing span
        outer = _stack[-1]
        _charge(outer[0], now - outer[1], 0)
    entry = [kind, now]
    _stack.append(entry)
    try:
        yield
    finally:
        end = time.perf_counter()
        _stack.pop()
        _charge(kind, end - entry[1], 1)
        if _stack:
            _stack[-1][1] = end


class Stopwatch:
    """Seconds since creation, for the progress lines of one step."""

    def __init__(self):
        self.start = self._lap = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def lap(self) -> float:
        """Seconds since the last lap (or creation)."""
        now = time.perf_counter()
        seconds, self._lap = now - self._lap, now
        return seconds


def totals() -> dict[str, tuple[float, int]]:
    """kind -> (exclusive seconds, number of spans) recorded in this process so far."""
    return {kind: (seconds, int(count)) for kind, (seconds, count) in _totals.items()}


def reset() -> None:
    """Forget everything recorded (open spans keep running and are charged when they close)."""
    _totals.clear()


def merge(other: Mapping[str, tuple[float, int]]) -> None:
    """Add another process's ``totals()`` to this one's."""
    for kind, (seconds, count) in other.items():
        _charge(kind, float(seconds), int(count))


def split_kind(kind: str) -> tuple[str, str]:
    """``'finetune/seg|forward'`` -> ``('finetune/seg', 'forward')``; a plain kind has phase ``''``."""
    step, _, phase = kind.partition(PHASE_SEPARATOR)
    return step, phase


# --- the profile table printed by ``run_bench.py --profile`` and ``python -m bench.perf pipeline``

PHASES = ("data", "forward", "backward", "optimizer")
IDLE_KINDS = ("waiting for worker processes",)  # the parent's idle time while workers run the rows


def profile_report(recorded: Mapping[str, tuple[float, int]], wall_seconds: float, title: str = "") -> str:
    """Where the time went: seconds and shares per step kind, then the training steps by phase.

    ``recorded`` is ``totals()`` (merged over processes); ``wall_seconds`` the run's wall time. Shares
    are of the time accounted over all processes, the parent's idle waiting for workers excluded (with
    N workers that total is about N times the wall time). Time the parent spent outside every span
    (interpreter start, argument parsing) is ``other``.
    """
    steps: dict[str, float] = {}
    phases: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    for kind, (seconds, count) in recorded.items():
        step, phase = split_kind(kind)
        steps[step] = steps.get(step, 0.0) + seconds
        if phase:
            phases.setdefault(step, {})[phase] = phases.get(step, {}).get(phase, 0.0) + seconds
            if phase == "forward":
                counts[step] = counts.get(step, 0) + count
    idle = sum(steps.pop(k, 0.0) for k in IDLE_KINDS)
    parent_accounted = sum(s for k, (s, _) in recorded.items() if not k.startswith("worker")) if not idle else 0.0
    other = max(0.0, wall_seconds - parent_accounted) if not idle else 0.0
    total = sum(steps.values()) + other
    lines = [title] if title else []
    lines.append(f"wall time {wall_seconds:.1f} s; time accounted over all processes {total:.1f} s"
                 + (f" (the parent waited {idle:.1f} s for its worker processes)" if idle else ""))
    lines += ["", f"{'step kind':<44}{'seconds':>9}{'share':>8}"]
    for step, seconds in sorted(steps.items(), key=lambda kv: -kv[1]):
        label = step + (f" ({counts[step]} steps)" if step in counts else "")
        lines.append(f"{label:<44}{seconds:>9.1f}{_share(seconds, total):>8}")
    if other:
        lines.append(f"{'other (not instrumented)':<44}{other:>9.1f}{_share(other, total):>8}")
    if phases:
        lines += ["", f"{'training steps by phase, seconds (share)':<34}"
                  + "".join(f"{p:>16}" for p in (*PHASES, "other"))]
        for step in sorted(phases, key=lambda k: -steps[k]):
            own = {p: phases[step].get(p, 0.0) for p in PHASES}
            own["other"] = steps[step] - sum(own.values())  # building, checkpoints, loaders
            cells = "".join(f"{f'{v:.1f} ({_share(v, steps[step]).strip()})':>16}" for v in own.values())
            lines.append(f"{step:<34}{cells}")
        summed = {p: sum(phases[s].get(p, 0.0) for s in phases) for p in PHASES}
        summed["other"] = sum(steps[s] for s in phases) - sum(summed.values())
        whole = sum(summed.values())
        lines.append(f"{'all training':<34}" + "".join(f"{f'{v:.1f} ({_share(v, whole).strip()})':>16}"
                                                       for v in summed.values()))
    return "\n".join(lines) + "\n"


def _share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f} %" if whole > 0 else "–"

"""The compute seconds of the cached steps a table used, whichever invocation made them.

A step (a scene generated, a scene prepared, a pretraining stage, a fine-tuning run, an evaluation)
records the seconds it took when it is made (in its file's record, ``infra.io.write_cache_file``; a
resumed checkpoint adds the seconds of every invocation that trained it). Whenever a job makes or
reads a step it reports it here with those seconds, so a table resumed over several invocations, or
answered from the cache, still says what its numbers cost: the sum over the steps it used, each
counted once, next to the wall time of the invocation that wrote it.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

_collectors: list[dict[str, float]] = []  # one per open ``collecting()`` block, innermost last


def used(step: str, seconds: float | None) -> None:
    """Report that the running job used ``step``, which took ``seconds`` to make (None: not recorded)."""
    if seconds is None:
        return
    for collector in _collectors:
        collector[step] = float(seconds)


def used_all(steps: Mapping[str, float]) -> None:
    """Report every step of ``steps`` (e.g. those a cached row result says it used)."""
    for step, seconds in steps.items():
        used(step, seconds)


@contextlib.contextmanager
def collecting() -> Iterator[dict[str, float]]:
    """Collect, for the block, every step reported (step name -> seconds); blocks nest."""
    collector: dict[str, float] = {}
    _collectors.append(collector)
    try:
        yield collector
    finally:
        _collectors.remove(collector)

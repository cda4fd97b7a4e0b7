"""What a person watching a run reads: one line per finished step, one per finished row and seed.

Per-epoch progress bars are drawn only on an interactive terminal (stderr is a TTY): in a log file,
CI or a cluster job they would write carriage returns by the hundred kilobytes, and the step lines say
what happened. Lines name the row and seed they belong to, so parallel workers' lines stay readable.

Under torchrun every rank runs every step, so lines, bars and notes come from the global rank 0 alone
(``RANK``, not ``LOCAL_RANK``: with several nodes, each node's launcher would otherwise repeat the table).
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Iterator

_label: list[str] = []  # the row and seed being run in this process, e.g. "DD seed=0"


@contextlib.contextmanager
def job(label: str) -> Iterator[None]:
    """Prefix the step lines printed inside the block with ``[label]``."""
    _label.append(label)
    try:
        yield
    finally:
        _label.pop()


def reports() -> bool:
    """Whether this process prints progress: yes, unless it is a torchrun rank other than the global rank 0
    (torchrun sets ``RANK`` before the process starts, so this holds before the process group exists)."""
    return os.environ.get("RANK", "0") == "0"


def interactive() -> bool:
    """Whether progress bars make sense here (stderr is a terminal)."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def bar(iterable: Iterable, desc: str, total: int | None = None) -> Iterable:
    """``iterable`` wrapped in a transient tqdm bar on a terminal (global rank 0); unchanged elsewhere."""
    if not (interactive() and reports()):
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False)


def duration(seconds: float) -> str:
    """``12.3 s`` below a minute, ``m:ss`` below an hour, ``h:mm:ss`` above."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}:{secs:02d}"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def step(name: str, detail: str) -> None:
    """One line for a finished step: ``[DD seed=0] pretrain/stage1: trained 8 epochs in 12.3 s``.

    Under torchrun only the global rank 0 prints (every rank runs every step).
    """
    if not reports():
        return
    prefix = f"[{_label[-1]}] " if _label else ""
    print(f"{prefix}{name}: {detail}", flush=True)


class TableProgress:
    """The overall line of a table: rows x seeds done, elapsed time, an estimate of the time left.

    The estimate assumes the jobs left take as long as the mean finished one, ``workers`` at a time.
    Under torchrun only the global rank 0 prints the line (every rank counts).
    """

    def __init__(self, name: str, total: int, workers: int = 1):
        self.name = name
        self.total = total
        self.workers = max(1, workers)
        self.done = 0
        self.busy_seconds = 0.0
        self.started = time.perf_counter()

    def finished(self, label: str, seconds: float) -> str:
        """Count one finished job; print (global rank 0) and return the overall line."""
        self.done += 1
        self.busy_seconds += seconds
        elapsed = time.perf_counter() - self.started
        left = self.total - self.done
        line = f"{self.name}: {self.done}/{self.total} rows x seeds done ({label} took {duration(seconds)}), " \
               f"{duration(elapsed)} elapsed"
        if left:
            estimate = self.busy_seconds / self.done * left / min(self.workers, left)
            line += f", about {duration(estimate)} left"
        if reports():
            print(line, flush=True)
        return line


_SAID: set[str] = set()


def note_once(text: str) -> None:
    """Print ``note: <text>`` the first time this process is told it (a size capped to what the data has);
    under torchrun on the global rank 0 only."""
    if text not in _SAID and reports():
        _SAID.add(text)
        print(f"note: {text}", flush=True)

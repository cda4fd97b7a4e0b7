"""One cached step: read its file if it is there and intact, else claim it, compute it, write it, record its use.

Every product the harness caches (a generated scene, a prepared scene and its frames, the k-means groups, a
pretraining or fine-tuning checkpoint, a row's evaluation, a figure) is a file under ``<results_dir>/cache``
whose name or folder carries the content key of everything that made it. ``CachedStep`` is the sequence
each of them follows:

1. ``load``: the file's bytes, checked against the record written beside them (``infra.io``), then decoded;
   a file that is absent gives None, one that fails its checksum or does not decode gives None with one
   warning line naming it (it is then made again, never used).
2. ``claim``: the step's lock (``infra.locks``), so that of two processes wanting the same step one makes it
   and the other waits, then reads it.
3. compute, then ``save``: written atomically with its record (checksum, size, compute seconds).
4. ``report``: the step and the compute seconds that made it go to the running job's record
   (``infra.steps``), whichever invocation made it.

``get`` runs the whole sequence for a step whose value is computed in one go; a checkpoint written epoch
by epoch uses the parts. ``make_missing`` splits many such steps between concurrent processes.
"""
from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from infra import steps, timing
from infra.io import CorruptCacheFile, read_cache_file, write_cache_file
from infra.locks import step_lock, try_step_lock

T = TypeVar("T")
Item = TypeVar("Item")
R = TypeVar("R")


class UnusableCacheFile(Exception):
    """Raised by a decoder: the file's bytes are intact but not what the step stores (the message says why)."""


class CachedStep(Generic[T]):
    """The file of one cached step (module docstring).

    Args:
      path: the step's file.
      name: the step as ``infra.steps`` reports it (e.g. ``stages/<folder>``); None = not reported.
      lock: the file whose lock claims the step; None = the step is never claimed (two processes may both
        make it; each writes the same bytes atomically).
      what, redo: how a warning names the file and what happens next, as in
        ``warning: checkpoint <path>: <why>; training from scratch``.
    """

    def __init__(self, path: str | pathlib.Path, name: str | None = None, lock: str | pathlib.Path | None = None,
                 what: str = "cache file", redo: str = "computing it again"):
        self.path = pathlib.Path(path)
        self.name = name
        self.lock = pathlib.Path(lock) if lock is not None else None
        self.what = what
        self.redo = redo

    def load(self, decode: Callable[[bytes], T] = bytes, quiet: bool = False) -> T | None:
        """The decoded file, its use reported with the seconds its record keeps; None when the file is
        absent, or (with a warning unless ``quiet``) changed since it was written or undecodable."""
        found = self.load_with_record(decode, quiet)
        return None if found is None else found[0]

    def load_with_record(self, decode: Callable[[bytes], T] = bytes,
                         quiet: bool = False) -> tuple[T, dict] | None:
        """``load``, with the file's record (``sha256``, ``bytes``, ``seconds``) beside the value."""
        try:
            data, record = read_cache_file(self.path)
        except FileNotFoundError:
            return None
        except CorruptCacheFile as e:
            self._warn(str(e), quiet)
            return None
        except OSError as e:
            self._warn(f"{self.path}: unreadable ({e.strerror or type(e).__name__})", quiet)
            return None
        try:
            value = decode(data)
        except UnusableCacheFile as e:
            self._warn(f"{self.path}: {e}", quiet)
            return None
        except Exception as e:  # noqa: BLE001  a decoder's error on bytes it cannot read: numpy, zip, JSON, torch
            self._warn(f"{self.path} is unreadable ({type(e).__name__})", quiet)
            return None
        self.report(record.get("seconds"))
        return value, record

    def save(self, data: bytes, seconds: float | None = None, extra: dict | None = None) -> None:
        """Write the step's bytes atomically with their record (``extra`` fields in it, ``infra.io``), and
        report the step's use."""
        write_cache_file(self.path, data, seconds, extra)
        self.report(seconds)

    def report(self, seconds: float | None) -> None:
        """Report that the running job used this step, which took ``seconds`` to make (``infra.steps``)."""
        if self.name is not None:
            steps.used(self.name, seconds)

    @contextlib.contextmanager
    def claim(self) -> Iterator[None]:
        """Hold the step's lock for the block, waiting while another process holds it."""
        with step_lock(self.lock) if self.lock is not None else contextlib.nullcontext():
            yield

    @contextlib.contextmanager
    def try_claim(self) -> Iterator[bool]:
        """The block gets True if this process now holds the step's lock, False if another one does."""
        if self.lock is None:
            yield True
            return
        with try_step_lock(self.lock) as held:
            yield held

    def drop_lock_file(self) -> None:
        """Remove the step's lock file, its file being written (called while the lock is held).

        A split of many thousand steps would otherwise leave one lock file per step on a shared filesystem.
        It is safe: a process still waiting on the removed file, or one locking a new file of the same name,
        looks for the step's file first under its lock and finds it; where that file is later found damaged,
        two processes may both make it again, each writing the same bytes atomically.
        """
        if self.lock is not None:
            self.lock.unlink(missing_ok=True)

    def get(self, compute: Callable[[], T], encode: Callable[[T], bytes], decode: Callable[[bytes], T]) -> T:
        """The step's value: read from its file, or computed (under the step's claim, after a second look in
        case another process made it meanwhile) and saved with the seconds it took."""
        value = self.load(decode)
        if value is not None:
            return value
        with self.claim():
            value = self.load(decode, quiet=True)
            if value is None:
                clock = timing.Stopwatch()
                value = compute()
                self.save(encode(value), clock.seconds)
        return value

    def _warn(self, reason: str, quiet: bool) -> None:
        if not quiet:
            print(f"warning: {self.what} {reason}; {self.redo}")


def make_missing(items: Iterable[Item], step: Callable[[Item], CachedStep],
                 existing: Callable[[Item], R | None], make: Callable[[Item], R]) -> tuple[dict[Item, R], int]:
    """Every item's result: ``existing(item)`` where another process made it, else ``make(item)``, sharing
    the work with concurrent processes: an item whose step another process has claimed is passed over and
    waited for at the end (by then it is usually made).

    Returns (item -> result, in the order made; how many items another process made).
    """
    results: dict = {}
    by_others, deferred = 0, []
    for item in items:
        item_step = step(item)
        with item_step.try_claim() as held:
            if not held:
                deferred.append(item)
                continue
            by_others += _make_one(item, item_step, existing, make, results)
    for item in deferred:
        item_step = step(item)
        with item_step.claim():
            by_others += _make_one(item, item_step, existing, make, results)
    return results, by_others


def _make_one(item, item_step: CachedStep, existing, make, results: dict) -> int:
    """Store ``item``'s result; 1 if another process had made it, else 0. The item's lock file goes once its
    file is written (``CachedStep.drop_lock_file``)."""
    found = existing(item)
    results[item] = make(item) if found is None else found
    item_step.drop_lock_file()
    return int(found is not None)

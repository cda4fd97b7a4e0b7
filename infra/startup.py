"""What makes a process's start-up cheaper, for the entry point and the MLflow helper process."""
from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def importing_without_collection() -> Iterator[None]:
    """No garbage collection while the block imports, and what it made frozen out of later collections.

    Importing torch or MLflow makes hundreds of thousands of objects that live as long as the process; the
    collector's passes over them during the import cost about a tenth of it, and the first full collection
    after it another 0.2 s (measured in the MLflow helper). ``gc.freeze`` moves them to the permanent
    generation, which later collections skip. Collection is on again after the block, however it ends.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def import_in_background(load: Callable[[], None]) -> threading.Thread:
    """Run ``load`` (a function that imports modules) in a daemon thread, started now; ``join()`` it before
    using what it imports. The import runs while this thread waits (on a pipe, a lock, a subprocess:
    the GIL is free then); an error it raises is raised again by the import that needs the module."""
    thread = threading.Thread(target=_quietly, args=(load,), name="import-in-background", daemon=True)
    thread.start()
    return thread


def _quietly(load: Callable[[], None]) -> None:
    try:
        load()
    except Exception:  # noqa: BLE001  the import in the thread that uses the module says what is wrong
        pass

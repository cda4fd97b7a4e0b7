"""infra.startup: imports without garbage collection, and imports in a background thread."""
import gc
import importlib
import sys
import threading

import pytest

from infra import startup


def test_collection_is_off_during_the_block_and_on_after_it_however_it_ends():
    assert gc.isenabled()
    with startup.importing_without_collection():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), startup.importing_without_collection():
        raise RuntimeError("an import failed")
    assert gc.isenabled()


def test_background_import_loads_the_module_in_another_thread(tmp_path, monkeypatch):
    (tmp_path / "sam3d_background_probe.py").write_text(
        "import threading\nTHREAD = threading.current_thread().name\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "sam3d_background_probe", raising=False)

    thread = startup.import_in_background(lambda: importlib.import_module("sam3d_background_probe"))
    thread.join(timeout=30)

    assert not thread.is_alive() and thread.daemon
    module = sys.modules["sam3d_background_probe"]
    assert module.THREAD == thread.name != threading.current_thread().name


def test_a_failed_background_import_is_raised_by_the_import_that_needs_it(monkeypatch):
    hooked = []
    monkeypatch.setattr(threading, "excepthook", lambda args: hooked.append(args))

    thread = startup.import_in_background(lambda: importlib.import_module("sam3d_no_such_module"))
    thread.join(timeout=30)

    assert hooked == []  # nothing printed from the thread
    with pytest.raises(ModuleNotFoundError, match="sam3d_no_such_module"):
        importlib.import_module("sam3d_no_such_module")

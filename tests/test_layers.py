"""The house reads one way: run_bench.py -> bench -> methods -> datasets -> infra, no import circles, small files.

Imports inside functions count everywhere here (grimp, which import-linter is built on, reads every import
statement of a module, wherever it stands).
"""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import grimp
import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from tests.conftest import REPO_ROOT

PACKAGES = ("bench", "methods", "datasets", "infra")
MAX_LINES = 400


def test_the_layer_contract_holds():
    """pyproject.toml's import-linter contract: a module imports only the layers below its own."""
    lint = pathlib.Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(REPO_ROOT), "PATH": str(lint.parent)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout


def _circles(graph) -> list[list[str]]:
    """The strongly connected groups of two or more modules of ``graph`` (each an import circle)."""
    modules = sorted(graph.modules)
    index = {m: i for i, m in enumerate(modules)}
    edges = [(index[a], index[b]) for a in modules for b in graph.find_modules_directly_imported_by(a)]
    rows, cols = zip(*edges) if edges else ((), ())
    matrix = csr_matrix((np.ones(len(edges)), (rows, cols)), shape=(len(modules), len(modules)))
    count, labels = connected_components(matrix, directed=True, connection="strong")
    groups = [[m for m, label in zip(modules, labels) if label == group] for group in range(count)]
    return [group for group in groups if len(group) > 1]


def test_no_module_imports_another_that_imports_it_back():
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    assert len(graph.modules) > 100  # the whole tree was read
    circles = _circles(graph)
    assert not circles, "import circles: " + "; ".join(" <-> ".join(group) for group in circles)


def test_circles_are_found_where_there_are_some():
    graph = grimp.ImportGraph()
    for a, b in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")):
        graph.add_import(importer=a, imported=b)
    assert _circles(graph) == [["p.a", "p.b", "p.c"]]


def test_run_bench_imports_bench_alone():
    tree = ast.parse((REPO_ROOT / "run_bench.py").read_text())
    ours = set()
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        ours |= {name.split(".")[0] for name in names if name.split(".")[0] in PACKAGES}
    assert ours == {"bench"}


def test_no_source_file_is_over_the_line_limit():
    long = {str(path.relative_to(REPO_ROOT)): n for package in PACKAGES
            for path in (REPO_ROOT / package).rglob("*.py") if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"

"""``python -m bench.perf pipeline``: run a table and print where its wall time went.

    python -m bench.perf pipeline [--gin FILE ...] [--gin_binding B ...] [--results_dir DIR]
                                  [--rerun] [--reference CHECKOUT]

Each run is a fresh ``run_bench.py --profile`` process on a results folder that starts empty (a temporary
one unless ``--results_dir`` is given), so the first run pays for everything a new user pays for. Its
profile lists seconds and shares per step kind (scene generation, preparation, each pretraining stage,
each fine-tuning task, evaluation, MLflow, tables and plots, worker start-up, waiting) and the phases of
the training steps (data = sampling + tokenization + collation, forward, backward, optimizer).

``--rerun`` runs the same command a second time on the same folder: the cached re-run, which should
train nothing. ``--reference CHECKOUT`` first runs the same command with another checkout of the harness
(e.g. ``git worktree add ../before <commit>``) on its own empty folder, and prints the wall-time ratio and
whether the two runs' metrics agree.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import subprocess
import sys
import tempfile
import time

from bench.config import REPO_ROOT

DEFAULT_GIN = "gin/tables/table3_smoke.gin"


def _run(checkout: pathlib.Path, gin_files: list[str], bindings: list[str], results: pathlib.Path,
         profile: bool) -> tuple[float, str]:
    """Wall seconds and output of one ``run_bench.py`` process."""
    command = [sys.executable, str(checkout / "run_bench.py"), *(f"--gin={g}" for g in gin_files),
               *(f"--gin_binding={b}" for b in bindings), f"--results_dir={results}"]
    if profile:
        command.append("--profile")
    started = time.perf_counter()
    done = subprocess.run(command, cwd=checkout, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{checkout / 'run_bench.py'} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def _metrics(results: pathlib.Path) -> dict:
    """(row, seed) -> metrics of the newest results folder under ``results``."""
    newest = max(results.glob("*/*/metrics.json"), key=lambda p: p.parent.name)
    return {(r["row"], r["seed"]): r["metrics"] for r in json.loads(newest.read_text())["runs"]}


def _same(a: dict, b: dict) -> bool:
    def same(x, y):
        return x == y or (x is None and y is None) or (isinstance(x, float) and isinstance(y, float)
                                                        and math.isnan(x) and math.isnan(y))
    return a.keys() == b.keys() and all(a[k].keys() == b[k].keys() and all(same(a[k][m], b[k][m]) for m in a[k])
                                        for k in a)


def _profile_part(output: str) -> str:
    start = output.rfind("\nprofile of ")
    return output[start + 1:] if start >= 0 else output


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.perf pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gin", action="append", default=[], metavar="FILE", help=f"default: {DEFAULT_GIN}")
    parser.add_argument("--gin_binding", action="append", default=[], metavar="BINDING")
    parser.add_argument("--results_dir", type=pathlib.Path, help="an empty folder to run in (default: a temporary one)")
    parser.add_argument("--rerun", action="store_true", help="run a second time on the same folder (the cached re-run)")
    parser.add_argument("--reference", type=pathlib.Path, metavar="CHECKOUT",
                        help="another checkout of the harness to time on the same command first")
    args = parser.parse_args(argv)
    gin_files = args.gin or [DEFAULT_GIN]
    with tempfile.TemporaryDirectory(prefix="sam3d-pipeline-") as scratch:
        results = args.results_dir or pathlib.Path(scratch) / "results"
        if results.exists() and any(results.iterdir()):
            raise SystemExit(f"--results_dir {results} is not empty; the first run must start from nothing")
        reference = None
        if args.reference is not None:
            ref_results = pathlib.Path(scratch) / "reference"
            seconds, _ = _run(args.reference.resolve(), gin_files, args.gin_binding, ref_results, profile=False)
            reference = (seconds, _metrics(ref_results))
            print(f"reference {args.reference}: {seconds:.1f} s")
        seconds, output = _run(REPO_ROOT, gin_files, args.gin_binding, results, profile=True)
        print(f"first run: {seconds:.1f} s (this checkout)\n")
        print(_profile_part(output))
        if reference is not None:
            print(f"speed-up over the reference: {reference[0] / seconds:.2f}x "
                  f"({reference[0]:.1f} s -> {seconds:.1f} s); metrics identical: "
                  f"{'yes' if _same(reference[1], _metrics(results)) else 'no'}")
        if args.rerun:
            again, output = _run(REPO_ROOT, gin_files, args.gin_binding, results, profile=True)
            print(f"\ncached re-run: {again:.1f} s ({again / seconds:.2f} of the first run)\n")
            print(_profile_part(output))
    return 0

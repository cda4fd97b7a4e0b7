#!/usr/bin/env python
"""sam3d-bench entry point.

    python run_bench.py --gin=gin/demo.gin [--gin=FILE ...] [--gin_binding='Name.param = value' ...]
                        [--results_dir DIR] [--profile] [--prepare [--shard I/N]] [--plan]
"""
import logging
import os
import pathlib
import sys

# The harness runs from its checkout: its packages (bench, methods, datasets) are never installed.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from bench.cli import main  # noqa: E402

if __name__ == "__main__":
    code = main()
    # Everything is written and closed by now; tearing down the interpreter (torch, MLflow, matplotlib)
    # would take another one to two seconds, which is most of a cached re-run of a small table.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

#!/usr/bin/env python
"""sam3d-bench entry point.

    python run_bench.py --gin=gin/demo.gin [--gin=FILE ...] [--gin_binding='Name.param = value' ...]
                        [--results_dir DIR]
"""
import pathlib
import sys

# The harness runs from its checkout: its packages (bench, methods, datasets) are never installed.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from bench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

"""``python -m bench.perf NAME [args]``: run the benchmark in ``bench/perf/NAME.py`` (its ``main(argv)``)."""
from __future__ import annotations

import importlib
import pkgutil
import sys

import bench.perf


def _available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(bench.perf.__path__) if not m.name.startswith("_"))


def main(argv: list[str]) -> int:
    names = _available()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in names:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"unknown benchmark {argv[0]!r}; available: {', '.join(names)}", file=sys.stderr)
            return 2
        print("usage: python -m bench.perf NAME [args]\navailable: " + ", ".join(names))
        return 0
    module = importlib.import_module(f"bench.perf.{argv[0]}")
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Performance benchmarks: each submodule measures one thing against a reference timed in the same run.

Run one with ``python -m bench.perf NAME`` (``python -m bench.perf`` lists them).
"""

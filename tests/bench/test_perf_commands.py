"""The preparation benchmarks run and print what they promise: ``bench.perf kmeans`` at a tiny shape, and
``bench.perf sam_gpu`` refusing (exit 2, one line) on a machine without CUDA."""
from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest
import torch

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _perf(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.perf", *argv], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)


def test_kmeans_benchmark_prints_the_three_fits_and_the_groups_memory():
    done = _perf("kmeans", "--rows=3000", "--dim=16", "--groups=4", "--frames=130", "--capacity=1000")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for method in ("kmeans2", "harness", "minibatch"):
        line = next(x for x in lines if x.strip().startswith(method))
        assert re.search(r"\d+\.\d s \(\d+\.\d\dx\)\s+\d+ iterations\s+inertia \d\.\d+e\+\d+", line), line
    assert "(1.00x)" in next(x for x in lines if x.strip().startswith("kmeans2"))
    steps = [x for x in lines if "frames," in x]
    # 2 and 8 scenes of 65 frames with 100 regions each: every region counted, the sample capped.
    assert "130 frames, 13000 regions" in steps[0] and "520 frames, 52000 regions" in steps[1]
    assert re.search(r"4x the frames / 1x: \d+\.\d\dx the memory", lines[-1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_sam_gpu_check_refuses_without_cuda_in_one_line():
    done = _perf("sam_gpu")
    assert done.returncode == 2
    assert done.stderr.strip() == "sam_gpu: no CUDA device here; this check runs on a GPU machine"

"""The benchmarks run and print what they promise: ``bench.perf kmeans`` and ``datapath`` at tiny shapes, and
``bench.perf sam_gpu`` and ``gpu`` refusing (exit 2, one line) on a machine without CUDA."""
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


def test_datapath_benchmark_prints_both_shapes_and_the_step_share():
    done = _perf("datapath", "--tiny", "--batch=2", "--repeats=1", "--frames=4", "--steps=1", "--workers=1")
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines() if line.split()[:1] in (["pretraining"],
                                                                                            ["detection"])}
    assert set(rows) == {"pretraining", "detection"}
    for line in rows.values():  # load, CPU path, device path, ratio, tokenizer, batched, ratio
        assert len(re.findall(r"\d+\.\d+x?", line)) == 7, line
    assert re.search(r"device path, worst shape: \d+\.\d\d ms a sample", done.stdout)
    shares = [line for line in done.stdout.splitlines() if line.startswith("step share")]
    assert len(shares) == 2 and all(re.search(r"waiting for data \d+\.\d%, tokenizing \d+\.\d%", s) for s in shares)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_gpu_check_refuses_without_cuda_in_one_line():
    done = _perf("gpu")
    assert done.returncode == 2
    assert done.stderr.strip() == "gpu: no CUDA device here; this check runs on a GPU machine"

"""``python -m bench.perf gpu [--batch 8] [--steps 10]``: training at the paper's shapes on a GPU; the check for
a session with one (never part of the test suite).

Printed, each after warm-up steps (CUDA kernels, allocator), median seconds of ``--steps`` steps:
- a pretraining step (Stage 1 region distillation, the paper's encoder: 256 SAM-guided tokens x 128 points of
  20,000-point paper-shaped stand-in frames, 768-d teacher) and a detection step (3DETR-style head, 8 decoder
  layers, 256 queries, 2048 KNN tokens x 128 of 40,000 points), each in float32 and in bf16 autocast, with
  peak GPU memory;
- tokenization: the per-sample CPU path against the batched path on the GPU (same tokens, checked);
- the data path's share of a step: the CPU's per-sample work (``bench.perf datapath``'s device path) over the
  step, i.e. how many worker processes keep one GPU fed;
- an nccl all-reduce over the visible GPUs (one process per GPU, 256 MB), bus bandwidth.
Needs CUDA.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

PAPER_FRAMES = 78_000


def _timed(fn, steps: int, warmup: int = 3) -> float:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        clock = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - clock)
    return statistics.median(times)


def _train_step(module, batch: dict, bf16: bool):
    import torch

    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4, foreach=True)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            out = module(batch)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
    return step


def _pretraining(batch_size: int, device):
    from bench.perf.datapath import GROUPS, TEACHER_DIM, pretraining_frames, read_back
    from methods.batching import TokenizedFrames, collate
    from methods.encoder import EncoderSpec
    from methods.objectives.distillation import RegionDistillation
    from methods.tokenizers import SamGuidedTokenizer

    frames, _ = read_back(pretraining_frames(batch_size))
    data = TokenizedFrames(frames, SamGuidedTokenizer(256, 128), seed=0)
    module = RegionDistillation(encoder=EncoderSpec()).build(TEACHER_DIM, np.full(GROUPS, 1.0 / GROUPS)).to(device)
    return data, collate, module


def _detection(batch_size: int, device):
    from bench.perf.datapath import detection_scenes
    from methods.detr_recipe import DetrRecipe
    from methods.downstream.detection import Detector3D
    from methods.downstream.scene_batch import SceneSamples, collate_scenes
    from methods.encoder import EncoderSpec
    from methods.tokenizers import KnnTokenizer

    data = SceneSamples(detection_scenes(batch_size), 40_000, KnnTokenizer(2048, 128), seed=0, augment=True)
    model = Detector3D(EncoderSpec().build(), 18, False, num_queries=256, decoder_depth=8)
    return data, collate_scenes, DetrRecipe().objective(model).to(device)


def _shape(name: str, make, batch_size: int, steps: int, device) -> None:
    import torch

    data, collate_fn, module = make(batch_size, device)
    clock = time.perf_counter()
    cpu_batch = collate_fn([data[i] for i in range(batch_size)])
    cpu_ms = (time.perf_counter() - clock) / batch_size * 1e3
    finish = data.tokens_on_device()
    clock = time.perf_counter()
    inputs = collate_fn([data[i] for i in range(batch_size)])
    worker_ms = (time.perf_counter() - clock) / batch_size * 1e3
    inputs = {k: v.to(device) for k, v in inputs.items()}
    device_s = _timed(lambda: finish(inputs), steps)
    batch = finish(inputs)
    same = all(torch.equal(batch[k].cpu(), cpu_batch[k]) for k in ("centers", "valid"))
    print(f"{name}: tokens a sample, CPU path {cpu_ms:.1f} ms (worker, before); device path in the worker "
          f"{worker_ms:.1f} ms; batched on the GPU {device_s / batch_size * 1e3:.2f} ms; same centres: {same}")
    for bf16 in (False, True):
        torch.cuda.reset_peak_memory_stats()
        seconds = _timed(_train_step(module, batch, bf16), steps)
        peak = torch.cuda.max_memory_allocated() / 2**30
        share = worker_ms * batch_size / 1e3 / seconds
        print(f"{name} step, batch {batch_size}, {'bf16 autocast' if bf16 else 'float32'}: {seconds * 1e3:.0f} ms, "
              f"peak {peak:.1f} GiB; one worker's data per step = {share:.2f} steps "
              f"(>= {max(1, int(np.ceil(share)))} workers a GPU keep it fed)")


def _nccl(gpus: int) -> None:
    """All-reduce of 256 MB over the visible GPUs, one process each (torch.multiprocessing)."""
    import torch.multiprocessing as mp

    if gpus < 2:
        print("nccl: one GPU visible, no all-reduce to time")
        return
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_nccl_worker, args=(gpus, os.path.join(folder, "rendezvous")), nprocs=gpus, join=True)


def _nccl_worker(rank: int, world: int, path: str) -> None:
    import torch
    import torch.distributed as dist

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{path}", rank=rank, world_size=world)
    x = torch.ones(64 * 2**20, device="cuda")  # 256 MB of float32
    seconds = _timed(lambda: dist.all_reduce(x), 10)
    if rank == 0:
        bus = 2 * (world - 1) / world * x.numel() * 4 / seconds / 1e9
        print(f"nccl all-reduce of 256 MB over {world} GPUs: {seconds * 1e3:.1f} ms, bus bandwidth {bus:.0f} GB/s")
    dist.destroy_process_group()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.perf gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="samples a step on one GPU (3DETR: 8 per GPU)")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu: no CUDA device here; this check runs on a GPU machine", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    print(f"{torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}, torch {torch.__version__}")
    _shape("pretraining", _pretraining, args.batch, args.steps, device)
    _shape("detection", _detection, args.batch, args.steps, device)
    _nccl(torch.cuda.device_count())
    return 0

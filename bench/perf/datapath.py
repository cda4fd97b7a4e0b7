"""The training data path at the paper's shapes, on this CPU: what a sample costs the CPU with tokens made per
sample on the CPU (before) and with tokens made on the device (after), and what share of a step waits for data.

    python -m bench.perf datapath [--batch 8] [--repeats 3] [--frames 32] [--steps 6] [--workers 1] [--tiny]

Shapes [prior: Bridge3D, 3DETR]: pretraining frames of 20,000 points -> 256 SAM-guided tokens x 128, 768-d
teacher features per region (paper-shaped stand-in frames: points on a room's surfaces, a region per surface,
stored and read back in the prepared-frame file format); detection scenes of 150,000 points sampled
to 40,000 -> 2048 KNN tokens x 128, augmented (paper-shaped stand-in scenes). Everything on one thread.

Rows (median ms per sample over ``--repeats`` runs of ``--batch`` samples):
- load: reading a prepared frame from its scene's file (pretraining; amortised over the scene's frames);
- CPU path: ``dataset[i]`` with tokens made per sample (sampling, augmentation, tokenization), plus its share of
  the collation: what a DataLoader worker did per sample before;
- device path: the same with tokens made on the device: the worker's share is sampling, augmentation and the
  tokenizer's random draws (target: at most 5 ms a sample at both shapes);
- tokenizer: the per-sample tokenizer alone, against the batched tokenization (``tokenize_batch``) per
  sample, run here on the CPU (on a GPU it runs there; never measured here);
- step share: a real training loop (``methods.train``, the paper's encoder, ``--steps`` steps of ``--batch``)
  with ``--workers`` worker processes: the share of its time spent waiting for the next batch and tokenizing,
  with tokens made on the CPU by the workers and with tokens made by the batched path after the copy. On this
  CPU the model's step is slow, so the share says little about a GPU's (estimate from the rows above).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import pathlib
import statistics
import tempfile
import time

import numpy as np
import torch

from bench.perf.tokenizers import synthetic_room
from datasets.types import Scene
from infra import timing
from methods.batching import TokenizedFrames, collate
from methods.downstream.scene_batch import SceneSamples, collate_scenes
from methods.encoder import EncoderSpec
from methods.objectives.distillation import RegionDistillation
from methods.prepared_scenes import PreparedFrame, pack_scene, unpack_scene
from methods.tokenizers import KnnTokenizer, SamGuidedTokenizer
from methods.train import TrainSchedule, train

TEACHER_DIM = 768  # DINOv2 ViT-B
GROUPS = 32


@dataclasses.dataclass(frozen=True)
class Shapes:
    """Points and tokens of the two shapes (the paper's by default; ``TINY`` for the suite's smoke test)."""

    frame_points: int = 20_000
    frame_tokens: tuple[int, int] = (256, 128)
    scene_points: int = 150_000
    sampled_points: int = 40_000
    scene_tokens: tuple[int, int] = (2048, 128)


PAPER = Shapes()
TINY = Shapes(2_000, (32, 16), 6_000, 3_000, (64, 16))


def pretraining_frames(count: int, points: int = 20_000, seed: int = 0) -> list[PreparedFrame]:
    """``count`` paper-shaped stand-in frames: a room's surfaces as regions, 768-d float16 region features."""
    frames = []
    for i in range(count):
        xyz, regions = synthetic_room(points, seed + i)
        rng = np.random.default_rng(seed + i)
        ids = np.unique(regions.numpy()[regions.numpy() > 0]).astype(np.int32)
        frames.append(PreparedFrame(
            frame_id=f"frame{i:05d}", xyz=xyz.numpy(), rgb=rng.integers(0, 256, (points, 3), dtype=np.uint8),
            region=regions.numpy().astype(np.int32), region_ids=ids,
            region_features=rng.standard_normal((len(ids), TEACHER_DIM)).astype(np.float16)))
    return frames


def read_back(frames: list[PreparedFrame], seed: int = 0) -> tuple[list[PreparedFrame], float]:
    """The frames through their scene file (``methods.prepared_scenes``) and the seconds a frame took to read;
    groups drawn at random (what the k-means step would add)."""
    data = pack_scene(frames, keep_label_maps=False)
    clock = time.perf_counter()
    back = unpack_scene(data)
    seconds = (time.perf_counter() - clock) / len(frames)
    rng = np.random.default_rng(seed)
    for frame in back:
        frame.region_groups = rng.integers(0, GROUPS, len(frame.region_ids)).astype(np.int64)
    return back, seconds


def detection_scenes(count: int, points: int = 150_000, seed: int = 0) -> list[Scene]:
    """``count`` paper-shaped stand-in scenes (a room's surfaces, 12 boxes each)."""
    scenes = []
    for i in range(count):
        xyz, regions = synthetic_room(points, seed + 100 + i)
        rng = np.random.default_rng(seed + 100 + i)
        boxes = np.column_stack([rng.uniform(0, 5, (12, 3)), rng.uniform(0.3, 1.5, (12, 3)),
                                 np.zeros(12)]).astype(np.float32)
        scenes.append(Scene(scene_id=f"scene{i:04d}", points=xyz.numpy(), colors=rng.integers(0, 256, (points, 3),
                                                                                              dtype=np.uint8),
                            semantic=(regions.numpy() % 18).astype(np.int32), instance=regions.numpy().astype(np.int32),
                            boxes=boxes, box_labels=rng.integers(0, 18, 12).astype(np.int32),
                            box_instance=np.arange(1, 13, dtype=np.int32)))
    return scenes


def per_sample_ms(dataset, collate_fn, batch: int, repeats: int, finish=None) -> tuple[float, float]:
    """(median ms a sample for ``dataset[i]`` plus its share of the collation, median ms a sample of ``finish``)."""
    worker, device = [], []
    for r in range(repeats):
        dataset.epoch = r
        clock = time.perf_counter()
        items = [dataset[i] for i in range(batch)]
        batched = collate_fn(items)
        worker.append((time.perf_counter() - clock) / batch * 1e3)
        if finish is not None:
            clock = time.perf_counter()
            finish(batched)
            device.append((time.perf_counter() - clock) / batch * 1e3)
    return statistics.median(worker), statistics.median(device) if device else math.nan


def tokenizer_ms(tokenizer, inputs: list[tuple[torch.Tensor, torch.Tensor | None]], repeats: int) -> float:
    """Median ms a sample of the per-sample tokenizer."""
    times = []
    for r in range(repeats):
        clock = time.perf_counter()
        for i, (xyz, regions) in enumerate(inputs):
            tokenizer(xyz, regions, seed=r * 1000 + i)
        times.append((time.perf_counter() - clock) / len(inputs) * 1e3)
    return statistics.median(times)


def step_share(frames: list[PreparedFrame], batch: int, steps: int, workers: int, on_device: bool,
               shapes: Shapes = PAPER) -> dict:
    """A real pretraining loop (Stage 1, the paper's encoder) over the frames: share of its time per phase."""
    timing.reset()
    data = TokenizedFrames(frames[: batch * steps], SamGuidedTokenizer(*shapes.frame_tokens), seed=0)
    module = RegionDistillation(encoder=EncoderSpec()).build(TEACHER_DIM, np.full(GROUPS, 1.0 / GROUPS))
    schedule = TrainSchedule(epochs=1, batch_size=batch, num_workers=workers, device="cpu",
                             device_tokenization=on_device, warmup_epochs=0)
    with tempfile.TemporaryDirectory() as folder:
        clock = time.perf_counter()
        train(module, data, collate, schedule, pathlib.Path(folder) / "checkpoint.pt", seed=0, name="bench")
        wall = time.perf_counter() - clock
    phases = {timing.split_kind(kind)[1]: seconds for kind, (seconds, _) in timing.totals().items()
              if kind.startswith("bench" + timing.PHASE_SEPARATOR)}
    step = sum(phases.values())
    return {"wall": wall, "step_s": step / steps, "data": phases.get("data", 0.0) / step,
            "tokenize": phases.get("tokenize", 0.0) / step}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.perf datapath", description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="samples a batch (3DETR: 8 per GPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", type=int, default=32, help="stand-in pretraining frames (one scene file)")
    parser.add_argument("--steps", type=int, default=6, help="training steps of the step-share rows (0 = skip)")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers of the step-share rows")
    parser.add_argument("--tiny", action="store_true", help="small shapes (a smoke test of the benchmark itself)")
    args = parser.parse_args(argv)
    shapes = TINY if args.tiny else PAPER
    torch.set_num_threads(1)
    frames, load_ms = read_back(pretraining_frames(max(args.frames, args.batch), shapes.frame_points))
    load_ms *= 1e3
    g, k = shapes.frame_tokens
    print(f"shapes: pretraining {len(frames[0].xyz)} points -> {g} x {k} SAM-guided tokens, "
          f"{len(frames[0].region_ids)} regions x {TEACHER_DIM}; detection {shapes.scene_points} -> "
          f"{shapes.sampled_points} points -> {shapes.scene_tokens[0]} x {shapes.scene_tokens[1]} KNN tokens; "
          f"batch {args.batch}; one thread; ms a sample, median of {args.repeats}")
    rows = []
    pre = TokenizedFrames(frames, SamGuidedTokenizer(g, k), seed=0)
    before, _ = per_sample_ms(pre, collate, args.batch, args.repeats)
    finish = pre.tokens_on_device()
    after, batched = per_sample_ms(pre, collate, args.batch, args.repeats, finish)
    pre.on_device = False
    inputs = [(torch.from_numpy(f.xyz - f.xyz.mean(0)), torch.from_numpy(f.region.astype(np.int64)))
              for f in frames[: args.batch]]
    alone = tokenizer_ms(SamGuidedTokenizer(g, k), inputs, args.repeats)
    rows.append(("pretraining", load_ms, before, after, alone, batched))
    scenes = detection_scenes(args.batch, shapes.scene_points)
    det = SceneSamples(scenes, shapes.sampled_points, KnnTokenizer(*shapes.scene_tokens), seed=0, augment=True)
    before, _ = per_sample_ms(det, collate_scenes, args.batch, args.repeats)
    finish = det.tokens_on_device()
    after, batched = per_sample_ms(det, collate_scenes, args.batch, args.repeats, finish)
    det.on_device = False
    samples = [torch.from_numpy(det[i]["xyz"]) for i in range(args.batch)]
    alone = tokenizer_ms(KnnTokenizer(*shapes.scene_tokens), [(x, None) for x in samples], args.repeats)
    rows.append(("detection", 0.0, before, after, alone, batched))
    print(f"{'shape':<12} {'load':>7} {'CPU path':>9} {'device path':>12} {'after/before':>13} "
          f"{'tokenizer':>10} {'batched (CPU)':>14} {'batched/tokenizer':>18}")
    for name, load, before, after, alone, batched in rows:
        ratio = (after + load) / (before + load)
        print(f"{name:<12} {load:7.2f} {before + load:9.2f} {after + load:12.2f} {ratio:12.3f}x "
              f"{alone:10.2f} {batched:14.2f} {batched / alone:17.3f}x")
    worst = max(after + load for _, load, _, after, _, _ in rows)
    print(f"device path, worst shape: {worst:.2f} ms a sample (target <= 5 ms: {'met' if worst <= 5 else 'NOT met'})")
    if args.steps:
        for on_device in (False, True):
            share = step_share(frames, args.batch, args.steps, args.workers, on_device, shapes)
            where = "batched after the copy" if on_device else "per sample in the workers"
            print(f"step share, {args.workers} worker(s), tokens {where}: {share['step_s']:.2f} s a step, waiting for "
                  f"data {share['data']:.1%}, tokenizing {share['tokenize']:.1%} (loop {share['wall']:.1f} s)")
    return 0

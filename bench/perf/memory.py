"""``python -m bench.perf memory``: the memory of one training step, measured, beside ``methods.step_memory``'s estimate.

Each configuration runs in a fresh process: a segmentation fine-tuning step (``PointSegmenter`` with its
objective and AdamW, random inputs of the configured sizes, one forward, backward and optimizer step). The
measured figure is the growth of the process's peak resident memory over the step (``ru_maxrss`` minus the
resident memory just before it); the estimate is the sum of the spec's parts without the process's own
runtime, before and after the safety factor. The check before a run compares the estimate with safety
against what the machine has free, so the ratio estimate / measured should stay at or above 1.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

CONFIGS = [  # batch, points, tokens x group size, encoder width / depth / embed channels, head hidden
    {"batch": 2, "points": 40_000, "tokens": 256, "group": 32, "width": 64, "depth": 2, "embed": [32, 64, 128],
     "hidden": 64},
    {"batch": 2, "points": 200_000, "tokens": 256, "group": 32, "width": 64, "depth": 2, "embed": [32, 64, 128],
     "hidden": 64},
    {"batch": 2, "points": 40_000, "tokens": 1024, "group": 64, "width": 64, "depth": 2, "embed": [32, 64, 128],
     "hidden": 64},
    {"batch": 2, "points": 40_000, "tokens": 512, "group": 64, "width": 256, "depth": 3, "embed": [128, 256, 512],
     "hidden": 256},
    {"batch": 4, "points": 100_000, "tokens": 512, "group": 32, "width": 128, "depth": 6, "embed": [64, 128, 256],
     "hidden": 256},
]


def _spec(config: dict):
    from methods.encoder import EncoderSpec
    from methods.finetune import SegmentationFinetune
    from methods.tokenizers import KnnTokenizer
    from methods.train import TrainSchedule

    encoder = EncoderSpec(width=config["width"], depth=config["depth"], embed_channels=tuple(config["embed"]))
    return SegmentationFinetune(KnnTokenizer(config["tokens"], config["group"]), encoder, num_points=config["points"],
                                schedule=TrainSchedule(batch_size=config["batch"]), hidden=config["hidden"])


def _measure(config: dict) -> float:
    """Peak resident growth (bytes) of one segmentation step of ``config``, in this process."""
    import torch

    from methods.downstream.segmentation import PointSegmenter, SegmentationObjective

    torch.set_num_threads(1)
    spec = _spec(config)
    b, n, t, k = config["batch"], config["points"], config["tokens"], config["group"]
    model = PointSegmenter(spec.encoder.build(), 20, hidden=spec.hidden)
    objective = SegmentationObjective(model, ignore_index=-1)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-3, foreach=True)
    batch = {"rel": torch.randn(b, t, k, 3), "centers": torch.randn(b, t, 3), "valid": torch.ones(b, t, dtype=torch.bool),
             "points": torch.randn(b, n, 3), "colors": torch.rand(b, n, 3), "labels": torch.randint(0, 20, (b, n))}
    with open("/proc/self/status") as f:
        before = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
    objective(batch)["loss"].backward()
    optimizer.step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024.0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.perf memory", description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps({"measured": _measure(json.loads(args.child))}))
        return 0
    from datasets.types import DatasetInfo
    from methods.step_memory import RUNTIME_BYTES, SAFETY

    info = DatasetInfo(name="bench", seg_classes=tuple(f"c{i}" for i in range(20)), det_classes=("a",),
                       seg_to_det=(-1,) * 20, has_yaw=False)
    print("one segmentation fine-tuning step (20 classes), CPU, 1 thread: measured peak growth vs estimate")
    print(f"{'batch':>5} {'points':>8} {'tokens':>11} {'width':>5} {'depth':>5} {'hidden':>6} "
          f"{'measured':>9} {'estimate':>9} {'x safety':>9} {'ratio':>6}")
    for config in CONFIGS:
        out = subprocess.run([sys.executable, "-m", "bench.perf", "memory", "--child", json.dumps(config)],
                             capture_output=True, text=True, check=True)
        measured = json.loads(out.stdout.strip().splitlines()[-1])["measured"]
        raw = sum(_spec(config).step_memory(info).parts.values()) - RUNTIME_BYTES
        print(f"{config['batch']:>5} {config['points']:>8} {config['tokens']:>5} x {config['group']:<3} "
              f"{config['width']:>5} {config['depth']:>5} {config['hidden']:>6} {measured / 2**20:>7.0f} MB "
              f"{raw / 2**20:>6.0f} MB {SAFETY * raw / 2**20:>6.0f} MB {SAFETY * raw / measured:>6.2f}")
    return 0

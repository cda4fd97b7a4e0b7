"""Tokenizer speed: ours vs naive references timed in the same run, on 20k and 40k point frames.

    python -m bench.perf tokenizers [--real-root DIR] [--repeats 3] [--sizes 20000 40000] [--batch 8]

Frame: SUN RGB-D 000001 (280,961 points) subsampled with a fixed seed, regions from the classical
Felzenszwalb segmenter (not SAM); without the real data, a synthetic room-like cloud whose regions
are its surfaces. Rows (median ms over ``--repeats`` interleaved runs):
- KNN reference: the usual pure-PyTorch formulation (FPS loop with a vectorised distance update,
  then ``torch.cdist`` + ``topk``); ours must give identical tokens (same centres, same neighbour
  sets). The reference's ``cdist`` uses the direct-difference mode: the default matrix-product mode
  loses precision and picks a different K-th neighbour for ~0.5 % of tokens.
- SAM-guided ours vs our KNN at the same G x K, and vs a naive per-region Python loop of the same
  algorithm; both must give the same partition of points into tokens.
- Batched (``methods.tokenizers.batched``, a second table; ``--batch 0`` skips it): per frame, the CPU
  tokenizer vs ``tokenizer_inputs`` (the DataLoader worker's part) vs ``tokenize_batch`` on B frames
  (the frame with B seeds) on this machine's CPU, for the pretraining shape (20k points, 256 x 128,
  KNN and SAM-guided) and the detection shape (40k points, 2048 x 128, KNN without regions); the
  check compares the batched tokens with the CPU ones.
Everything runs on one thread (torch included), so the ratios measure the algorithms.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time
from typing import Callable

import numpy as np
import torch

from methods.tokenizers import (
    KnnTokenizer,
    SamGuidedTokenizer,
    TokenSet,
    allocate_tokens,
    collate_tokenizer_inputs,
    farthest_point_sampling,
    tokenize_batch,
    tokenizer_inputs,
)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_REAL_ROOT = REPO_ROOT.parent / "shared" / "data" / "real"
TOKEN_SHAPES = ((256, 128), (2048, 128))
# Batched table: (points, G, K, tokenizer, with regions) of pretraining and of detection (DESIGN 2.3).
BATCHED_SHAPES = ((20_000, 256, 128, KnnTokenizer, True), (20_000, 256, 128, SamGuidedTokenizer, True),
                  (40_000, 2048, 128, KnnTokenizer, False))


# ---------------------------------------------------------------- frames


def real_frames(root: pathlib.Path, sizes: list[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """SUN RGB-D 000001 subsampled to each size (seed 0), Felzenszwalb region id per point."""
    from datasets.sunrgbd import load_votenet_frame
    from methods.mask_sources import ClassicalMaskSource

    full = load_votenet_frame(root, "000001")
    labels = ClassicalMaskSource(scale=200, sigma=0.8, min_size=200).segment_image(full.image)
    regions = labels[full.pix[:, 0], full.pix[:, 1]].astype(np.int64)
    frames = {}
    for n in sizes:
        keep = np.sort(np.random.default_rng(0).choice(len(full.points), n, replace=False))
        frames[n] = torch.from_numpy(full.xyz[keep].copy()), torch.from_numpy(regions[keep])
    return frames


def synthetic_room(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Points on a 6x5x3 m room's floor, two walls and 12 boxes; region id = surface, 5 % in none."""
    rng = np.random.default_rng(seed)
    boxes = [(np.array([0.0, 0, 0]), np.array([6.0, 5, 0.01])), (np.array([0.0, 5, 0]), np.array([6.0, 0.01, 3])),
             (np.array([0.0, 0, 0]), np.array([0.01, 5, 3]))]
    for _ in range(12):
        size = rng.uniform([0.3, 0.3, 0.4], [1.5, 1.2, 1.2])
        boxes.append((rng.uniform([0, 0, 0], [6 - size[0], 5 - size[1], 0]), size))
    area = np.array([2 * (s[0] * s[1] + s[1] * s[2] + s[0] * s[2]) for _, s in boxes])
    surface = rng.choice(len(boxes), size=n, p=area / area.sum())
    lo = np.stack([boxes[s][0] for s in surface])
    size = np.stack([boxes[s][1] for s in surface])
    pts = lo + rng.random((n, 3)) * size
    face = rng.integers(0, 3, n)  # snap one coordinate to a face so points lie on box surfaces
    snap = lo[np.arange(n), face] + size[np.arange(n), face] * rng.integers(0, 2, n)
    pts[np.arange(n), face] = snap
    regions = np.where(rng.random(n) < 0.05, 0, surface + 1)
    return torch.from_numpy(pts.astype(np.float32)), torch.from_numpy(regions.astype(np.int64))


# ---------------------------------------------------------------- references


def reference_knn_tokens(xyz: torch.Tensor, g: int, k: int, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The usual pure-PyTorch KNN tokens: FPS loop, then cdist + topk. Returns (centre idx, (G,K) idx)."""
    n = xyz.shape[0]
    centre_idx = torch.empty(g, dtype=torch.long)
    dist = torch.full((n,), float("inf"), dtype=xyz.dtype)
    far = torch.tensor(start)
    for i in range(g):
        centre_idx[i] = far
        dist = torch.minimum(dist, ((xyz - xyz[far]) ** 2).sum(-1))
        far = torch.argmax(dist)
    d = torch.cdist(xyz[centre_idx], xyz, compute_mode="donot_use_mm_for_euclid_dist")
    return centre_idx, d.topk(k, largest=False).indices


def reference_sam_labels(xyz: np.ndarray, regions: np.ndarray, tok: SamGuidedTokenizer) -> np.ndarray:
    """Naive SAM-guided split, one region (and one token) at a time; per-point token label, -1 = none.

    Same algorithm and random draws as ``SamGuidedTokenizer``: budget, FPS seeds inside each region
    from the same first seed, nearest seed with ties to the earlier one. Then, per token, it draws
    K points like ours does (not the same random numbers: only the partition is compared).
    """
    rng = np.random.default_rng(tok.seed)
    ids, counts = np.unique(regions, return_counts=True)
    use = ids != 0 if tok.unassigned == "drop" else np.ones(len(ids), bool)
    alloc = np.zeros(len(ids), np.int64)
    alloc[use] = allocate_tokens(counts[use], tok.group_size, tok.num_tokens)
    kept = np.argsort(-alloc, kind="stable")[: np.count_nonzero(alloc)]
    first = np.minimum((rng.random(len(kept)) * counts[kept]).astype(np.int64), counts[kept] - 1)
    labels = np.full(len(xyz), -1, np.int64)
    next_token = 0
    for r, start in zip(kept, first):
        members = np.flatnonzero(regions == ids[r])
        pts = xyz[members].astype(np.float32)
        seeds = farthest_point_sampling(pts, int(alloc[r]), start=int(start))
        nearest = ((pts[:, None, :] - pts[seeds][None]) ** 2).sum(-1).argmin(1)
        for t in range(int(alloc[r])):
            own = members[nearest == t]
            replace = len(own) < tok.group_size
            rng.choice(own, tok.group_size, replace=replace)  # the per-token sampling work
            labels[own] = next_token + t
        next_token += int(alloc[r])
    return labels


# ---------------------------------------------------------------- checks


def knn_identity(ours, ref_centres: torch.Tensor, ref_index: torch.Tensor, xyz: torch.Tensor) -> str:
    """'identical', or how the neighbour sets differ (ties at the K-th distance are named as such)."""
    if not torch.equal(ours.centers, xyz[ref_centres]):
        return "DIFFERENT centres"
    a, b = ours.index.sort(-1).values, ref_index.sort(-1).values
    bad = torch.nonzero((a != b).any(-1)).flatten()
    if len(bad) == 0:
        return "identical"
    ties = 0
    for g in bad.tolist():  # only the rare mismatches: is each one a distance tie?
        d = torch.linalg.norm(xyz.double() - ours.centers[g].double(), dim=1)
        kth = d[ours.index[g]].max()
        diff = set(a[g].tolist()) ^ set(b[g].tolist())
        ties += bool(all(abs(float(d[i] - kth)) < 1e-6 for i in diff))
    return f"{len(bad)} token(s) differ, {ties} of them only by ties at the K-th distance"


def same_partition(tokens, ref_labels: np.ndarray) -> str:
    """Whether each of our tokens lies inside one reference token and no two share one."""
    valid = tokens.valid.numpy()
    lab = ref_labels[tokens.index.numpy()[valid]]
    one_each = (lab == lab[:, :1]).all() and (lab[:, 0] >= 0).all()
    distinct = len(np.unique(lab[:, 0])) == len(lab) == ref_labels.max() + 1
    return "same partition" if one_each and distinct else "DIFFERENT partition"


# ---------------------------------------------------------------- timing


def timed(fns: dict[str, Callable[[], object]], repeats: int) -> tuple[dict[str, float], dict[str, object]]:
    """Median ms of each function, runs interleaved so they share the machine's noise."""
    times = {name: [] for name in fns}
    results = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(v) for name, v in times.items()}, results


def bench_size(n: int, xyz: torch.Tensor, regions: torch.Tensor, repeats: int) -> list[tuple]:
    """Rows (points, GxK, method, ms, ratio text, check) for one frame size."""
    rows = []
    for g, k in TOKEN_SHAPES:
        knn, sam = KnnTokenizer(g, k, seed=0), SamGuidedTokenizer(g, k, seed=0)
        start = int(np.random.default_rng(0).integers(n))  # the start point ExactFPS draws for seed 0
        knn(xyz, regions)  # warm-up: first-call allocations and lazy imports stay out of the timings
        sam(xyz, regions)
        ms, out = timed({
            "ref_knn": lambda: reference_knn_tokens(xyz, g, k, start),
            "knn": lambda: knn(xyz, regions),
            "sam": lambda: sam(xyz, regions),
            "ref_sam": lambda: reference_sam_labels(xyz.numpy(), regions.numpy(), sam),
        }, repeats)
        shape = f"{g}x{k}"
        ident = knn_identity(out["knn"], *out["ref_knn"], xyz)
        part = same_partition(out["sam"], out["ref_sam"])
        rows += [
            (n, shape, "KNN reference (torch FPS loop + cdist/topk)", ms["ref_knn"], "", ""),
            (n, shape, "KNN ours (numpy FPS + cKDTree)", ms["knn"], f"{ms['ref_knn'] / ms['knn']:.1f}x vs ref", ident),
            (n, shape, "SAM-guided naive (loop over regions)", ms["ref_sam"], "", ""),
            (n, shape, "SAM-guided ours (vectorised)", ms["sam"],
             f"{ms['ref_sam'] / ms['sam']:.1f}x vs naive, {ms['knn'] / ms['sam']:.1f}x vs KNN ours", part),
        ]
    return rows


def batched_rows(frames: dict[int, tuple[torch.Tensor, torch.Tensor]], batch: int, repeats: int) -> list[tuple]:
    """Rows (points, GxK, tokenizer, CPU ms, inputs ms, batched ms, check), all per frame, B = ``batch``."""
    rows = []
    for n, g, k, make, with_regions in BATCHED_SHAPES:
        if n not in frames:
            continue
        tok = make(g, k, seed=0)
        xyz, regions = frames[n][0], frames[n][1] if with_regions else None
        seeds = list(range(batch))
        inputs = collate_tokenizer_inputs([tokenizer_inputs(tok, xyz, regions, seed=s) for s in seeds])
        tokenize_batch(tok, inputs)  # warm-up
        ms, out = timed({
            "cpu": lambda: TokenSet.stack([tok(xyz, regions, seed=s) for s in seeds]),
            "inputs": lambda: [tokenizer_inputs(tok, xyz, regions, seed=s) for s in seeds],
            "batched": lambda: tokenize_batch(tok, inputs),
        }, repeats)
        rows.append((n, f"{g}x{k}", type(tok).__name__, ms["cpu"] / batch, ms["inputs"] / batch,
                     ms["batched"] / batch, batched_identity(out["batched"], out["cpu"])))
    return rows


def batched_identity(ours: TokenSet, ref: TokenSet) -> str:
    """'identical', or what differs: KNN index rows (the tests check they are distance ties), SAM-guided
    centre coordinates (the tests check they are one float step apart, a float64 mean on a midpoint)."""
    differ = [f for f in ("valid", "region") if not torch.equal(getattr(ours, f), getattr(ref, f))]
    coords = int((ours.centers != ref.centers).sum())
    rows = int((ours.index != ref.index).any(-1).sum())
    differ += [f"{coords} centre coords"] if coords else []
    differ += [f"{rows} index rows"] if rows else []
    return ", ".join(differ) + " differ" if differ else "identical"


def main(argv: list[str]) -> int:
    """Run the benchmark and print the table; returns 0 (targets are reported, not enforced)."""
    parser = argparse.ArgumentParser(prog="python -m bench.perf tokenizers", description=__doc__.split("\n")[0])
    parser.add_argument("--real-root", type=pathlib.Path, default=DEFAULT_REAL_ROOT)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 40_000])
    parser.add_argument("--batch", type=int, default=8, help="frames per batched call (0: no batched table)")
    args = parser.parse_args(argv)
    # Single-threaded like our numpy/scipy code; on shared cores torch's thread pool otherwise
    # stalls whenever a sibling thread is descheduled and the reference times swing 10-50x.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> int:
    if args.real_root.is_dir():
        source = "SUN RGB-D 000001 subsampled, Felzenszwalb regions (classical segmenter, not SAM)"
        frames = real_frames(args.real_root, args.sizes)
    else:
        source = f"synthetic room (real data not found at {args.real_root})"
        frames = {n: synthetic_room(n) for n in args.sizes}
    print(f"frame: {source}; one thread, median of {args.repeats} interleaved runs")
    rows = []
    for n, (xyz, regions) in frames.items():
        print(f"  {n} points, {len(torch.unique(regions))} region ids", flush=True)
        rows += bench_size(n, xyz, regions, args.repeats)
    print(f"\n{'points':>7} {'GxK':>8}  {'method':<44} {'ms':>9}  {'ratio':<32} check")
    for n, shape, method, ms, ratio, check in rows:
        print(f"{n:>7} {shape:>8}  {method:<44} {ms:>9.1f}  {ratio:<32} {check}")
    knn_ratios = [r[3] for r in rows if r[2].startswith("KNN reference")]
    ours = [r[3] for r in rows if r[2].startswith("KNN ours")]
    sam = [r[3] for r in rows if r[2].startswith("SAM-guided ours")]
    print(f"\ntarget KNN >= 2x faster than reference: min {min(a / b for a, b in zip(knn_ratios, ours)):.1f}x")
    print(f"target SAM-guided >= 5x faster than KNN ours: min {min(a / b for a, b in zip(ours, sam)):.1f}x")
    if args.batch > 0:
        print(f"\nbatched on this CPU, B = {args.batch} (the frame with {args.batch} seeds); ms per frame")
        print(f"{'points':>7} {'GxK':>8}  {'tokenizer':<20} {'CPU path':>9} {'inputs':>8} {'batched':>8}  check")
        for n, shape, name, cpu, inputs, batched, check in batched_rows(frames, args.batch, args.repeats):
            print(f"{n:>7} {shape:>8}  {name:<20} {cpu:>9.1f} {inputs:>8.2f} {batched:>8.1f}  {check}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

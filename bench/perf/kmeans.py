"""``python -m bench.perf kmeans``: the re-weighting groups' k-means, fit and whole step.

Options: ``--rows R --dim C --groups K`` (the fit's shape), ``--frames F --capacity S`` (the groups step).

1. The fit, on stand-in region features of the paper's shape (200,000 x 768, K = 32; rows drawn around 64
   centres with noise, float32), one thread, each method in a fresh process: scipy's ``kmeans2`` (10 fixed
   iterations, k-means++, the harness before), the harness's fit (``methods.region_groups``: scikit-learn's
   ``KMeans``, Lloyd, to a tolerance) and ``MiniBatchKMeans``. Printed: seconds, iterations, inertia on all
   rows and peak resident memory, with the ratios against ``kmeans2``.
2. The whole groups step (``FramePreparation._groups``: stream the prepared scenes into the sample, fit,
   assign every region) over stand-in prepared scenes of 65 frames, 100 regions of ``--dim`` features and
   2,000 points each (features around 64 centres, as in 1.), at F and 4 F frames, each in a fresh process:
   the growth of peak resident memory over the step, which must not grow with the frames.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

METHODS = ("kmeans2", "harness", "minibatch")


def _features(rows: int, dim: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((64, dim)).astype(np.float32)
    return (centres[rng.integers(0, 64, rows)] + 0.5 * rng.standard_normal((rows, dim))).astype(np.float32)


def _inertia(data: np.ndarray, centroids: np.ndarray) -> float:
    total = 0.0
    for start in range(0, len(data), 20_000):
        x = data[start:start + 20_000]
        total += float(((x * x).sum(1)[:, None] - 2 * x @ centroids.T + (centroids * centroids).sum(1)).min(1).sum())
    return total


def _fit(method: str, rows: int, dim: int, k: int) -> dict:
    from scipy.cluster.vq import kmeans2
    from sklearn.cluster import MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    from methods.region_groups import cluster_region_features

    data = _features(rows, dim)
    clock = time.perf_counter()  # the imports above are not timed
    with threadpool_limits(limits=1):
        if method == "kmeans2":
            centroids, _ = kmeans2(data.astype(np.float64), k, iter=10, minit="++", seed=0)
            iterations = 10
        elif method == "harness":
            fit = cluster_region_features(data, k, seed=0)
            centroids, iterations = fit.centroids, fit.iterations
        else:
            fit = MiniBatchKMeans(n_clusters=k, n_init=1, batch_size=4096, random_state=0).fit(data)
            centroids, iterations = fit.cluster_centers_, int(fit.n_iter_)
    seconds = time.perf_counter() - clock
    return {"seconds": seconds, "iterations": iterations, "inertia": _inertia(data, np.asarray(centroids, np.float32)),
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


class _StandInScenes:
    """The two methods of a dataset the prepared scenes' files are named by."""

    class info:
        name = "standin"

    def __init__(self, scenes: int):
        self.scenes = scenes

    def num_scenes(self, split: str) -> int:
        return self.scenes

    def scene_id(self, split: str, index: int) -> str:
        return f"standin-{index:05d}"


def _groups_step(scenes: int, dim: int, k: int, capacity: int) -> dict:
    import pathlib

    from methods.mask_sources import RenderedMaskSource
    from methods.preparation import FramePreparation, PreparedSplit
    from methods.prepared_scenes import PreparedFrame, pack_scene
    from methods.teachers import SimulatedTeacher

    rng, per_scene = np.random.default_rng(0), 65
    centres = rng.normal(size=(64, dim))  # regions drawn around centres as in the fit above: a k-means that converges
    dataset = _StandInScenes(scenes)
    preparation = FramePreparation(RenderedMaskSource(), SimulatedTeacher(dim=dim), num_groups=k,
                                   max_kmeans_regions=capacity)
    with tempfile.TemporaryDirectory() as folder:
        manifests = []
        for index in range(dataset.scenes):
            scene = [PreparedFrame(f"{dataset.scene_id('x', index)}-{f}", rng.normal(size=(2000, 3)).astype(np.float32),
                                   np.zeros((2000, 3), np.uint8), rng.integers(0, 101, 2000).astype(np.int32),
                                   np.arange(1, 101, dtype=np.int32),
                                   (centres[rng.integers(0, 64, 100)] + 0.5 * rng.normal(size=(100, dim))
                                    ).astype(np.float16)) for f in range(per_scene)]
            manifest = {"frames": [f.frame_id for f in scene], "points": [2000] * per_scene, "skipped": {}}
            data = pack_scene(scene, keep_label_maps=False)
            preparation._scene_step(dataset, "x", index, pathlib.Path(folder)).save(data, 0.0, extra=manifest)
            manifests.append((dataset.scene_id("x", index), {**manifest, "bytes": len(data)}))
        del scene, data
        split = PreparedSplit(folder, manifests, None, preparation, dataset, "x")
        before = _resident_mb()
        clock = time.perf_counter()
        groups = preparation._groups(split)
        seconds = time.perf_counter() - clock
    return {"frames": dataset.scenes * per_scene, "regions": int(groups["regions"]), "seconds": seconds,
            "growth_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before,
            "iterations": int(groups["iterations"])}


def _resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _in_fresh_process(*argv: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "bench.perf.kmeans", "--one", *argv], capture_output=True, text=True,
                            check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.perf kmeans", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--groups", type=int, default=32)
    parser.add_argument("--frames", type=int, default=2_600, help="frames of the groups step's 1x (then 4x), in "
                        "scenes of 65 frames with 100 regions each")
    parser.add_argument("--capacity", type=int, default=200_000, help="the groups' k-means sample (max_kmeans_regions)")
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:  # inside a fresh process
        what, value = args.one[0], int(args.one[1])
        result = (_groups_step(value, args.dim, args.groups, args.capacity) if what == "groups"
                  else _fit(what, args.rows, args.dim, args.groups))
        print(json.dumps(result))
        return 0
    shape = f"--rows={args.rows} --dim={args.dim} --groups={args.groups}".split()
    print(f"k-means of {args.rows} x {args.dim} stand-in features into {args.groups} groups, one thread")
    fits = {m: _in_fresh_process(m, "0", *shape) for m in METHODS}
    reference = fits["kmeans2"]
    for method, fit in fits.items():
        print(f"  {method:9s} {fit['seconds']:7.1f} s ({fit['seconds'] / reference['seconds']:.2f}x)  "
              f"{fit['iterations']:3d} iterations  inertia {fit['inertia']:.4e} "
              f"({fit['inertia'] / reference['inertia']:.4f}x)  peak {fit['peak_mb']:.0f} MB")
    print(f"groups step over stand-in prepared scenes ({args.dim}-d, K = {args.groups}, sample of {args.capacity} "
          "regions)")
    scenes = max(1, round(args.frames / 65))
    steps = [_in_fresh_process("groups", str(n), f"--dim={args.dim}", f"--groups={args.groups}",
                               f"--capacity={args.capacity}") for n in (scenes, 4 * scenes)]
    for step in steps:
        print(f"  {step['frames']:6d} frames, {step['regions']} regions: {step['seconds']:.1f} s, "
              f"{step['iterations']} iterations, peak memory +{step['growth_mb']:.0f} MB")
    print(f"  4x the frames / 1x: {steps[1]['growth_mb'] / steps[0]['growth_mb']:.2f}x the memory")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

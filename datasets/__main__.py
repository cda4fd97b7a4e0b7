"""``python -m datasets SUBCOMMAND``: tools for looking at the datasets.

    python -m datasets show --out DIR [--seed 0] [--split {train,val,pretrain}] [--index 0] [--hw 120 160] [--frames 4]
    python -m datasets verify --kind {synthetic,s3dis,scannet,sunrgbd} [--root DIR] [--layout {auto,bin,raw,export,votenet,mmdet3d}] [--limit N>=1] [--json]
        [--sens-root DIR [--sens-every 25] [--alignment-root DIR]]   # scannet: check the .sens frames too
    python -m datasets export --layout {scannet-raw,sunrgbd-votenet} --out DIR [--seed 0] [--num-train 24] [--num-val 8]
                              [--frames 4] [--hw 120 160] [--frame-every 1]
    python -m datasets counts [--seed 0] [--split val] [--sizes 8 16 24 32] [--frames 4] [--hw 120 160]

``show`` generates one scene of the simulated indoor benchmark and writes a picture of each frame
and a top view of the fused scene to DIR, printing their paths (``pretrain`` scenes are frames only:
no top view).

``verify`` checks a dataset root (``datasets/verify.py``): it prints the layout and folder it found
(ScanNet: a layout's folder or the VoteNet / mmdetection3d dataset root holding it), every scene found
(points, boxes, classes present), the counts per split and every problem, as text or as one JSON object
(``--json``), and exits with status 1 when it found any problem, finding no scene at all included.

``export`` writes the simulated benchmark (``SyntheticIndoor`` with these settings) in a real dataset's
on-disk layout (``datasets/synthetic/export.py``): ``scannet-raw`` = ScanNet's ``scans/`` with the label map,
split lists and ``.sens`` exports (``sens/<scene>/``); ``sunrgbd-votenet`` = a ``sunrgbd_trainval/`` folder
with one sample per frame. DIR must be new or empty; the export is written to ``DIR.partial`` and renamed
when complete. It prints DIR and the ``verify`` command that checks it.

``counts`` prints a table of ground-truth boxes per detection class in the first n scenes of a split of
the simulated benchmark, for each n in ``--sizes``: how large a val split must be for the rare classes to
occur several times (``datasets/class_counts.py``).

Errors are one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

from datasets.verify import VERIFIERS


def _show(args: argparse.Namespace) -> int:
    from datasets.synthetic import SyntheticIndoor
    from datasets.visualize import save_frame_figure, save_scene_topview

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Scenes do not depend on the split sizes, so any size that includes the index gives the same scene.
    n = args.index + 1
    ds = SyntheticIndoor(seed=args.seed, num_train=n, num_val=n, num_pretrain=n, frames_per_scene=args.frames,
                         image_hw=tuple(args.hw))
    scene = ds.scene(args.split, args.index)
    paths = []
    for frame in scene.frames:
        paths.append(out / f"{frame.frame_id}.png")
        save_frame_figure(frame, paths[-1])
    if args.split not in ds.unlabelled_splits:
        paths.append(out / f"{scene.scene_id}-topview.png")
        save_scene_topview(scene, ds.info, paths[-1])
    for path in paths:
        print(path)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from datasets.verify import format_report

    if args.limit is not None and args.limit < 1:  # checking no scene must not read as "no problems found"
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    root = None if args.root is None else pathlib.Path(args.root)
    options = {}
    if args.sens_root is not None:
        if args.kind != "scannet":
            raise ValueError("--sens-root is for --kind scannet")
        from datasets.scannet import SensFrames

        alignment = args.alignment_root or (root / "scans" if root is not None and (root / "scans").is_dir() else None)
        options["frames"] = SensFrames(args.sens_root, every=args.sens_every, alignment_root=alignment)
    report = VERIFIERS[args.kind](root, layout=args.layout, limit=args.limit, **options)
    print(json.dumps(report) if args.json else format_report(report))
    return 0 if report["ok"] else 1


def _export(args: argparse.Namespace) -> int:
    from datasets.synthetic import SyntheticIndoor
    from datasets.synthetic.export import export_scannet_raw, export_sunrgbd_votenet

    ds = SyntheticIndoor(seed=args.seed, num_train=args.num_train, num_val=args.num_val,
                         frames_per_scene=args.frames, image_hw=tuple(args.hw))
    if args.layout == "scannet-raw":
        out = export_scannet_raw(ds, args.out, frame_every=args.frame_every)
        check = f"python -m datasets verify --kind scannet --root {out}"
    else:
        out = export_sunrgbd_votenet(ds, args.out, frame_every=args.frame_every)
        check = f"python -m datasets verify --kind sunrgbd --root {out / 'sunrgbd_trainval'}"
    print(out)
    print(f"check it with: {check}")
    return 0


def _counts(args: argparse.Namespace) -> int:
    from datasets.class_counts import box_counts_by_size
    from datasets.synthetic import SyntheticIndoor

    n = max(args.sizes)
    ds = SyntheticIndoor(seed=args.seed, num_train=n, num_val=n, frames_per_scene=args.frames, image_hw=tuple(args.hw))
    if args.split in ds.unlabelled_splits:
        raise ValueError(f"split {args.split!r} is unlabelled (frames only): it has no boxes to count")
    counts = box_counts_by_size(ds, args.split, args.sizes)
    print(f"boxes per class in the first n {args.split} scenes (seed {args.seed}, simulation)")
    print(f"{'n':<13}" + "".join(f"{size:>6}" for size in args.sizes))
    for name in ds.info.det_classes:
        print(f"{name:<13}" + "".join(f"{counts[size][name]:>6}" for size in args.sizes))
    print(f"{'all':<13}" + "".join(f"{sum(counts[size].values()):>6}" for size in args.sizes))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m datasets", description="Look at the benchmark datasets.")
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="render one simulated scene: frame pictures and a top view (PNG)")
    show.add_argument("--out", required=True, help="output folder (created if missing)")
    show.add_argument("--seed", type=int, default=0)
    show.add_argument("--split", default="train", help="train, val or pretrain (unlabelled, frames only)")
    show.add_argument("--index", type=int, default=0, help="scene index within the split (>= 0)")
    show.add_argument("--hw", type=int, nargs=2, default=(120, 160), metavar=("H", "W"), help="image size")
    show.add_argument("--frames", type=int, default=4, help="frames per scene")
    show.set_defaults(run=_show)

    verify = sub.add_parser("verify", help="check a dataset root: scenes, points, boxes, classes and problems")
    verify.add_argument("--kind", required=True, choices=sorted(VERIFIERS), help="dataset reader")
    verify.add_argument("--root", help="dataset root folder (not used by synthetic)")
    verify.add_argument("--layout", default="auto",
                        help="on-disk layout; s3dis: auto, bin (mmdet3d) or raw; scannet: auto, export, raw or bin; "
                             "sunrgbd: auto, votenet or mmdet3d")
    verify.add_argument("--limit", type=int, default=None, help="check at most N scenes per split")
    verify.add_argument("--json", action="store_true", help="print the report as one JSON object")
    verify.add_argument("--sens-root", help="scannet: also load and check every frame of SensReader exports "
                                            "(<sens-root>/<scene>/color, depth, pose, intrinsic)")
    verify.add_argument("--sens-every", type=int, default=25, help="scannet: keep one frame in K (paper: 25)")
    verify.add_argument("--alignment-root", help="scannet: folder with <scene>/<scene>.txt (default: <root>/scans "
                                                 "for the raw layout, else --sens-root)")
    verify.set_defaults(run=_verify)

    export = sub.add_parser("export", help="write the simulated benchmark in the ScanNet raw or SUN RGB-D layout")
    export.add_argument("--layout", required=True, choices=("scannet-raw", "sunrgbd-votenet"), help="on-disk layout")
    export.add_argument("--out", required=True, help="output folder (must be new or empty)")
    export.add_argument("--seed", type=int, default=0)
    export.add_argument("--num-train", type=int, default=24, help="train scenes")
    export.add_argument("--num-val", type=int, default=8, help="val scenes")
    export.add_argument("--frames", type=int, default=4, help="frames per scene")
    export.add_argument("--hw", type=int, nargs=2, default=(120, 160), metavar=("H", "W"), help="image size")
    export.add_argument("--frame-every", type=int, default=1, help="export frames 0, k, 2k, ... of each scene")
    export.set_defaults(run=_export)

    counts = sub.add_parser("counts", help="boxes per class of the simulated benchmark for several split sizes")
    counts.add_argument("--seed", type=int, default=0)
    counts.add_argument("--split", default="val", help="train or val")
    counts.add_argument("--sizes", type=int, nargs="+", default=(8, 16, 24, 32), help="split sizes (scenes)")
    counts.add_argument("--frames", type=int, default=4, help="frames per scene")
    counts.add_argument("--hw", type=int, nargs=2, default=(120, 160), metavar=("H", "W"), help="image size")
    counts.set_defaults(run=_counts)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 on any error, reported as one line on stderr)."""
    args = _parser().parse_args(argv)
    if getattr(args, "index", 0) < 0:
        print(f"error: --index must be >= 0, got {args.index}", file=sys.stderr)
        return 2
    try:
        return args.run(args)
    except (OSError, ValueError, IndexError) as exc:
        message = " ".join(str(exc).split())
        print(f"error: {args.command}: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

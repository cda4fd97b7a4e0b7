"""``python -m datasets SUBCOMMAND``: tools for looking at the datasets.

    python -m datasets show --out DIR [--seed 0] [--split train] [--index 0] [--hw 120 160] [--frames 4]

``show`` generates one scene of the simulated indoor benchmark and writes a picture of each frame
and a top view of the fused scene to DIR, printing their paths. Errors are one line on stderr and
exit status 2.
"""
from __future__ import annotations

import argparse
import pathlib
import sys


def _show(args: argparse.Namespace) -> list[pathlib.Path]:
    from datasets.synthetic import SyntheticIndoor
    from datasets.visualize import save_frame_figure, save_scene_topview

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Scenes do not depend on the split sizes, so any size that includes the index gives the same scene.
    n = args.index + 1
    ds = SyntheticIndoor(seed=args.seed, num_train=n, num_val=n, frames_per_scene=args.frames, image_hw=tuple(args.hw))
    scene = ds.scene(args.split, args.index)
    paths = []
    for frame in scene.frames:
        paths.append(out / f"{frame.frame_id}.png")
        save_frame_figure(frame, paths[-1])
    paths.append(out / f"{scene.scene_id}-topview.png")
    save_scene_topview(scene, ds.info, paths[-1])
    return paths


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m datasets", description="Look at the benchmark datasets.")
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="render one simulated scene: frame pictures and a top view (PNG)")
    show.add_argument("--out", required=True, help="output folder (created if missing)")
    show.add_argument("--seed", type=int, default=0)
    show.add_argument("--split", default="train")
    show.add_argument("--index", type=int, default=0, help="scene index within the split (>= 0)")
    show.add_argument("--hw", type=int, nargs=2, default=(120, 160), metavar=("H", "W"), help="image size")
    show.add_argument("--frames", type=int, default=4, help="frames per scene")
    show.set_defaults(run=_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 on any error, reported as one line on stderr)."""
    args = _parser().parse_args(argv)
    if getattr(args, "index", 0) < 0:
        print(f"error: --index must be >= 0, got {args.index}", file=sys.stderr)
        return 2
    try:
        for path in args.run(args):
            print(path)
    except (OSError, ValueError, IndexError) as exc:
        message = " ".join(str(exc).split())
        print(f"error: {args.command}: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

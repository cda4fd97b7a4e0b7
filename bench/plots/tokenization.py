"""Figure 1 of the paper, for any frame: points on the image coloured by KNN token vs SAM-guided token.

    python -m bench.plots.tokenization --out DIR [--figure sunrgbd|synthetic] [--real-root ../shared/data/real]

Figures: SUN RGB-D frame 000001 with regions from the classical Felzenszwalb segmenter (a stand-in for
SAM masks, and labelled so), and a frame of the synthetic benchmark with simulated SAM masks.
``plot_tokenization`` itself is generic: any image, point pixels, region ids and two ``TokenSet``s.
"""
from __future__ import annotations

import argparse
import colorsys
import pathlib
import sys

import numpy as np
import torch
from matplotlib.figure import Figure

from methods.tokenizers import KnnTokenizer, SamGuidedTokenizer, TokenSet

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_REAL_ROOT = REPO_ROOT.parent / "shared" / "data" / "real"


def id_colours(ids: np.ndarray) -> np.ndarray:
    """(N, 3) RGB in [0, 1] per id: golden-ratio hues so consecutive ids look different."""
    ids = np.asarray(ids, dtype=np.int64)
    table_ids, inverse = np.unique(ids, return_inverse=True)
    hues = (table_ids * 0.618034) % 1.0
    sat = 0.55 + 0.2 * (table_ids % 3)  # vary saturation too: a few hundred hues are close
    table = np.array([colorsys.hsv_to_rgb(h, s, 0.95) for h, s in zip(hues, sat)]).reshape(-1, 3)
    return table[inverse.reshape(-1)]


def point_owner(tokens: TokenSet, num_points: int) -> np.ndarray:
    """(N,) a token holding each point, -1 if none. A point in several (KNN) tokens shows one of them."""
    owner = np.full(num_points, -1, dtype=np.int64)
    valid = tokens.valid.cpu().numpy()
    index = tokens.index.cpu().numpy()[valid]
    owner[index.ravel()] = np.repeat(np.flatnonzero(valid), index.shape[1])
    return owner


def mixing_fraction(tokens: TokenSet) -> float:
    """Fraction of valid tokens whose points fall in more than one region (region 0 not counted)."""
    mix = tokens.region_mix()[tokens.valid][:, 1:]
    return float(((mix > 0).sum(-1) > 1).float().mean()) if len(mix) else 0.0


def _panel(ax, image: np.ndarray, pix: np.ndarray, ids: np.ndarray, title: str) -> None:
    """Faded image, points in no token/region as small light dots, the others coloured by id."""
    ax.imshow((image.astype(np.float32) * 0.35 + 255 * 0.4).astype(np.uint8))
    none = ids < 0
    ax.scatter(pix[none, 1], pix[none, 0], c=[(0.85, 0.85, 0.85)], s=0.4, linewidths=0, marker="s")
    ax.scatter(pix[~none, 1], pix[~none, 0], c=id_colours(ids[~none]), s=1.2, linewidths=0, marker="s")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def plot_tokenization(
    image: np.ndarray,
    pix: np.ndarray,
    region_ids: np.ndarray | torch.Tensor,
    knn_tokens: TokenSet,
    sam_tokens: TokenSet,
    path: str | pathlib.Path,
    title: str = "KNN tokens vs SAM-guided tokens",
    region_source: str = "regions",
) -> pathlib.Path:
    """Write a 3-panel PNG: points coloured by KNN token, by SAM-guided token, and by region.

    Light grey dots are points in no token (KNN tokens overlap and miss points; SAM-guided tokens
    of more than K points keep K of them) or in no region.

    ``image`` (H, W, 3) uint8; ``pix`` (N, 2) 0-based (row, col) of each point; ``region_ids`` (N,)
    (0 = no region); both token sets index the same N points. ``region_source`` names the mask
    source in the third panel. Returns the path written.
    """
    pix = np.asarray(pix)
    regions = np.asarray(region_ids)
    n = len(pix)
    knn_owner, sam_owner = point_owner(knn_tokens, n), point_owner(sam_tokens, n)
    panels = [
        (knn_owner, f"KNN tokens ({int(knn_tokens.valid.sum())} x {knn_tokens.group_size} points)\n"
         f"{mixing_fraction(knn_tokens):.0%} mix regions, cover {np.mean(knn_owner >= 0):.0%} of the points"),
        (sam_owner, f"SAM-guided tokens ({int(sam_tokens.valid.sum())} x {sam_tokens.group_size} points)\n"
         f"{mixing_fraction(sam_tokens):.0%} mix regions, cover {np.mean(sam_owner >= 0):.0%} of the points"),
        (np.where(regions > 0, regions, -1), f"{region_source}\n{len(np.unique(regions[regions > 0]))} regions"),
    ]
    height, width = image.shape[:2]
    fig = Figure(figsize=(3 * 4.2, 4.2 * height / width + 0.9), dpi=150, layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, (ids, panel_title) in zip(axes, panels):
        _panel(ax, image, pix, ids, panel_title)
    fig.suptitle(title, fontsize=10)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def sunrgbd_figure(out: pathlib.Path, real_root: pathlib.Path, points: int) -> pathlib.Path:
    """SUN RGB-D 000001 (real) with regions from the classical Felzenszwalb segmenter, labelled so."""
    from datasets.sunrgbd import load_votenet_frame
    from methods.mask_sources import ClassicalMaskSource

    if not real_root.is_dir():
        raise FileNotFoundError(f"real data folder not found: {real_root} (pass --real-root)")
    frame = load_votenet_frame(real_root, "000001", num_points=points, seed=0)
    labels = ClassicalMaskSource(scale=200, sigma=0.8, min_size=200).segment_image(frame.image)
    regions = torch.from_numpy(labels[frame.pix[:, 0], frame.pix[:, 1]].astype(np.int64))
    return _draw(frame.image, frame.pix, frame.xyz, regions, out / "tokenization_sunrgbd_000001.png",
                 f"SUN RGB-D 000001, {len(regions):,} points - regions from a classical segmenter "
                 "(Felzenszwalb), not SAM", "Felzenszwalb regions")


def synthetic_figure(out: pathlib.Path, real_root: pathlib.Path, points: int) -> pathlib.Path:
    """A frame of the synthetic benchmark (a simulation) with simulated SAM masks (rendered instances)."""
    from datasets.geometry import backproject
    from datasets.synthetic import SyntheticIndoor
    from methods.mask_sources import RenderedMaskSource

    frame = SyntheticIndoor(image_hw=(240, 320)).scene("train", 0).frames[0]
    labels = RenderedMaskSource(split_prob=0.1, merge_prob=0.05)(frame)
    xyz, pix = backproject(frame.depth, frame.intrinsics, frame.pose)
    keep = np.sort(np.random.default_rng(0).choice(len(xyz), min(points, len(xyz)), replace=False))
    xyz, pix = xyz[keep], pix[keep]
    regions = torch.from_numpy(labels[pix[:, 0], pix[:, 1]].astype(np.int64))
    return _draw(frame.rgb, pix, xyz, regions, out / "tokenization_synthetic.png",
                 f"synthetic benchmark (simulation) {frame.frame_id}, {len(xyz):,} points - simulated SAM masks",
                 "simulated SAM masks")


def _draw(image, pix, xyz, regions, path, title, region_source) -> pathlib.Path:
    xyz = torch.from_numpy(np.ascontiguousarray(xyz, dtype=np.float32))
    knn = KnnTokenizer(num_tokens=256, group_size=128)(xyz, regions)
    sam = SamGuidedTokenizer(num_tokens=256, group_size=128)(xyz, regions)
    return plot_tokenization(image, pix, regions, knn, sam, path, title=title, region_source=region_source)


FIGURES = {"sunrgbd": sunrgbd_figure, "synthetic": synthetic_figure}


def main(argv: list[str]) -> int:
    """Draw the requested figures into ``--out``; a one-line error where the real data is missing."""
    parser = argparse.ArgumentParser(prog="python -m bench.plots.tokenization", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, required=True, help="output folder")
    parser.add_argument("--figure", action="append", choices=sorted(FIGURES),
                        help="which figure (repeatable; default: all)")
    parser.add_argument("--real-root", type=pathlib.Path, default=DEFAULT_REAL_ROOT)
    parser.add_argument("--points", type=int, default=20_000)
    args = parser.parse_args(argv)
    for name in args.figure or sorted(FIGURES):
        try:
            print(FIGURES[name](args.out, args.real_root, args.points))
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

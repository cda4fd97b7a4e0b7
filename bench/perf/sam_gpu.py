"""``python -m bench.perf sam_gpu [--model-type vit_h] [--checkpoint FILE] [--frames 4]``: SAM's automatic masks on
a GPU, image encoder in float32 and in bf16, at the paper's frame size; the check for a session with a GPU.

Bridge3D's settings (``gin/prepare/real.gin``: 32 points a side, one crop layer, crop points downscaled by 2,
pred_iou 0.86, stability 0.92; small-region removal off, so OpenCV is not needed) on a 640 x 480 stand-in
frame (a synthetic room). Without ``--checkpoint`` the model is the registry's architecture with random
weights (nothing is downloaded): the encoder's and the decoder's seconds are those of the real model, the
masks (and so the post-processing) are not. Printed per setting: seconds a frame in the image encoder, the
prompt decoding and the post-processing (``methods.sam_phases``), the first frame left out (CUDA warm-up),
the estimate for 78,000 frames on one GPU, and how far bf16's masks are from float32's (pixels whose
label partition differs). Needs CUDA, segment_anything and torchvision.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

import numpy as np

PAPER_FRAMES = 78_000


def _frame():
    from datasets.synthetic import SyntheticIndoor

    return SyntheticIndoor(num_train=1, num_val=1, frames_per_scene=1, image_hw=(480, 640)).scene("train", 0).frames[0]


def _disagreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of pixels whose pair (label in a, label in b) is not the most common pair of their a-label."""
    pairs = a.astype(np.int64) * (int(b.max()) + 1) + b
    values, counts = np.unique(pairs, return_counts=True)
    best: dict[int, int] = {}
    for value, count in zip(values, counts):
        label = int(value) // (int(b.max()) + 1)
        best[label] = max(best.get(label, 0), int(count))
    return 1.0 - sum(best.values()) / a.size


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.perf sam_gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", default="vit_h")
    parser.add_argument("--checkpoint", help="a SAM state dict; default: random weights of --model-type")
    parser.add_argument("--frames", type=int, default=4)
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("sam_gpu: no CUDA device here; this check runs on a GPU machine", file=sys.stderr)
        return 2
    from methods.mask_sources import SamMaskSource

    frame = _frame()
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = args.checkpoint
        if checkpoint is None:
            from segment_anything import sam_model_registry

            torch.manual_seed(0)
            checkpoint = str(pathlib.Path(folder) / f"sam_{args.model_type}_random.pth")
            torch.save(sam_model_registry[args.model_type](checkpoint=None).state_dict(), checkpoint)
        print(f"SAM {args.model_type} ({'weights ' + args.checkpoint if args.checkpoint else 'random weights'}) on "
              f"{torch.cuda.get_device_name()}, a 640 x 480 frame, Bridge3D's settings")
        maps = {}
        for bf16 in (False, True):
            source = SamMaskSource(checkpoint, model_type=args.model_type, device="cuda", min_mask_region_area=0,
                                   crop_n_points_downscale_factor=2, encoder_bf16=bf16)
            parts, totals = [], []
            for k in range(args.frames):
                clock = time.perf_counter()
                maps[bf16] = source(frame)
                totals.append(time.perf_counter() - clock)
                parts.append(source.frame_phases())
            kept = parts[1:] or parts
            mean = {p: sum(x[p] for x in kept) / len(kept) for p in kept[0]}
            seconds = sum(totals[1:] or totals) / len(kept)
            print(f"  encoder {'bf16' if bf16 else 'fp32'}: {seconds:.2f} s a frame ("
                  + ", ".join(f"{p.removeprefix('masks_')} {v:.2f}" for p, v in mean.items())
                  + f"); {len(np.unique(maps[bf16])) - 1} masks; 78,000 frames: "
                  f"{seconds * PAPER_FRAMES / 3600:.0f} GPU-hours (estimated from these frames)")
        print(f"  bf16 against fp32: {_disagreement(maps[False], maps[True]) * 100:.2f} % of pixels in another mask")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

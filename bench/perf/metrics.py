"""``python -m bench.perf metrics``: AP25 / AP50 of a ScanNet-sized split, against a per-pair loop.

The split is synthetic and deterministic (``--seed``): 300 scenes, 18 classes, 256 predictions and
20-40 GT boxes per scene (half the predictions are jittered copies of GT boxes, half are random
boxes; scores are rounded to 3 decimals so that ties occur). It is timed twice: axis-aligned (G, 6)
boxes and yaw-rotated (G, 7) boxes.

The reference is VoteNet's ``eval_det_cls`` structure (a Python loop over ranked detections and
their GTs, one scalar IoU per pair, recomputed per threshold) with a scalar Sutherland-Hodgman
IoU. It runs on the first ``--ref-scenes`` scenes only; its time is extrapolated linearly to the
whole split, and its AP / recall must agree with ``evaluate_detection`` on those scenes.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np

from bench.metrics import evaluate_detection

THRESHOLDS = (0.25, 0.5)


def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 7) boxes anywhere in an 8 m x 8 m room, 0.3-2 m extents, any yaw."""
    centres = rng.uniform([0, 0, 0.5], [8, 8, 2.5], (n, 3))
    return np.c_[centres, rng.uniform(0.3, 2.0, (n, 3)), rng.uniform(-np.pi, np.pi, n)]


def make_scenes(seed: int, num_scenes: int, num_classes: int, num_preds: int, rotated: bool) -> list[dict]:
    """A deterministic synthetic split (see the module docstring)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, num_classes + 1)  # long-tailed classes
    cols = 7 if rotated else 6
    scenes = []
    for _ in range(num_scenes):
        g = int(rng.integers(20, 41))
        gt = _random_boxes(rng, g)
        gt_labels = rng.choice(num_classes, g, p=weights / weights.sum())
        src = rng.integers(0, g, num_preds)
        pred = gt[src].copy()
        pred[:, :3] += rng.normal(0, 0.15, (num_preds, 3)) * gt[src, 3:6]
        pred[:, 3:6] *= rng.uniform(0.8, 1.25, (num_preds, 3))
        pred[:, 6] += rng.normal(0, 0.15, num_preds)
        labels = np.where(rng.random(num_preds) < 0.9, gt_labels[src], rng.integers(0, num_classes, num_preds))
        noise = rng.random(num_preds) < 0.5  # half the predictions: random boxes anywhere
        pred[noise] = _random_boxes(rng, int(noise.sum()))
        scenes.append({
            "gt_boxes": gt[:, :cols], "gt_labels": gt_labels,
            "pred_boxes": pred[:, :cols], "pred_labels": labels,
            "pred_scores": np.round(rng.random(num_preds), 3),
        })
    return scenes


# --- the reference: one scalar IoU per pair, VoteNet's loop ---------------------------------------


def _corners(box) -> list[tuple[float, float]]:
    yaw = float(box[6]) if len(box) > 6 else 0.0
    c, s = math.cos(yaw), math.sin(yaw)
    hx, hy = box[3] / 2, box[4] / 2
    return [(box[0] + c * u - s * v, box[1] + s * u + c * v) for u, v in ((hx, hy), (-hx, hy), (-hx, -hy), (hx, -hy))]


def reference_iou(a, b) -> float:
    """Scalar exact IoU: clip a's BEV rectangle by each edge of b's, times the z overlap."""
    if a[3] * a[4] * a[5] == 0 or b[3] * b[4] * b[5] == 0:
        return 0.0  # a degenerate b has no edges to clip by
    poly, edge = _corners(a), _corners(b)
    for p, q in zip(edge, edge[1:] + edge[:1]):
        side = [(q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0]) for r in poly]
        out = []
        for i, cur in enumerate(poly):
            j = (i + 1) % len(poly)
            if side[i] >= 0:
                out.append(cur)
            if (side[i] >= 0) != (side[j] >= 0):
                t = side[i] / (side[i] - side[j])
                out.append((cur[0] + t * (poly[j][0] - cur[0]), cur[1] + t * (poly[j][1] - cur[1])))
        poly = out
        if not poly:
            return 0.0
    area = 0.5 * sum(p[0] * q[1] - q[0] * p[1] for p, q in zip(poly, poly[1:] + poly[:1]))
    dz = min(a[2] + a[5] / 2, b[2] + b[5] / 2) - max(a[2] - a[5] / 2, b[2] - b[5] / 2)
    inter = max(area, 0.0) * max(dz, 0.0)
    union = a[3] * a[4] * a[5] + b[3] * b[4] * b[5] - inter
    return inter / union if union > 0 else 0.0


def _reference_class(dets: list, gts: dict, threshold: float) -> tuple[float, float]:
    """VoteNet ``eval_det_cls`` for one class: (AP, recall), with a stable sort and our absent-class rules."""
    npos = sum(len(g) for g in gts.values())
    dets = sorted(dets, key=lambda d: -d[0])
    matched = {i: [False] * len(g) for i, g in gts.items()}
    tp = []
    for _, i, box in dets:
        best, jbest = -math.inf, -1
        for j, g in enumerate(gts.get(i, [])):
            iou = reference_iou(box, g)
            if iou > best:
                best, jbest = iou, j
        hit = best > threshold and not matched[i][jbest]
        if hit:
            matched[i][jbest] = True
        tp.append(hit)
    if not npos:
        return (0.0, 0.0) if dets else (math.nan, math.nan)
    if not dets:
        return 0.0, 0.0
    ctp = np.cumsum(tp)
    rec = np.concatenate([[0.0], ctp / npos, [1.0]])
    prec = np.concatenate([[0.0], ctp / np.arange(1, len(tp) + 1), [0.0]])
    for k in range(len(prec) - 1, 0, -1):
        prec[k - 1] = max(prec[k - 1], prec[k])
    steps = np.flatnonzero(rec[1:] != rec[:-1])
    return float(np.sum((rec[steps + 1] - rec[steps]) * prec[steps + 1])), float(ctp[-1] / npos)


def reference_evaluate(scenes: list[dict], thresholds, num_classes: int) -> dict:
    """Per-class AP and recall at each threshold, by the per-pair loop."""
    out = {}
    for t in thresholds:
        ap, rec = [], []
        for c in range(num_classes):
            gts = {i: [b for b, l in zip(s["gt_boxes"], s["gt_labels"]) if l == c] for i, s in enumerate(scenes)}
            dets = [
                (score, i, box)
                for i, s in enumerate(scenes)
                for box, label, score in zip(s["pred_boxes"], s["pred_labels"], s["pred_scores"])
                if label == c
            ]
            a, r = _reference_class(dets, gts, t)
            ap.append(a)
            rec.append(r)
        out[t] = {"ap": ap, "recall": rec}
    return out


# --- the benchmark ---------------------------------------------------------------------------------


def _best_time(fn, repeats: int):
    """(fastest wall time in seconds, result) over ``repeats`` calls: the least disturbed by other jobs."""
    best, result = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def _num_pairs(scenes: list[dict], num_classes: int) -> int:
    """IoU pairs the evaluation needs: same-class (detection, GT) pairs within each scene."""
    per_class = [
        np.bincount(s["pred_labels"], minlength=num_classes) * np.bincount(s["gt_labels"], minlength=num_classes)
        for s in scenes
    ]
    return int(np.sum(per_class))


def _max_diff(ours: dict, ref: dict) -> float:
    """Largest |ours - ref| over per-class AP and recall; a NaN must face a NaN (else inf)."""
    worst = 0.0
    for t in ref:
        for key in ("ap", "recall"):
            a, b = np.asarray(ours[t][key]), np.asarray(ref[t][key])
            if (np.isnan(a) != np.isnan(b)).any():
                return math.inf
            worst = max(worst, float(np.abs(a - b)[~np.isnan(a)].max(initial=0.0)))
    return worst


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.perf metrics", description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--classes", type=int, default=18)
    parser.add_argument("--preds", type=int, default=256, help="predictions per scene")
    parser.add_argument("--ref-scenes", type=int, default=10, help="scenes the per-pair loop reference runs on")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of ours; the fastest is reported")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    print(
        f"metrics: AP25/AP50 of {args.scenes} scenes x {args.classes} classes x {args.preds} predictions "
        f"(20-40 GT per scene), seed {args.seed}; ours: fastest of {args.repeats} runs"
    )
    ok = True
    for rotated in (False, True):
        name = "rotated (G,7)" if rotated else "aligned (G,6)"
        scenes = make_scenes(args.seed, args.scenes, args.classes, args.preds, rotated)
        ours_s, ours = _best_time(lambda: evaluate_detection(scenes, THRESHOLDS, args.classes), args.repeats)
        subset = scenes[: args.ref_scenes]
        ref_s, ref = _best_time(lambda: reference_evaluate(subset, THRESHOLDS, args.classes), 1)
        diff = _max_diff(evaluate_detection(subset, THRESHOLDS, args.classes), ref)
        agree = diff <= 1e-9
        ok &= agree
        ref_full = ref_s * args.scenes / max(len(subset), 1)
        print(
            f"{name}: ours {ours_s:.3f} s ({_num_pairs(scenes, args.classes)} IoU pairs), "
            f"mAP25 {ours[0.25]['mAP']:.4f}, mAP50 {ours[0.5]['mAP']:.4f}"
        )
        print(
            f"{name}: reference {ref_s:.2f} s on {len(subset)} scenes -> {ref_full:.1f} s extrapolated to "
            f"{args.scenes}; ratio {ref_full / ours_s:.0f}x; AP/recall agree on those scenes: "
            f"{'yes' if agree else 'NO'} (max |diff| {diff:.1e})"
        )
    return 0 if ok else 1

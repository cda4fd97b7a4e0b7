"""Exact K nearest neighbours of many centres in a batch of point clouds, in torch on any device.

Distances are squared float64 distances computed as cKDTree computes them ((dx^2 + dy^2) + dz^2 of
float64 differences of the coordinates), so the K nearest are cKDTree's up to exact distance ties.

Brute force costs G x N distances per frame (about 1 s for 2048 centres in 40,000 points on a CPU
core), so a centre looks only at the points of the grid cells that meet a ball of radius L around
it: each frame's points are sorted by cell once per cell size, and the cells meeting the ball are
25 runs of consecutive keys (5 x 5 columns of cells of size >= L / 2, each a range along the last
axis). The K nearest candidates are exact when the K-th lies within L (every point outside the
cells is farther than L), or when the cells hold the whole frame. A centre that fails with K
candidates tries again with L = its K-th candidate distance, an upper bound that cannot fail; one
with fewer candidates doubles L. The first L comes from the caller (e.g. FPS's covering radius).
"""
from __future__ import annotations

import math

import torch

# Candidates (centres x points) evaluated at once: ~60 bytes each, so about 60 MB at most.
MAX_CANDIDATES = 1 << 20
# The cells searched reach L (1 + margin) + margin cells, and a result is trusted when its K-th distance is
# within L: cell indices are computed in float64 and may be off by one only within ~1e-15 of a cell face.
_MARGIN = 1e-6
# Cells per axis at most, so a frame's cell keys fit in int64 for any batch size in practice.
_MAX_CELLS_PER_AXIS = 1 << 15
# Cell sizes of the grids a search may use: the first one times powers of this (finer steps, fewer points
# outside the ball in the cells searched; each step is one more sort of the points).
_LADDER = 2**0.5
_COLUMNS = torch.arange(-2, 3)  # a ball of radius <= 2 cells meets columns -2..2 along x and y


def nearest_neighbours(
    xyz: torch.Tensor,
    point_valid: torch.Tensor,
    centers: torch.Tensor,
    center_valid: torch.Tensor,
    k: int,
    radius: torch.Tensor,
    max_candidates: int = MAX_CANDIDATES,
) -> torch.Tensor:
    """(B, G, k) indices of the k nearest valid points of each valid centre, nearest first (0 elsewhere).

    ``xyz`` (B, N, 3) with ``point_valid`` (B, N); ``centers`` (B, G, 3) with ``center_valid`` (B, G);
    ``radius`` (B,) the first search radius L of each frame (any positive value works; about the k-th
    neighbour distance is fastest). A frame of n < k points gives each centre its n neighbours
    repeated cyclically (like ``knn_indices``). Exact up to distance ties.
    """
    b, n, _ = xyz.shape
    g = centers.shape[1]
    points = xyz.double()
    num_points = point_valid.sum(1)
    lo = points.masked_fill(~point_valid[..., None], float("inf")).amin(1)
    span = points.masked_fill(~point_valid[..., None], float("-inf")).amax(1) - lo
    diagonal = span.norm(dim=1)
    # n <= k: every centre needs the whole frame, so search it at once.
    radius = torch.where((num_points <= k) | ~(radius > 0), diagonal, radius.double()).clamp_max(diagonal)
    # Cells of the first level: just over L / 2 (see _level), at least a bounded grid's, and some size
    # when all points coincide.
    cell = torch.maximum(radius / (2 * (1 - _MARGIN)), span.amax(1) / _MAX_CELLS_PER_AXIS)
    cell = torch.where(cell > 0, cell, torch.ones_like(cell))
    flat_centers = centers.double().view(b * g, 3)
    out = torch.zeros(b * g, k, dtype=torch.int64, device=xyz.device)
    todo = torch.nonzero(center_valid.flatten()).flatten()
    reach = radius[todo // g]
    grids: dict[int, _Grid] = {}
    while todo.numel():
        frame = todo // g
        level = _level(reach, cell[frame])
        found = torch.zeros_like(todo, dtype=torch.bool)
        next_reach = reach * 2  # fewer than k candidates: twice as far
        for lv in torch.unique(level).tolist():
            at = torch.nonzero(level == lv).flatten()
            if lv not in grids:
                grids[lv] = _Grid(points, point_valid, lo, cell * _LADDER**lv)
            hit, index, kth, total = grids[lv].nearest(
                flat_centers[todo[at]], frame[at], reach[at], num_points[frame[at]], k, max_candidates
            )
            out[todo[at[hit]]] = index[hit] - frame[at[hit], None] * n
            found[at] = hit
            # k candidates: the k-th one's distance bounds the k-th neighbour's, so that reach cannot fail.
            next_reach[at] = torch.where(total >= k, kth.sqrt() * (1 + _MARGIN), next_reach[at])
        todo, reach = todo[~found], next_reach[~found]
    return out.view(b, g, k)


def _level(reach: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """Smallest l >= 0 with reach <= 2 (1 - margin) cell ladder^l: then every point within reach lies in
    the 5 x 5 columns around the centre's, even where float64 rounding moves it across a cell face."""
    steps = torch.log(reach / (2 * (1 - _MARGIN) * cell)) / math.log(_LADDER)
    return (steps - 1e-9).ceil().clamp_min(0).long()  # 1e-9: a ratio of 1 + ulp stays level 0


class _Grid:
    """Points of every frame sorted by cell (cells of size ``cell[b]`` from ``lo[b]``), frames apart."""

    def __init__(self, points: torch.Tensor, point_valid: torch.Tensor, lo: torch.Tensor, cell: torch.Tensor):
        b, n, _ = points.shape
        self.lo, self.cell = lo, cell
        span = points.masked_fill(~point_valid[..., None], float("-inf")).amax(1) - lo
        # Two empty layers of cells on each side (+2 shift, +5 size): columns -2..2 never wrap around.
        self.dims = torch.floor(span / cell[:, None]).long() + 5
        volume = self.dims.prod(1)
        self.base = torch.cumsum(volume, 0) - volume
        flat = points.view(b * n, 3)
        frame = torch.arange(b, device=points.device).repeat_interleave(n)
        keys = self._keys(self._cells(flat, frame)[0], frame)
        keys = torch.where(point_valid.flatten(), keys, volume.sum())  # padding after every real cell
        self.sorted_keys, self.order = torch.sort(keys, stable=True)
        self.coords = flat[self.order].T.contiguous()  # (3, B N) coordinates in cell order

    def _cells(self, xyz: torch.Tensor, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, 3) cell of each point of ``frame`` (shifted by the empty layers), (M, 3) position in it."""
        t = (xyz - self.lo[frame]) / self.cell[frame, None]
        whole = torch.floor(t)
        return whole.long() + 2, t - whole

    def _keys(self, ijk: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
        dims = self.dims[frame]
        return self.base[frame] + (ijk[..., 0] * dims[..., 1] + ijk[..., 1]) * dims[..., 2] + ijk[..., 2]

    def nearest(
        self, centers: torch.Tensor, frame: torch.Tensor, reach: torch.Tensor, num_points: torch.Tensor,
        k: int, max_candidates: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The k nearest points of each centre among the cells its ball of radius ``reach`` meets.

        Returns found (M,) (the result is the frame's: k-th distance within reach, or the cells hold
        the whole frame), index (M, k) flat point ids nearest first, the k-th squared distance (M,)
        (inf with fewer candidates) and the number of candidates (M,).
        """
        start, count = self._ball_runs(centers, frame, reach)
        total = count.sum(1)
        found = torch.zeros(len(centers), dtype=torch.bool, device=centers.device)
        index = torch.zeros(len(centers), k, dtype=torch.int64, device=centers.device)
        kth = torch.full((len(centers),), float("inf"), dtype=torch.float64, device=centers.device)
        # Chunks of centres with similar counts, so a chunk's padding to its largest count stays small.
        by_count = torch.argsort(total, descending=True)
        sorted_total = total[by_count].tolist()
        i = 0
        while i < len(centers):
            rows = by_count[i: i + max(1, max_candidates // max(sorted_total[i], 1))]
            i += len(rows)
            values, chosen = self._chunk_nearest(start[rows], count[rows], centers[rows], k)
            if values.shape[1] >= k:
                kth[rows] = values[:, k - 1]
            found[rows] = (total[rows] == num_points[rows]) | (kth[rows] <= reach[rows] ** 2)
            # n < k points (the cells then hold them all): the n nearest repeated cyclically.
            cyclic = torch.arange(k, device=centers.device) % total[rows].clamp(1, k)[:, None]
            index[rows] = self.order[torch.gather(chosen, 1, cyclic)]
        return found, index, kth, total

    def _ball_runs(
        self, centers: torch.Tensor, frame: torch.Tensor, reach: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, 25) start and count (into the sorted points) of the runs of cells that meet each ball."""
        ijk, frac = self._cells(centers, frame)
        cell = self.cell[frame, None]
        cols = _COLUMNS.to(centers.device)
        # Gap between the centre and column c along x (or y): 0 for its own, else to the nearer face.
        gap = torch.where(cols > 0, cols - frac[:, :2, None], frac[:, :2, None] - cols - 1).clamp_min(0)
        gap = gap * cell[..., None]  # (M, 2, 5)
        # Searched radius: reach plus a relative and a per-cell slack (cell >= span / 2^15, so the slack
        # stays far above float64 rounding of the cell indices).
        outer = (reach * (1 + _MARGIN) + _MARGIN * cell[:, 0]) ** 2
        dz2 = outer[:, None, None] - gap[:, 0, :, None] ** 2 - gap[:, 1, None, :] ** 2  # (M, 5, 5)
        dz = dz2.clamp_min(0).sqrt()
        z = (centers[:, 2] - self.lo[frame, 2])[:, None, None]
        top = self.dims[frame, 2, None, None] - 1
        z_lo = torch.minimum((torch.floor((z - dz) / cell[..., None]).long() + 2).clamp_min(0), top)
        z_hi = torch.minimum((torch.floor((z + dz) / cell[..., None]).long() + 2).clamp_min(0), top)
        column = torch.stack(torch.broadcast_tensors(ijk[:, 0, None, None] + cols[:, None],
                                                     ijk[:, 1, None, None] + cols, z_lo), -1)
        first = self._keys(column, frame[:, None, None])
        start = torch.searchsorted(self.sorted_keys, first.flatten(1))
        stop = torch.searchsorted(self.sorted_keys, (first + (z_hi - z_lo)).flatten(1), right=True)
        return start, torch.where(dz2.flatten(1) >= 0, stop - start, 0)

    def _chunk_nearest(
        self, start: torch.Tensor, count: torch.Tensor, centers: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared distances and sorted positions of the min(k, C) nearest candidates of each centre."""
        cum = count.cumsum(1)
        total = cum[:, -1:]
        width = max(int(total.max()), 1)
        col = torch.arange(width, device=centers.device).expand(len(centers), width).contiguous()
        run = torch.searchsorted(cum, col, right=True).clamp_max(count.shape[1] - 1)  # the run holding col
        inside = col < total
        pos = torch.where(inside, torch.gather(start - (cum - count), 1, run) + col, 0)
        # ((dx^2 + dy^2) + dz^2) in float64: cKDTree's arithmetic. In place: on a CPU every new large
        # tensor is fresh memory from the OS, and its page faults cost more than the arithmetic.
        dist = torch.take(self.coords[0], pos).sub_(centers[:, 0:1])
        dist.mul_(dist)
        diff = torch.take(self.coords[1], pos).sub_(centers[:, 1:2])
        dist.add_(diff.mul_(diff))
        torch.take(self.coords[2], pos, out=diff).sub_(centers[:, 2:3])
        dist.add_(diff.mul_(diff))
        dist.masked_fill_(~inside, float("inf"))
        values, cols = torch.topk(dist, min(k, width), dim=1, largest=False, sorted=True)
        return values, torch.gather(pos, 1, cols)

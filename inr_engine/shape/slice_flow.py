"""Correspondence between two annotated slices: a dense in-plane displacement field.

Shape-based interpolation blends the signed distance maps of the two slices around a point;
where the structure moves, bends, splits or merges between them, blending the maps at the
same in-plane position leaves holes (a thin bone 20 mm away from where it was). Registering
the previous slice's signed distance map onto the next one's (symmetric-forces demons, coarse
to fine, started from the centroid displacement) gives each point the path along which to
blend instead. Registration happens on the box where either slice is near its contour; the
field is extended from that box by its edge values.

The registration is ITK's ``FastSymmetricForcesDemonsRegistrationFilter`` (Vercauteren et al.'s
ESM demons function with symmetric gradients, Thirion's normalisation bounded by a maximum step,
the field smoothed by a discrete Gaussian after every update, zero-flux boundaries), written
with PyTorch over all the slice pairs of a case at once: a case registers tens of small images
(30x30 to 100x70 pixels), where ITK spends most of its time in per-iteration set-up (6 ms for
20 iterations on 30x30 pixels). Each pair keeps its own box, pyramid and image boundaries, as if
registered alone: padding a pair to the batch's size is invisible to it. Where it departs from the
ITK pipeline it replaced: a pyramid level averages blocks of pixels (ITK: Gaussian, then every
k-th pixel); a field carried to a finer level is clamped at the coarse grid's edge (ITK: zero
beyond it); no early stop on the RMS change (ITK's never triggered on these images). Near the
contours the flows are within 0.02-0.55 pixel (median per pair) of ITK's on head-and-neck organs,
and the priors trained on ITK's flows complete with the same Dice.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from scipy.special import ive
from torch.nn import functional as F

from ..frames import foreground_box

FLOW_LEVELS_MM = (4.0, 2.0)  # pixel size of the pyramid's levels, coarse to fine (finer adds time, not accuracy)
FLOW_ITERATIONS = 20  # demons iterations per level
FLOW_SMOOTHING_PIXELS = 1.5  # Gaussian regularisation of the field, in pixels of the level
FLOW_MAX_STEP = 1.0  # largest update per iteration, in pixels of the level (ITK's default 0.5 is too slow)
BOX_MARGIN_MM = 12.0  # registration box: where either slice is within this distance of its contour
MIN_LEVEL_SIZE = 4  # a level is used only when the shrunk box keeps at least this many pixels per side
INTENSITY_THRESHOLD_MM = 1e-3  # ITK's: where the two signed distances agree this well, nothing moves
KERNEL_MAX_ERROR = 0.1  # ITK's: the discrete Gaussian is cut where its taps hold 1 - this of its mass


@dataclass
class SliceFlow:
    """Displacement (voxels, in-plane axes) from the previous slice to the next, on a box of the plane.

    A point ``p`` a fraction ``t`` of the way from the previous to the next slice corresponds to
    ``p - t * shift(p)`` on the previous slice and ``p + (1 - t) * shift(p)`` on the next.
    """

    origin: np.ndarray  # (2,) in-plane index of the box's first voxel
    field: np.ndarray  # (2, n_b, n_c) float32

    @classmethod
    def constant(cls, shift: np.ndarray) -> SliceFlow:
        return cls(np.zeros(2), np.asarray(shift, np.float32).reshape(2, 1, 1))

    def shift(self, uv: np.ndarray) -> np.ndarray:
        """(N, 2) displacement at in-plane positions ``uv`` (N, 2)."""
        local = np.asarray(uv, np.float64) - self.origin
        return np.stack([bilinear(self.field, np.full(len(local), c), local[:, 0], local[:, 1]) for c in range(2)], 1)


def bilinear(images: np.ndarray, which: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``images[which[n]]`` (a (k, h, w) stack) at ``(rows[n], cols[n])``, the edge
    values beyond the borders: ``ndimage.map_coordinates(image, ..., order=1, mode="nearest")`` on
    each image, in four gathers (half its time on the slice evidence's millions of samples)."""
    images = np.ascontiguousarray(images)
    _, h, w = images.shape
    rows, cols = np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1)
    r0, c0 = np.minimum(rows.astype(np.intp), max(h - 2, 0)), np.minimum(cols.astype(np.intp), max(w - 2, 0))
    fr, fc = (rows - r0).astype(images.dtype), (cols - c0).astype(images.dtype)
    flat = images.reshape(-1)
    base = (np.asarray(which, np.intp) * h + r0) * w + c0
    down, right = (w if h > 1 else 0), (1 if w > 1 else 0)
    top = flat[base] + fc * (flat[base + right] - flat[base])
    bottom = flat[base + down] + fc * (flat[base + down + right] - flat[base + down])
    return top + fr * (bottom - top)


def slice_flows(sdf_prev: np.ndarray, sdf_next: np.ndarray, centroid_shifts: np.ndarray,
                sampling: tuple[float, float]) -> list[SliceFlow]:
    """Register each ``sdf_prev[p]`` onto ``sdf_next[p]`` ((P, n_b, n_c) signed distances in mm on the
    same plane grid of pixel size ``sampling`` mm); every pair is registered as if alone.

    ``centroid_shifts[p]`` (2,), the in-plane centroid displacement from the previous slice to the
    next, starts the registration; it is also the answer when either slice is empty.
    """
    flows: list[SliceFlow | None] = [None] * len(sdf_prev)
    boxes = {}
    for p, (prev, nxt) in enumerate(zip(sdf_prev, sdf_next)):
        box = foreground_box((prev < BOX_MARGIN_MM) | (nxt < BOX_MARGIN_MM))
        if box is None or not (prev < 0).any() or not (nxt < 0).any():
            flows[p] = SliceFlow.constant(centroid_shifts[p])
        else:
            boxes[p] = box
    shrinks = [tuple(max(1, round(level_mm / s)) for s in sampling) for level_mm in FLOW_LEVELS_MM]
    by_levels: dict[tuple, list[int]] = {}  # pairs registered over the same pyramid run together
    for p, box in boxes.items():
        size = [b.stop - b.start for b in box]
        levels = tuple(f for f in shrinks if min(n // k for n, k in zip(size, f)) >= MIN_LEVEL_SIZE) or ((1, 1),)
        by_levels.setdefault(levels, []).append(p)
    for levels, pairs in by_levels.items():
        fields = _demons([sdf_prev[p][boxes[p]] for p in pairs], [sdf_next[p][boxes[p]] for p in pairs],
                         np.stack([centroid_shifts[p] for p in pairs]), levels)
        for p, field in zip(pairs, fields):
            flows[p] = SliceFlow(np.array([b.start for b in boxes[p]], np.float64), field)
    return flows


class _Batch:
    """Images of different sizes padded to one (P, H, W) array, each pair's padding a copy of its
    last row and column (what zero-flux boundaries see), with the masks and gathers that keep it so."""

    def __init__(self, sizes: np.ndarray):
        self.sizes = torch.as_tensor(sizes)  # (P, 2)
        self.shape = tuple(int(n) for n in sizes.max(0))
        rows, cols = (torch.arange(n) for n in self.shape)
        self.rows = torch.minimum(rows, self.sizes[:, :1] - 1)  # (P, H): the row each row copies
        self.cols = torch.minimum(cols, self.sizes[:, 1:] - 1)
        self.inside = (rows < self.sizes[:, :1])[:, :, None] & (cols < self.sizes[:, 1:])[:, None, :]

    def extend(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (P, C, H, W) with each pair's padding replaced by copies of its edge."""
        p, c, h, w = x.shape
        x = x.gather(2, self.rows[:, None, :, None].expand(p, c, h, w))
        return x.gather(3, self.cols[:, None, None, :].expand(p, c, h, w))

    def smooth(self, field: torch.Tensor) -> torch.Tensor:
        """``field`` (P, 2, H, W) smoothed by the discrete Gaussian along rows and columns, each pair
        within its own size with zero-flux (replicated) borders; the padding: copies of the edge.
        Two batched matrix products (a pair's banded smoothing matrices): a few operations per
        iteration, where shifted sums took tens (the images are small: the operations' count is the cost)."""
        if not hasattr(self, "_smoothing"):
            self._smoothing = (_smoothing_matrices(self.rows)[:, None],
                               _smoothing_matrices(self.cols)[:, None].transpose(-1, -2))
        rows, cols = self._smoothing
        return torch.matmul(torch.matmul(rows, field), cols)


def _smoothing_matrices(source: torch.Tensor) -> torch.Tensor:
    """(P, n, n): row ``i`` of pair ``p`` holds the Gaussian's taps around ``source[p, i]`` (the row
    it copies), indices clamped to the pair's size (``source[p, -1]`` + 1)."""
    taps = _gaussian_taps(FLOW_SMOOTHING_PIXELS)
    r = len(taps) - 1
    offsets = torch.arange(-r, r + 1)
    weights = torch.tensor([taps[abs(int(k))] for k in offsets], dtype=torch.float32)
    last = source[:, -1:, None]  # (P, 1, 1): the pair's last row
    index = torch.minimum((source[:, :, None] + offsets).clamp(min=0), last)  # (P, n, 2r + 1)
    out = torch.zeros(source.shape[0], source.shape[1], source.shape[1])
    return out.scatter_add_(2, index, weights.expand_as(index).contiguous())


def _demons(moving: list[np.ndarray], fixed: list[np.ndarray], initial: np.ndarray,
            levels: tuple[tuple[int, int], ...]) -> list[np.ndarray]:
    """Symmetric-forces demons of each ``moving[p]`` (previous slice) onto ``fixed[p]`` (next slice)
    over the pyramid ``levels`` (shrink factors along the two array axes, coarse to fine); returns
    each pair's (2, n_b, n_c) float32 previous -> next displacement in pixels."""
    sizes = np.array([m.shape for m in moving])
    full = _Batch(sizes)
    images = torch.zeros(len(moving), 2, *full.shape)
    for p, (m, f) in enumerate(zip(moving, fixed)):
        images[p, 0, :m.shape[0], :m.shape[1]] = torch.from_numpy(np.asarray(m, np.float32))
        images[p, 1, :f.shape[0], :f.shape[1]] = torch.from_numpy(np.asarray(f, np.float32))
    images = full.extend(images)
    # The field maps a point of the next slice to the previous one (the demons convention), in
    # pixels of the full grid: the previous -> next displacement is its negative.
    field = -torch.as_tensor(initial, dtype=torch.float32)[:, :, None, None].expand(-1, -1, 1, 1)
    grid, step = None, (1, 1)
    for shrink in levels:
        batch = _Batch(sizes // np.array(shrink))
        level = batch.extend(_shrunk(images, shrink, batch.shape))
        field = _resampled(field, grid, step, batch, shrink)
        field = _register(level[:, 0], level[:, 1], field, batch, shrink)
        grid, step = batch, shrink
    if step != (1, 1):
        field = _resampled(field, grid, step, full, (1, 1))
    return [-field[p, :, :n_b, :n_c].numpy() for p, (n_b, n_c) in enumerate(sizes)]


def _shrunk(images: torch.Tensor, shrink: tuple[int, int], shape: tuple[int, int]) -> torch.Tensor:
    """Each ``shrink`` block of pixels averaged (the block's centre is the shrunk pixel's)."""
    if shrink == (1, 1):
        return images[..., :shape[0], :shape[1]]
    return F.avg_pool2d(images, shrink, shrink)[..., :shape[0], :shape[1]]


def _resampled(field: torch.Tensor, source: _Batch | None, source_shrink, target: _Batch,
               target_shrink) -> torch.Tensor:
    """``field`` on ``source``'s grid (or constant, without one) bilinearly at ``target``'s pixel
    centres, clamped to each pair's source grid."""
    if source is None:
        return field.expand(-1, -1, *target.shape).clone()
    out = field
    for axis in (0, 1):
        centres = torch.arange(target.shape[axis], dtype=torch.float64) * target_shrink[axis]
        centres += (target_shrink[axis] - 1) / 2  # in full-grid pixels
        position = (centres - (source_shrink[axis] - 1) / 2) / source_shrink[axis]
        last = (source.sizes[:, axis:axis + 1] - 1).to(torch.float64)
        position = torch.minimum(position.clamp(min=0)[None], last)  # (P, n)
        low = position.floor().long()
        high = torch.minimum(low + 1, last.long())
        weight = (position - low).float()
        out = _lerp_along(out, low, high, weight, axis)
    return out


def _lerp_along(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor, weight: torch.Tensor,
                axis: int) -> torch.Tensor:
    """``x`` (P, C, H, W) linearly interpolated along spatial ``axis`` between per-pair indices."""
    dim = 2 + axis
    shape = list(x.shape)
    shape[dim] = low.shape[1]
    view = [x.shape[0], 1, 1, 1]
    view[dim] = low.shape[1]
    a = x.gather(dim, low.view(view).expand(shape))
    b = x.gather(dim, high.view(view).expand(shape))
    return a + weight.view(view) * (b - a)


@lru_cache
def _gaussian_taps(sigma: float) -> tuple[float, ...]:
    """ITK's discrete Gaussian operator (Lindeberg's kernel, cut at ``KERNEL_MAX_ERROR``), half-taps from the centre."""
    variance = sigma * sigma
    taps = [ive(0, variance), ive(1, variance)]
    total = taps[0] + 2 * taps[1]
    while total < 1 - KERNEL_MAX_ERROR and len(taps) <= 30:
        taps.append(ive(len(taps), variance))
        total += 2 * taps[-1]
    return tuple(float(t / total) for t in taps)


def _register(moving: torch.Tensor, fixed: torch.Tensor, field: torch.Tensor, batch: _Batch,
              shrink: tuple[int, int]) -> torch.Tensor:
    """``FLOW_ITERATIONS`` demons iterations on one level: ``moving`` and ``fixed`` (P, h, w), the
    field (P, 2, h, w) in full-grid pixels (a level pixel is ``shrink`` of them).

    The images are small: an iteration costs what its operations' count and layouts do. The field
    is kept in grid_sample's (column, row) order and every operation reads contiguous pixels.
    """
    spacing = torch.tensor(shrink[::-1], dtype=torch.float32).view(1, 2, 1, 1)  # (column, row)
    normalizer = (shrink[0] ** 2 + shrink[1] ** 2) / 2 * FLOW_MAX_STEP ** 2
    fixed_gradient = _central_gradient(fixed, batch).flip(1) / spacing
    h, w = batch.shape
    base = torch.stack(torch.meshgrid(torch.arange(w, dtype=torch.float32), torch.arange(h, dtype=torch.float32),
                                      indexing="xy"))  # (2, h, w): (column, row) in level pixels
    lowest = -0.5 - base  # a pixel's displacement (level pixels) keeps it on its pair's grid within these
    highest = torch.where(batch.inside[:, None], batch.sizes.flip(1).float().view(-1, 2, 1, 1) - 0.5 - base,
                          -torch.inf)  # (P, 2, h, w); padding: never valid
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)]).view(1, 2, 1, 1)
    normalized_base = base * scale - 1  # grid_sample's coordinates
    zero = torch.zeros(())
    field = field.flip(1) / spacing  # level pixels, (column, row)
    for _ in range(FLOW_ITERATIONS):
        inside = (field >= lowest) & (field < highest)
        valid = inside[:, 0] & inside[:, 1]
        where = torch.addcmul(normalized_base, field, scale).permute(0, 2, 3, 1)
        warped = F.grid_sample(moving[:, None], where, mode="bilinear", padding_mode="border",
                               align_corners=True)[:, 0]
        gradient = fixed_gradient + _masked_gradient(warped, valid) / spacing
        speed = fixed - warped
        denominator = torch.addcmul(gradient.square().sum(1), speed, speed, value=1.0 / normalizer)
        moves = valid & (speed.abs() >= INTENSITY_THRESHOLD_MM) & (denominator >= 1e-9)
        factor = torch.where(moves, speed / denominator, zero)
        field = batch.smooth(torch.addcmul(field, factor[:, None], gradient / spacing, value=2.0))
    return (field * spacing).flip(1)


def _central_gradient(image: torch.Tensor, batch: _Batch) -> torch.Tensor:
    """(P, 2, h, w) central differences (per level pixel), zero on each pair's border pixels (ITK's
    ``CentralDifferenceImageFunction``)."""
    out = torch.zeros(image.shape[0], 2, *image.shape[1:])
    out[:, 0, 1:-1] = (image[:, 2:] - image[:, :-2]) / 2
    out[:, 1, :, 1:-1] = (image[:, :, 2:] - image[:, :, :-2]) / 2
    r = torch.arange(image.shape[1])
    c = torch.arange(image.shape[2])
    out[:, 0] *= ((r > 0)[None] & (r < batch.sizes[:, :1] - 1))[:, :, None]
    out[:, 1] *= ((c > 0)[None] & (c < batch.sizes[:, 1:] - 1))[:, None, :]
    return out


def _masked_gradient(image: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(P, 2, h, w) differences (per level pixel; columns, then rows) of the warped image using valid
    neighbours only: central where both are, one-sided where one is, zero where none is (ITK's ESM
    demons function). A missing neighbour counts as the pixel itself: the difference is
    ``valid_ahead * ahead - valid_behind * behind - image * (valid_ahead - valid_behind)``."""
    mask = valid.to(image.dtype)
    padded = F.pad(torch.stack([image * mask, mask], 1), (1, 1, 1, 1))  # beyond the borders: not valid
    ahead = torch.stack([padded[..., 1:-1, 2:], padded[..., 2:, 1:-1]], 1)  # (P, 2 directions, 2, h, w)
    behind = torch.stack([padded[..., 1:-1, :-2], padded[..., :-2, 1:-1]], 1)
    difference = ahead - behind
    gradient = torch.addcmul(difference[:, :, 0], image[:, None], difference[:, :, 1], value=-1.0)
    both = (ahead[:, :, 1] + behind[:, :, 1]) > 1.5
    return torch.where(both, gradient * 0.5, gradient)

"""Evaluating an INR over a grid: in chunks within a memory budget, and adaptively.

Adaptive decoding evaluates every second grid point (and the knots: planes where the function
may bend sharply, such as annotated slices), interpolates trilinearly between them, and evaluates
exactly where the interpolated logit lies within ``band`` of the decision boundary or where the
samples around a point disagree on its label: far from the surface the interpolation cannot flip
a label, so large grids cost little more than their surface. On the real-size head-and-neck
completions (every organ of a scan, 5, 10 and 20 mm gaps: 3.6 million foreground voxels), 213
labels differ from evaluating every voxel, with 22% of the voxels evaluated; interpolating across
the slices with the band alone changed 908, with 21%. What remains lies next to annotated slices
two voxels apart, where the slice evidence bends half-way between them: sampling those half-way
planes too would leave 21, with 26% evaluated.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .frames import grid_ijk

PointFunction = Callable[[np.ndarray], np.ndarray]  # (n, 3) voxel positions -> (n,) logits

DEFAULT_BUDGET_BYTES = 256 * 1024**2
ADAPTIVE_BAND = 4.0  # logits: nearer the decision boundary than this, interpolated values are not trusted
MIN_ADAPTIVE_POINTS = 32**3  # smaller grids are evaluated point by point


def chunk_size(bytes_per_point: int, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> int:
    return max(1024, int(budget_bytes // max(bytes_per_point, 1)))


DECODE_CHUNK_BYTES = 4 * 1024**2  # one activation array of a chunk


def decode_chunk(features: int, chunk_bytes: int = DECODE_CHUNK_BYTES) -> int:
    """Points per chunk when a network ``features`` wide is evaluated point by point on a CPU: small
    enough that a chunk's float32 activations stay in the caches (its matrix products and
    activations then run from cache, and no fresh memory is mapped for each chunk; 4 MiB per
    array measured fastest on 2 threads, twice as fast as a 256 MiB budget), large enough that the
    per-chunk overhead does not count."""
    return max(1024, chunk_bytes // (4 * max(features, 1)))


def evaluate_in_chunks(fn: PointFunction, points: np.ndarray, chunk: int) -> np.ndarray:
    points = np.asarray(points).reshape(-1, 3)
    out = np.empty(len(points), np.float32)
    for start in range(0, len(points), chunk):
        out[start:start + chunk] = fn(points[start:start + chunk])
    return out


def decode_box(fn: PointFunction, lo, hi, step: float = 1.0, chunk: int = 65536, adaptive: bool = True,
               band: float = ADAPTIVE_BAND, min_adaptive_points: int = MIN_ADAPTIVE_POINTS,
               knots: dict[int, list[float]] | None = None) -> np.ndarray:
    """Logits on the grid ``lo + step * n`` (voxel units) covering the box ``[lo, hi)``.

    Returns an array of shape ``ceil((hi - lo) / step)`` per axis. ``knots`` (voxel positions by
    axis) are where the function may bend sharply (an annotated slice): adaptive decoding samples
    them, so that it interpolates only between them, never across one.
    """
    lo = np.asarray(lo, np.float64)
    hi = np.asarray(hi, np.float64)
    dims = np.maximum(np.ceil((hi - lo) / step - 1e-6).astype(int), 1)
    if not adaptive or np.prod(dims) < min_adaptive_points:
        points = grid_ijk(tuple(dims)) * step + lo
        return evaluate_in_chunks(fn, points, chunk).reshape(tuple(dims))
    along = [_coarse_positions(n, ((np.asarray((knots or {}).get(a, []), np.float64) - lo[a]) / step))
             for a, n in enumerate(dims)]
    coarse_points = np.stack(np.meshgrid(*along, indexing="ij"), -1) * step + lo
    coarse = evaluate_in_chunks(fn, coarse_points, chunk).reshape(tuple(len(x) for x in along))
    logits, lowest, highest = _interpolated(coarse, along, dims)
    uncertain = np.argwhere((np.abs(logits) < band) | ((lowest <= 0) & (highest > 0)))
    if len(uncertain):
        logits[tuple(uncertain.T)] = evaluate_in_chunks(fn, uncertain * step + lo, chunk)
    return logits


def _coarse_positions(n: int, knots: np.ndarray) -> np.ndarray:
    """Grid indices sampled along an axis of ``n``: every second one (of the parity most knots have:
    regularly spaced slices then add no samples), the ends, and the (whole) knots."""
    knots = np.round(knots[(knots > -0.5) & (knots < n - 0.5)]).astype(int)
    parity = int(np.count_nonzero(knots % 2) * 2 > len(knots))
    return np.unique(np.concatenate([[0], np.arange(parity, n, 2), [n - 1], knots]))


def _interpolated(coarse: np.ndarray, along: list[np.ndarray], dims) -> tuple[np.ndarray, ...]:
    """``coarse`` (sampled at the indices ``along`` each axis) linearly interpolated along each axis
    in turn onto every index below ``dims`` (trilinear within each cell of the samples), and the
    least and the largest sample of each index's cell."""
    values = lowest = highest = torch.from_numpy(coarse)
    for axis, (positions, n) in enumerate(zip(along, dims)):
        index = torch.arange(n, dtype=torch.float64)
        known = torch.from_numpy(positions.astype(np.float64))
        cell = (torch.searchsorted(known, index, right=True) - 1).clamp(0, max(len(known) - 2, 0))
        following = (cell + 1).clamp(max=len(known) - 1)
        weight = ((index - known[cell]) / (known[following] - known[cell]).clamp(min=1)).float()
        view = [1, 1, 1]
        view[axis] = n
        values = torch.lerp(values.index_select(axis, cell), values.index_select(axis, following), weight.view(view))
        lowest = torch.minimum(lowest.index_select(axis, cell), lowest.index_select(axis, following))
        highest = torch.maximum(highest.index_select(axis, cell), highest.index_select(axis, following))
    return values.numpy(), lowest.numpy(), highest.numpy()


def labels_on_grid(shape: tuple[int, int, int], lo, logits: np.ndarray) -> np.ndarray:
    """Binary labels (logit > 0) of a voxel box starting at ``lo``, placed on the full grid."""
    out = np.zeros(shape, bool)
    box = tuple(slice(int(a), int(a) + n) for a, n in zip(lo, logits.shape))
    out[box] = logits > 0
    return out

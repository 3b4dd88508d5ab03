"""Evaluating an INR over a grid: in chunks within a memory budget, and adaptively.

Adaptive decoding evaluates every second grid point, interpolates trilinearly, and evaluates
exactly only where the interpolated logit lies within ``band`` of the decision boundary:
far from the surface the interpolation cannot flip a label, so large grids cost little more
than their surface.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

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
               band: float = ADAPTIVE_BAND, min_adaptive_points: int = MIN_ADAPTIVE_POINTS) -> np.ndarray:
    """Logits on the grid ``lo + step * n`` (voxel units) covering the box ``[lo, hi)``.

    Returns an array of shape ``ceil((hi - lo) / step)`` per axis.
    """
    lo = np.asarray(lo, np.float64)
    hi = np.asarray(hi, np.float64)
    dims = np.maximum(np.ceil((hi - lo) / step - 1e-6).astype(int), 1)
    if not adaptive or np.prod(dims) < min_adaptive_points:
        points = grid_ijk(tuple(dims)) * step + lo
        return evaluate_in_chunks(fn, points, chunk).reshape(tuple(dims))
    coarse_dims = dims // 2 + 1
    coarse_points = grid_ijk(tuple(coarse_dims)) * (2 * step) + lo
    coarse = evaluate_in_chunks(fn, coarse_points, chunk).reshape(tuple(coarse_dims))
    up = F.interpolate(torch.from_numpy(coarse)[None, None], size=tuple(2 * (coarse_dims - 1) + 1),
                       mode="trilinear", align_corners=True)[0, 0].numpy()
    logits = np.ascontiguousarray(up[: dims[0], : dims[1], : dims[2]])
    uncertain = np.argwhere(np.abs(logits) < band)
    if len(uncertain):
        logits[tuple(uncertain.T)] = evaluate_in_chunks(fn, uncertain * step + lo, chunk)
    return logits


def labels_on_grid(shape: tuple[int, int, int], lo, logits: np.ndarray) -> np.ndarray:
    """Binary labels (logit > 0) of a voxel box starting at ``lo``, placed on the full grid."""
    out = np.zeros(shape, bool)
    box = tuple(slice(int(a), int(a) + n) for a, n in zip(lo, logits.shape))
    out[box] = logits > 0
    return out

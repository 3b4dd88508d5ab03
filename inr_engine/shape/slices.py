"""Sparse annotated slices: finding them, simulating them, and describing points by them.

A sparse label map holds a few annotated slices (along one axis or several); every other
voxel is unknown and stored as 0. :class:`SliceEvidence` turns the annotated slices into a
fixed-length feature vector for any point of the volume (fractional positions included), so
that the occupancy network can be evaluated on the voxel grid or on a finer mesh grid:

per axis with annotations, 9 values:
  interpolated signed distance between the two neighbouring slices, blended along the
  registered correspondence between them (:mod:`.slice_flow`: shape-based interpolation that
  follows structures as they move, bend and split), the signed distances on the previous and
  the next slice (at the corresponding points) and
  on the slices beyond those (curvature), distance to the nearest annotated slice, distance
  beyond the first/last slice, gap between the neighbouring slices, and a flag that the axis
  has annotations;
plus the distance-weighted combination of the axes' interpolated signed distances, where
beyond the first and last slice the end slice's signed distance grows by the distance beyond
it (a 45-degree taper rather than an extrusion).
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from ..inputs import SliceError
from .slice_flow import SliceFlow, bilinear, slice_flows

SDF_SCALE_MM = 5.0  # signed distances enter the network as tanh(d / SDF_SCALE_MM)
DIST_SCALE_MM = 20.0  # slice distances as tanh(d / DIST_SCALE_MM)
SDF_CAP_MM = 50.0  # signed distance assigned on slices annotated as empty
FEATURES_PER_AXIS = 9
# Priors record the evidence they were trained on: features of another version mean other things.
EVIDENCE_VERSION = "slice-evidence v2: signed distances blended along demons correspondence"
NUM_FEATURES = 3 * FEATURES_PER_AXIS + 1


def find_annotated_slices(sparse: np.ndarray) -> dict[int, list[int]]:
    """Axis -> indices of annotated slices, found from the foreground alone.

    A slice is annotated when its foreground is two-dimensional there (it holds a 2x2 block
    in the slice plane): a slice across other annotated slices only meets them in lines, so
    orthogonal annotations are told apart. Foreground left unexplained (structures one voxel
    thin) is peeled off along the axis where it lies in the fewest slices.
    """
    fg = np.asarray(sparse) > 0
    if not fg.any():
        raise SliceError("the input has no foreground: annotate at least two slices of the structure")
    found: dict[int, set[int]] = {}
    for axis in range(3):
        b, c = (x for x in range(3) if x != axis)
        idx = np.flatnonzero(_in_plane_blocks(fg, b, c).any(axis=(b, c)))
        if len(idx):
            found[axis] = set(idx.tolist())
    remaining = fg & ~_covered(fg.shape, found)
    while remaining.any():
        occupied = {a: np.flatnonzero(remaining.any(axis=tuple(x for x in range(3) if x != a))) for a in range(3)}
        axis = min(occupied, key=lambda a: len(occupied[a]))
        found.setdefault(axis, set()).update(occupied[axis].tolist())
        remaining &= ~_covered(fg.shape, {axis: set(occupied[axis].tolist())})
    return {a: sorted(v) for a, v in sorted(found.items())}


def _in_plane_blocks(fg: np.ndarray, b: int, c: int) -> np.ndarray:
    """True where a voxel and its +1 neighbours along ``b``, along ``c`` and along both are foreground."""

    def part(shift_b: bool, shift_c: bool) -> np.ndarray:
        index = [slice(None)] * 3
        index[b] = slice(1, None) if shift_b else slice(None, -1)
        index[c] = slice(1, None) if shift_c else slice(None, -1)
        return fg[tuple(index)]

    return part(False, False) & part(True, False) & part(False, True) & part(True, True)


def _covered(shape, slices: dict[int, set[int]]) -> np.ndarray:
    covered = np.zeros(shape, bool)
    for axis, idx in slices.items():
        index = [slice(None)] * 3
        index[axis] = sorted(idx)
        covered[tuple(index)] = True
    return covered


def sparsify(mask: np.ndarray, axis: int, every: int, offset: int | None = None) -> tuple[np.ndarray, list[int]]:
    """Keep every ``every``-th slice of ``mask`` along ``axis`` (the evaluation protocol).

    Slices start ``offset`` slices after the first slice with foreground (default
    ``every // 2``) and stop at its last; if none is kept, the middle slice of the object is.
    Returns the sparse mask and the kept slice indices.
    """
    mask = np.asarray(mask) > 0
    occupied = np.flatnonzero(mask.any(axis=tuple(b for b in range(3) if b != axis)))
    if occupied.size == 0:
        raise SliceError("cannot sparsify an empty mask")
    first, last = int(occupied[0]), int(occupied[-1])
    offset = every // 2 if offset is None else offset
    kept = list(range(first + offset, last + 1, every)) or [(first + last) // 2]
    sparse = np.zeros_like(mask)
    index = [slice(None)] * 3
    index[axis] = kept
    sparse[tuple(index)] = mask[tuple(index)]
    return sparse, kept


def _signed_distance(slice_mask: np.ndarray, sampling: tuple[float, float]) -> np.ndarray:
    if not slice_mask.any():
        return np.full(slice_mask.shape, SDF_CAP_MM, np.float32)
    if slice_mask.all():
        return np.full(slice_mask.shape, -SDF_CAP_MM, np.float32)
    outside = ndimage.distance_transform_edt(~slice_mask, sampling=sampling)
    inside = ndimage.distance_transform_edt(slice_mask, sampling=sampling)
    return np.clip(outside - inside, -SDF_CAP_MM, SDF_CAP_MM).astype(np.float32)


@dataclass
class _AxisEvidence:
    positions: np.ndarray  # (m,) slice indices along the axis, increasing
    sdf: np.ndarray  # (m, n_b, n_c) signed distance in mm, per slice
    centroids: np.ndarray  # (m, 2) in-plane centroid (voxel units); NaN for empty slices
    step_mm: float  # spacing along the axis
    sampling: tuple[float, float]  # in-plane spacing
    flows: list[SliceFlow] | None = None  # (m - 1) correspondences between consecutive slices, once registered


def _flows_between(ev: _AxisEvidence, pairs: list[tuple[int, int]]) -> list[SliceFlow]:
    """The flows from slice ``a`` to slice ``b`` of each pair, registered together."""
    first, second = (np.array([pair[i] for pair in pairs], int) for i in (0, 1))
    shifts = ev.centroids[second] - ev.centroids[first]
    return slice_flows(ev.sdf[first], ev.sdf[second], np.where(np.isnan(shifts), 0.0, shifts), ev.sampling)


class SliceEvidence:
    """What the annotated slices say about any point of the grid."""

    num_features = NUM_FEATURES

    def __init__(self, sparse: np.ndarray, slices: dict[int, list[int]], spacing: np.ndarray):
        sparse = np.asarray(sparse) > 0
        if sparse.ndim != 3:
            raise SliceError(f"expected a 3D label map, got {sparse.ndim}D")
        self.shape = sparse.shape
        self.spacing = np.asarray(spacing, dtype=np.float64)
        self.slices = {a: sorted(set(int(i) for i in idx)) for a, idx in slices.items() if len(idx)}
        if not self.slices:
            raise SliceError("no annotated slices")
        for a, idx in self.slices.items():
            if idx[0] < 0 or idx[-1] >= self.shape[a]:
                raise SliceError(f"slice index out of range along axis {a}: {idx}")
        self.axes = {a: self._axis(sparse, a, idx) for a, idx in self.slices.items()}
        self._gap_flows: dict[tuple[int, int], SliceFlow] = {}  # (axis, n): across the gap without slice n
        self._registering = threading.Lock()

    def _axis(self, sparse: np.ndarray, axis: int, idx: list[int]) -> _AxisEvidence:
        plane = [b for b in range(3) if b != axis]
        sampling = (self.spacing[plane[0]], self.spacing[plane[1]])
        stack = np.moveaxis(sparse, axis, 0)[idx]
        sdf = np.stack([_signed_distance(s, sampling) for s in stack])
        cents = np.full((len(idx), 2), np.nan)
        for n, s in enumerate(stack):
            if s.any():
                cents[n] = ndimage.center_of_mass(s)
        return _AxisEvidence(np.asarray(idx, np.float64), sdf, cents, float(self.spacing[axis]), sampling)

    def prepare_without(self, left_out: list[tuple[int, int]]) -> None:
        """Register the consecutive slices (unless done) and the gaps that leaving out each
        ``(axis, n)`` would open, all in one batch per axis (registration happens when first
        needed: telling all that will be needed here makes one batch of it)."""
        with self._registering:
            for axis, ev in self.axes.items():
                pairs = [] if ev.flows is not None else [(n, n + 1) for n in range(len(ev.positions) - 1)]
                gaps = sorted({n for a, n in left_out if a == axis and 0 < n < len(ev.positions) - 1
                               and (a, n) not in self._gap_flows})
                flows = _flows_between(ev, pairs + [(n - 1, n + 1) for n in gaps]) if pairs or gaps else []
                if ev.flows is None:
                    ev.flows = flows[:len(pairs)]
                self._gap_flows.update({(axis, n): f for n, f in zip(gaps, flows[len(pairs):])})

    def forget_left_out(self) -> None:
        """Drop the flows registered across the gaps of left-out slices (:meth:`prepare_without`)."""
        with self._registering:
            self._gap_flows.clear()

    def without(self, axis: int, n: int) -> SliceEvidence:
        """The evidence without the ``n``-th annotated slice along ``axis`` (only the flow across the gap
        it leaves is computed)."""
        self.prepare_without([(axis, n)])
        other = copy.copy(self)
        other._gap_flows, other._registering = {}, threading.Lock()  # its slices are numbered without slice n
        ev = self.axes[axis]
        keep = np.arange(len(ev.positions)) != n
        other.axes = dict(self.axes)
        other.slices = dict(self.slices)
        if keep.any():
            flows = ev.flows[:max(n - 1, 0)] + ev.flows[n + 1:]
            if 0 < n < len(ev.positions) - 1:
                flows.insert(n - 1, self._gap_flows[(axis, n)])
            other.axes[axis] = replace(ev, positions=ev.positions[keep], sdf=ev.sdf[keep],
                                       centroids=ev.centroids[keep], flows=flows)
            other.slices[axis] = [p for i, p in enumerate(self.slices[axis]) if i != n]
        else:
            del other.axes[axis], other.slices[axis]
        if not other.axes:
            raise SliceError("cannot leave out the only annotated slice")
        return other

    def known_mask(self) -> np.ndarray:
        """Voxels whose label is known (those on annotated slices)."""
        known = np.zeros(self.shape, bool)
        for a, idx in self.slices.items():
            index = [slice(None)] * 3
            index[a] = idx
            known[tuple(index)] = True
        return known

    def features(self, ijk: np.ndarray) -> np.ndarray:
        """(N, NUM_FEATURES) float32 features for (N, 3) voxel positions (fractional allowed)."""
        self.prepare_without([])
        ijk = np.asarray(ijk, np.float64).reshape(-1, 3)
        out = np.zeros((len(ijk), NUM_FEATURES), np.float32)
        num = np.zeros(len(ijk))
        den = np.zeros(len(ijk))
        for a, ev in self.axes.items():
            cols, s_mm, near_mm = self._axis_features(ev, a, ijk)
            out[:, a * FEATURES_PER_AXIS:(a + 1) * FEATURES_PER_AXIS] = cols
            weight = 1.0 / (near_mm + 1.0)
            num += weight * s_mm
            den += weight
        out[:, -1] = np.clip(num / den / SDF_SCALE_MM, -4.0, 4.0)
        return out

    def grid_features(self, along: list[np.ndarray]) -> np.ndarray:
        """:meth:`features` of the points of a grid, every combination of the positions ``along[a]``
        (voxel units) on each axis, as a (*grid dims, NUM_FEATURES) array: the same values, with what
        depends on a point's in-plane position alone (the flow, the slices beyond) sampled once per
        pair of slices around it (three to nine times faster than :meth:`features` of the points)."""
        self.prepare_without([])
        along = [np.asarray(x, np.float64) for x in along]
        dims = tuple(len(x) for x in along)
        out = np.zeros((*dims, NUM_FEATURES), np.float32)
        num, den = np.zeros(dims), np.zeros(dims)
        for a, ev in self.axes.items():
            b, c = (x for x in range(3) if x != a)
            uv = np.stack(np.meshgrid(along[b], along[c], indexing="ij"), -1).reshape(-1, 2)
            cols, s_mm, near_mm = self._axis_grid_features(ev, along[a], uv)
            shape = (dims[a], dims[b], dims[c])  # the axis first
            np.moveaxis(out[..., a * FEATURES_PER_AXIS:(a + 1) * FEATURES_PER_AXIS], a, 0)[...] = cols.reshape(
                *shape, FEATURES_PER_AXIS)
            weight = np.moveaxis((1.0 / (near_mm + 1.0)).reshape(-1, 1, 1), 0, a)  # a position's along the axis
            num += weight * np.moveaxis(s_mm.reshape(shape), 0, a)
            den += weight
        out[..., -1] = np.clip(num / den / SDF_SCALE_MM, -4.0, 4.0)
        return out

    @staticmethod
    def _axis_features(ev: _AxisEvidence, axis: int, ijk: np.ndarray):
        """(N, 9) columns, interpolated signed distance and distance to the nearest slice of points ``ijk``."""
        uv = ijk[:, [b for b in range(3) if b != axis]]
        prv, nxt, gap, t, beyond, near = _between_slices(ev, ijk[:, axis])
        shift = np.zeros_like(uv)
        for g in np.unique(prv[gap > 0]):
            rows = (prv == g) & (gap > 0)
            shift[rows] = ev.flows[g].shift(uv[rows])
        m = len(ev.positions)
        d_prev = _sample(ev.sdf, prv, uv - t[:, None] * shift)
        d_next = _sample(ev.sdf, nxt, uv + (1.0 - t)[:, None] * shift)
        d_prev2 = _sample(ev.sdf, np.clip(prv - 1, 0, m - 1), uv)
        d_next2 = _sample(ev.sdf, np.clip(nxt + 1, 0, m - 1), uv)
        s = (1.0 - t) * d_prev + t * d_next + beyond
        return _columns(s, d_prev, d_next, d_prev2, d_next2, near, beyond, gap * ev.step_mm), s, near

    @staticmethod
    def _axis_grid_features(ev: _AxisEvidence, k: np.ndarray, uv: np.ndarray):
        """:meth:`_axis_features` of the points (k[i], uv[j]): (K * P, 9), (K, P), (K, 1)."""
        prv, nxt, gap, t, beyond, near = _between_slices(ev, k)
        m, points = len(ev.positions), len(uv)
        d_prev, d_next, d_prev2, d_next2 = (np.empty((len(k), points), np.float32) for _ in range(4))
        for p, n in sorted(set(zip(prv.tolist(), nxt.tolist()))):
            rows = np.flatnonzero((prv == p) & (nxt == n))
            shift = ev.flows[p].shift(uv) if gap[rows[0]] > 0 else np.zeros_like(uv)
            between = t[rows][:, None, None]
            d_prev[rows] = _sample(ev.sdf, np.full(len(rows) * points, p), (uv - between * shift).reshape(-1, 2)
                                   ).reshape(len(rows), points)
            d_next[rows] = _sample(ev.sdf, np.full(len(rows) * points, n), (uv + (1.0 - between) * shift).reshape(-1, 2)
                                   ).reshape(len(rows), points)
            d_prev2[rows] = _sample(ev.sdf, np.full(points, max(p - 1, 0)), uv)
            d_next2[rows] = _sample(ev.sdf, np.full(points, min(n + 1, m - 1)), uv)
        t, beyond, near = t[:, None], beyond[:, None], near[:, None]
        s = (1.0 - t) * d_prev + t * d_next + beyond
        cols = _columns(s, d_prev, d_next, d_prev2, d_next2, near, beyond, gap[:, None] * ev.step_mm)
        return cols.reshape(-1, FEATURES_PER_AXIS), s, near


def _between_slices(ev: _AxisEvidence, k: np.ndarray):
    """Where positions ``k`` along the axis lie among its slices: the previous and next slice's
    numbers (the end slice's twice beyond the ends), the gap between them (slice units), the fraction
    ``t`` of it, and the distance (mm) beyond the end slices and to the nearest slice."""
    m = len(ev.positions)
    nxt = np.clip(np.searchsorted(ev.positions, k, side="right"), 0, m - 1)
    prv = np.clip(nxt - 1, 0, m - 1)
    before = k < ev.positions[0]
    after = k >= ev.positions[-1]
    prv = np.where(before, 0, np.where(after, m - 1, prv))
    nxt = np.where(after, m - 1, np.where(before, 0, nxt))
    gap = ev.positions[nxt] - ev.positions[prv]
    t = np.where(gap > 0, (k - ev.positions[prv]) / np.maximum(gap, 1e-9), 0.0)
    beyond = np.where(before, ev.positions[0] - k, np.where(after, k - ev.positions[-1], 0.0)) * ev.step_mm
    near = np.minimum(np.abs(k - ev.positions[prv]), np.abs(ev.positions[nxt] - k)) * ev.step_mm
    return prv, nxt, gap, t, beyond, near


def _columns(s, d_prev, d_next, d_prev2, d_next2, near, beyond, gap_mm) -> np.ndarray:
    """An axis' FEATURES_PER_AXIS columns (last axis) from its quantities (broadcast together)."""
    columns = [np.tanh(s / SDF_SCALE_MM), np.tanh(d_prev / SDF_SCALE_MM), np.tanh(d_next / SDF_SCALE_MM),
               np.tanh(d_prev2 / SDF_SCALE_MM), np.tanh(d_next2 / SDF_SCALE_MM), np.tanh(near / DIST_SCALE_MM),
               np.tanh(beyond / DIST_SCALE_MM), np.tanh(gap_mm / DIST_SCALE_MM), np.ones(np.shape(s))]
    return np.stack(np.broadcast_arrays(*columns), -1)


def _sample(stack: np.ndarray, which: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear sample of slice ``which[n]`` of ``stack`` at in-plane position ``uv[n]``."""
    return bilinear(stack, which, uv[:, 0], uv[:, 1])

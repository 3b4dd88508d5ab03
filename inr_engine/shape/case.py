"""A sparse input prepared for fitting: slice evidence, the decoded region, the frame and the
points the fit sees (the annotated slices' voxels and held-out pseudo-labels)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..frames import NormalizedFrame, foreground_box, ijk_to_ras, spacing
from .encoder import EncodedEvidence, EvidenceGrid, SliceEncoder
from .model import ShapeConfig
from .slice_flow import BOX_MARGIN_MM
from .slices import SliceError, SliceEvidence, find_annotated_slices


@dataclass
class Case:
    """A sparse input prepared for fitting: evidence, decoded region, frame, context points.

    The work happens on a crop of the input grid around the annotation (``offset``, the crop's
    first voxel): the evidence is in the crop's voxel indices, everything else (``lo``, ``hi``,
    the points :meth:`inputs` takes, ``affine``) in the input grid's, so a structure costs what
    its size costs, not what its scan's size does.
    """

    evidence: SliceEvidence | EncodedEvidence  # in the crop's voxel indices
    affine: np.ndarray  # of the input grid
    frame: NormalizedFrame
    lo: np.ndarray  # decoded region [lo, hi) in the input grid's voxel indices
    hi: np.ndarray
    context: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # coords, evidence, labels (see prepare_case)
    offset: np.ndarray  # the crop's first voxel in the input grid
    grid_shape: tuple[int, int, int]  # the input grid's
    timings: dict[str, float] = field(default_factory=dict)

    def inputs(self, ijk: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's inputs (normalized coordinates, evidence features) at input-grid voxels ``ijk``."""
        coords = torch.from_numpy(self.frame.ijk_to_network(ijk, self.affine))
        return coords, torch.from_numpy(self.evidence.features(np.asarray(ijk) - self.offset))

    @property
    def slices(self) -> dict[int, list[int]]:
        """The annotated slices, in the input grid's indices."""
        return {a: [int(i) + int(self.offset[a]) for i in idx] for a, idx in self.evidence.slices.items()}


def region_of_interest(fg_lo, fg_hi, slices: dict[int, list[int]], spacing: np.ndarray, margin_mm: float,
                       shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Box ``[lo, hi)`` in voxel indices where the shape can be: the annotated foreground's box
    ``[fg_lo, fg_hi)``, grown by the largest slice gap along annotated axes and by ``margin_mm``
    everywhere, within ``shape``."""
    grow = margin_mm / np.asarray(spacing, np.float64)
    for a, idx in slices.items():
        gaps = np.diff(idx)
        grow[a] = max(grow[a], float(gaps.max()) if len(gaps) else grow[a])
    lo = np.maximum(np.floor(np.asarray(fg_lo) - grow), 0).astype(int)
    hi = np.minimum(np.ceil(np.asarray(fg_hi) + grow), np.asarray(shape)).astype(int)
    return lo, hi


def foreground_span(mask: np.ndarray, within: tuple[slice, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``[lo, hi)`` of ``mask``'s foreground (known to lie ``within`` a box, if given: only that box
    is read); :class:`SliceError` if there is none."""
    within = within or tuple(slice(0, n) for n in mask.shape)
    box = foreground_box(mask[within])
    if box is None:
        raise SliceError("the input has no foreground: annotate at least two slices of the structure")
    start = np.array([w.start for w in within])
    return start + [b.start for b in box], start + [b.stop for b in box]


def _crop_box(fg_lo, fg_hi, roi_lo, roi_hi, slices, spacing, shape, encoder_grid) -> tuple[np.ndarray, np.ndarray]:
    """The part of the grid the evidence needs: the decoded region, the slices' registration boxes
    (within ``BOX_MARGIN_MM`` of a contour), the context encoder's grid, and the given slices; one
    voxel more on every side, so that nothing inside sees the crop's edge."""
    reach = np.ceil(BOX_MARGIN_MM / np.asarray(spacing)).astype(int)
    lo, hi = np.minimum(roi_lo, fg_lo - reach), np.maximum(roi_hi, fg_hi + reach)
    if encoder_grid is not None:
        lo = np.minimum(lo, np.floor(encoder_grid.lo).astype(int))
        last = encoder_grid.lo + (np.asarray(encoder_grid.dims) - 1) * encoder_grid.step
        hi = np.maximum(hi, np.ceil(last).astype(int) + 1)
    for a, idx in slices.items():
        lo[a], hi[a] = min(lo[a], min(idx)), max(hi[a], max(idx) + 1)
    return np.maximum(lo - 1, 0), np.minimum(hi + 1, np.asarray(shape))


def box_voxels(lo, hi) -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1).reshape(-1, 3)


@dataclass
class _SliceVoxels:
    """Every annotated voxel inside the decoded box, with the slice it lies on."""

    ijk: np.ndarray  # (n, 3)
    labels: np.ndarray  # (n,) float32
    distance: np.ndarray  # (n,) |signed distance| to the slice's contour, mm
    axis: np.ndarray  # (n,) axis of the slice
    slice_number: np.ndarray  # (n,) index of the slice among that axis' annotated slices


def _slice_voxels(sparse: np.ndarray, evidence: SliceEvidence, lo, hi) -> _SliceVoxels:
    ijks, labels, dists, axes, numbers = [], [], [], [], []
    for a, ax in evidence.axes.items():
        plane = [b for b in range(3) if b != a]
        uv = np.stack(np.meshgrid(np.arange(lo[plane[0]], hi[plane[0]]),
                                  np.arange(lo[plane[1]], hi[plane[1]]), indexing="ij"), -1).reshape(-1, 2)
        for n, pos in enumerate(ax.positions.astype(int)):
            if not lo[a] <= pos < hi[a]:
                continue
            ijk = np.empty((len(uv), 3), int)
            ijk[:, a] = pos
            ijk[:, plane] = uv
            ijks.append(ijk)
            labels.append(sparse[tuple(ijk.T)])
            dists.append(np.abs(ax.sdf[n][tuple(uv.T)]))
            axes.append(np.full(len(uv), a))
            numbers.append(np.full(len(uv), n))
    return _SliceVoxels(np.concatenate(ijks), np.concatenate(labels).astype(np.float32), np.concatenate(dists),
                        np.concatenate(axes), np.concatenate(numbers))


def _held_out_features(evidence: SliceEvidence | EncodedEvidence, voxels: _SliceVoxels,
                       pick: np.ndarray) -> np.ndarray:
    """Features of the picked annotated voxels, each described by the evidence of the *other*
    slices (leave one slice out): on an annotated slice the full evidence already states the
    label, so fitting to it alone would teach nothing, whereas predicting each slice from its
    neighbours is the case's own interpolation problem and gives the test-time fit its signal.
    The evidence is expected to be prepared without those slices (``prepare_without``)."""
    out = np.empty((len(pick), evidence.num_features), np.float32)
    groups = _slice_groups(voxels)[pick]
    for group in np.unique(groups):  # hundreds of points each: threads would cost more than they save
        rows = groups == group
        out[rows] = evidence.without(*divmod(int(group), 10**6)).features(voxels.ijk[pick[rows]])
    return out


def _slice_groups(voxels: _SliceVoxels) -> np.ndarray:
    """A number per annotated voxel naming its slice: axis * 10**6 + its number along the axis."""
    return voxels.axis * 10**6 + voxels.slice_number


def _left_out(voxels: _SliceVoxels, pick: np.ndarray) -> list[tuple[int, int]]:
    """The (axis, slice number) of the slices the picked voxels lie on."""
    return [divmod(int(g), 10**6) for g in np.unique(_slice_groups(voxels)[pick])]


def _held_out_candidates(voxels: _SliceVoxels, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the annotated voxels on at most ``limit`` randomly chosen slices (0: all slices)."""
    groups = _slice_groups(voxels)
    chosen = np.unique(groups)
    if not limit or len(chosen) <= limit:
        return np.arange(len(groups))
    return np.flatnonzero(np.isin(groups, rng.choice(chosen, limit, replace=False)))


def balanced_sample(rng: np.random.Generator, count: int, n: int, near: np.ndarray) -> np.ndarray:
    """Half uniform, half from the ``near`` (boundary) subset; with replacement if needed."""
    n_near = n // 2 if near.any() else 0
    uniform = rng.choice(count, n - n_near, replace=count < n - n_near)
    if not n_near:
        return uniform
    near_idx = np.flatnonzero(near)
    return np.concatenate([uniform, near_idx[rng.choice(len(near_idx), n_near, replace=len(near_idx) < n_near)]])


def _check_given_slices(sparse: np.ndarray, slices: dict[int, list[int]]) -> dict[int, list[int]]:
    """Slices the user named: in range, and holding some of the annotation."""
    for axis, idx in slices.items():
        bad = [i for i in idx if not 0 <= i < sparse.shape[axis]]
        if bad:
            raise SliceError(f"slice index {bad[0]} is out of range along axis {axis} (0 to {sparse.shape[axis] - 1})")
    if not any(np.moveaxis(sparse, axis, 0)[list(idx)].any() for axis, idx in slices.items() if idx):
        raise SliceError("the slices given hold no annotation: name the slices that were annotated")
    return slices


def _as_mask(sparse: np.ndarray) -> np.ndarray:
    """The annotation as a boolean mask (a bool array as it is: no pass over a whole CT grid)."""
    sparse = np.asarray(sparse)
    return sparse if sparse.dtype == bool else sparse > 0


def annotated_slices(sparse: np.ndarray, slices: dict[int, list[int]] | None = None,
                     within: tuple[slice, ...] | None = None
                     ) -> tuple[dict[int, list[int]], tuple[np.ndarray, np.ndarray]]:
    """The annotated slices of a sparse mask (found, or ``slices`` checked), at least two, and its
    foreground's span ``[lo, hi)`` (see :func:`foreground_span` for ``within``); :class:`SliceError`
    otherwise. Costs what the annotation's box does: callers check an input with it before handing
    the preparation to another thread."""
    sparse = _as_mask(sparse)
    fg_lo, fg_hi = foreground_span(sparse, within)
    if slices is None:  # slices without foreground cannot be found: look inside the foreground's box only
        found = find_annotated_slices(sparse[tuple(slice(a, b) for a, b in zip(fg_lo, fg_hi))])
        slices = {a: [i + int(fg_lo[a]) for i in idx] for a, idx in found.items()}
    else:
        slices = _check_given_slices(sparse, slices)
    if sum(len(v) for v in slices.values()) < 2:
        raise SliceError("only one annotated slice: annotate at least two slices (or slices along two axes) "
                         "so that the shape's extent can be inferred")
    return {a: sorted(set(int(i) for i in idx)) for a, idx in slices.items() if len(idx)}, (fg_lo, fg_hi)


def prepare_case(sparse: np.ndarray, affine: np.ndarray, cfg: ShapeConfig, slices: dict[int, list[int]] | None = None,
                 rng: np.random.Generator | None = None, encoder: SliceEncoder | None = None,
                 check: Callable[[], None] | None = None, within: tuple[slice, ...] | None = None) -> Case:
    """Find the annotated slices (unless given), build the evidence (with ``encoder``'s context
    when the prior has one), region, frame and context. ``check()``, if given, is called between
    the phases: it may raise to stop a preparation nobody waits for any more (a superseded preview).
    ``within``, a box known to hold all of the annotation, spares a pass over the whole grid.

    The context the fit sees is half annotated voxels with the full evidence (the annotations
    must be honoured) and half with each slice held out (see :func:`_held_out_features`).
    """
    t0 = time.perf_counter()
    sparse = _as_mask(sparse)
    if sparse.ndim != 3:
        raise SliceError(f"expected a 3D label map, got {sparse.ndim}D")
    slices, (fg_lo, fg_hi) = annotated_slices(sparse, slices, within)
    spc = spacing(affine)
    roi_lo, roi_hi = region_of_interest(fg_lo, fg_hi, slices, spc, cfg.margin_mm, sparse.shape)
    grid = None if encoder is None else EvidenceGrid(roi_lo, roi_hi, spc, cfg.encoder_pitch_mm, encoder.grid_multiple)
    offset, end = _crop_box(fg_lo, fg_hi, roi_lo, roi_hi, slices, spc, sparse.shape, grid)
    crop = sparse[tuple(slice(a, b) for a, b in zip(offset, end))]
    check = check or (lambda: None)
    check()
    evidence = SliceEvidence(crop, {a: [i - int(offset[a]) for i in idx] for a, idx in slices.items()}, spc)
    lo, hi = roi_lo - offset, roi_hi - offset  # in the crop, until the case is made
    if encoder is not None:
        evidence = EncodedEvidence(evidence, encoder, lo, hi, cfg.encoder_pitch_mm)
    check()
    centre = ijk_to_ras((fg_lo + fg_hi - 1) / 2.0, affine)
    frame = NormalizedFrame(tuple(float(c) for c in centre), cfg.scale_mm)
    rng = np.random.default_rng(0) if rng is None else rng
    band = 2.0 * float(evidence.spacing.max())
    voxels = _slice_voxels(crop, evidence, lo, hi)
    near = voxels.distance <= band
    exact = balanced_sample(rng, len(near), cfg.context_points // 2, near)
    eligible = _held_out_candidates(voxels, cfg.held_out_slices, rng)
    held = eligible[balanced_sample(rng, len(eligible), cfg.context_points - cfg.context_points // 2, near[eligible])]
    pick = np.concatenate([exact, held])
    evidence.prepare_without(_left_out(voxels, held))  # the registrations and encoder runs, in one batch each
    check()
    feats = np.concatenate([evidence.features(voxels.ijk[exact]), _held_out_features(evidence, voxels, held)])
    evidence.forget_left_out()  # what was made without slices (encoder grids as large as the region) is done with
    context = (torch.from_numpy(frame.ijk_to_network(voxels.ijk[pick] + offset, affine)), torch.from_numpy(feats),
               torch.from_numpy(voxels.labels[pick]))
    return Case(evidence, np.asarray(affine, np.float64), frame, roi_lo, roi_hi, context, offset, sparse.shape,
                {"prepare": time.perf_counter() - t0})

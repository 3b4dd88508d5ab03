"""A sparse input prepared for fitting: slice evidence, the decoded region, the frame and the
points the fit sees (the annotated slices' voxels and held-out pseudo-labels)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..frames import NormalizedFrame, ijk_to_ras, spacing
from ..runtime import thread_map
from .encoder import EncodedEvidence, SliceEncoder
from .model import ShapeConfig
from .slices import SliceError, SliceEvidence, find_annotated_slices


@dataclass
class Case:
    """A sparse input prepared for fitting: evidence, decoded region, frame, context points."""

    evidence: SliceEvidence | EncodedEvidence
    affine: np.ndarray
    frame: NormalizedFrame
    lo: np.ndarray  # decoded region [lo, hi) in voxel indices
    hi: np.ndarray
    context: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # coords, evidence, labels (see prepare_case)
    timings: dict[str, float] = field(default_factory=dict)


def region_of_interest(sparse: np.ndarray, evidence: SliceEvidence, margin_mm: float):
    """Box ``[lo, hi)`` in voxel indices where the shape can be: the annotated foreground's
    box, grown by the largest slice gap along annotated axes and by ``margin_mm`` everywhere."""
    fg = np.argwhere(sparse)
    lo = fg.min(0).astype(np.float64)
    hi = fg.max(0).astype(np.float64) + 1
    grow = margin_mm / evidence.spacing
    for a, idx in evidence.slices.items():
        gaps = np.diff(idx)
        grow[a] = max(grow[a], float(gaps.max()) if len(gaps) else margin_mm / evidence.spacing[a])
    lo = np.maximum(np.floor(lo - grow), 0).astype(int)
    hi = np.minimum(np.ceil(hi + grow), np.asarray(sparse.shape)).astype(int)
    return lo, hi


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
    neighbours is the case's own interpolation problem and gives the test-time fit its signal."""
    out = np.empty((len(pick), evidence.num_features), np.float32)
    groups = voxels.axis[pick] * 10**6 + voxels.slice_number[pick]

    def fill_without(group: int) -> None:
        a, n = divmod(int(group), 10**6)
        rows = groups == group
        out[rows] = evidence.without(a, n).features(voxels.ijk[pick[rows]])

    thread_map(fill_without, np.unique(groups))  # each group writes its own rows
    return out


def _held_out_candidates(voxels: _SliceVoxels, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the annotated voxels on at most ``limit`` randomly chosen slices (0: all slices)."""
    groups = voxels.axis * 10**6 + voxels.slice_number
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


def prepare_case(sparse: np.ndarray, affine: np.ndarray, cfg: ShapeConfig, slices: dict[int, list[int]] | None = None,
                 rng: np.random.Generator | None = None, encoder: SliceEncoder | None = None) -> Case:
    """Find the annotated slices (unless given), build the evidence (with ``encoder``'s context
    when the prior has one), region, frame and context.

    The context the fit sees is half annotated voxels with the full evidence (the annotations
    must be honoured) and half with each slice held out (see :func:`_held_out_features`).
    """
    t0 = time.perf_counter()
    sparse = np.asarray(sparse) > 0
    if sparse.ndim != 3:
        raise SliceError(f"expected a 3D label map, got {sparse.ndim}D")
    if not sparse.any():
        raise SliceError("the input has no foreground: annotate at least two slices of the structure")
    slices = find_annotated_slices(sparse) if slices is None else _check_given_slices(sparse, slices)
    if sum(len(v) for v in slices.values()) < 2:
        raise SliceError("only one annotated slice: annotate at least two slices (or slices along two axes) "
                         "so that the shape's extent can be inferred")
    evidence = SliceEvidence(sparse, slices, spacing(affine))
    lo, hi = region_of_interest(sparse, evidence, cfg.margin_mm)
    if encoder is not None:
        evidence = EncodedEvidence(evidence, encoder, lo, hi, cfg.encoder_pitch_mm)
    fg = np.argwhere(sparse)
    centre = ijk_to_ras((fg.min(0) + fg.max(0)) / 2.0, affine)
    frame = NormalizedFrame(tuple(float(c) for c in centre), cfg.scale_mm)
    rng = np.random.default_rng(0) if rng is None else rng
    band = 2.0 * float(evidence.spacing.max())
    voxels = _slice_voxels(sparse, evidence, lo, hi)
    near = voxels.distance <= band
    exact = balanced_sample(rng, len(near), cfg.context_points // 2, near)
    eligible = _held_out_candidates(voxels, cfg.held_out_slices, rng)
    held = eligible[balanced_sample(rng, len(eligible), cfg.context_points - cfg.context_points // 2, near[eligible])]
    pick = np.concatenate([exact, held])
    feats = np.concatenate([evidence.features(voxels.ijk[exact]), _held_out_features(evidence, voxels, held)])
    context = (torch.from_numpy(frame.ijk_to_network(voxels.ijk[pick], affine)), torch.from_numpy(feats),
               torch.from_numpy(voxels.labels[pick]))
    return Case(evidence, np.asarray(affine, np.float64), frame, lo, hi, context,
                {"prepare": time.perf_counter() - t0})


def network_inputs(evidence: SliceEvidence | EncodedEvidence, frame: NormalizedFrame, affine, ijk: np.ndarray):
    coords = torch.from_numpy(frame.ijk_to_network(ijk, affine))
    return coords, torch.from_numpy(evidence.features(ijk))

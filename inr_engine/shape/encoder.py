"""Non-local context for shape completion: a 3D CNN over the slice evidence.

The occupancy INR sees each point through per-point features of the annotated slices
(:mod:`.slices`), which cannot tell how a structure typically continues between slices that
are 20 mm apart. :class:`SliceEncoder`, a small MONAI U-Net, reads those features on a grid of
fixed physical pitch over the decoded region and predicts an occupancy logit there (a
correction of the interpolated signed distance). :class:`EncodedEvidence` samples that grid
trilinearly at any point and appends it to the evidence, so the INR, its held-out context and
its decoding stay resolution-independent. The grid's pitch is the prior's, not the input's: a
128^3 volume at 0.5 mm costs the encoder what a 64^3 volume at 1 mm does.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from monai.networks.nets import UNet
from scipy import ndimage
from torch import nn

from .slices import NUM_FEATURES, SliceEvidence

ENCODER_LOGIT_SCALE = 8.0  # the encoder's logit enters the INR as clip(logit / scale, -4, 4)
SDF_GAIN = 4.0  # the encoder's logit = U-Net correction - SDF_GAIN * interpolated signed distance (scaled)


def grid_multiple(channels: tuple[int, ...]) -> int:
    """What an encoder grid's sides are padded to a multiple of: one halving per U-Net level."""
    return 2 ** (len(channels) - 1)


class SliceEncoder(nn.Module):
    """U-Net from the slice evidence on a grid (NUM_FEATURES channels) to an occupancy logit.

    Each entry of ``channels`` is a level; all but the last halve the grid, so more levels see
    further (the convolutions of three levels see 23 grid points, of five 95).
    """

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        self.grid_multiple = grid_multiple(channels)
        self.unet = UNet(3, NUM_FEATURES, 1, channels=channels, strides=(2,) * (len(channels) - 1),
                         num_res_units=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, NUM_FEATURES, D, H, W) evidence grid -> (B, D, H, W) logits."""
        return self.unet(features)[:, 0] - SDF_GAIN * features[:, -1]


class EvidenceGrid:
    """A grid ``lo + n * step`` (voxel index units) over a box, at a given physical pitch, its sides
    padded to a ``multiple`` of points (what the encoder's levels halve)."""

    def __init__(self, lo, hi, spacing_mm: np.ndarray, pitch_mm: float, multiple: int):
        self.step = pitch_mm / np.asarray(spacing_mm, np.float64)
        dims = np.maximum(np.ceil((np.asarray(hi, np.float64) - lo) / self.step), 1).astype(int)
        self.dims = tuple(int(d) for d in -(-dims // multiple) * multiple)
        # pad on both sides by whole steps (a 1 mm grid on a 1 mm volume stays on the voxels)
        self.lo = np.asarray(lo, np.float64) - (np.asarray(self.dims) - dims) // 2 * self.step

    def window(self, max_side: int, rng: np.random.Generator) -> EvidenceGrid:
        """A random window of at most ``max_side`` points per side (itself when it fits)."""
        if max(self.dims) <= max_side:
            return self
        out = copy.copy(self)
        out.dims = tuple(min(d, max_side) for d in self.dims)
        start = np.array([rng.integers(d - w + 1) for d, w in zip(self.dims, out.dims)])
        out.lo = self.lo + start * self.step
        return out

    def along(self) -> list[np.ndarray]:
        """The grid's positions (voxel units) along each axis."""
        return [lo + np.arange(d) * step for lo, d, step in zip(self.lo, self.dims, self.step)]

    def points(self) -> np.ndarray:
        """(D * H * W, 3) the grid's points, in C order."""
        return np.stack(np.meshgrid(*self.along(), indexing="ij"), -1).reshape(-1, 3)

    def features(self, evidence: SliceEvidence) -> np.ndarray:
        """(D, H, W, NUM_FEATURES) evidence on the grid: channels last, as the encoder reads it best."""
        return evidence.grid_features(self.along())

    def features_between(self, evidence: SliceEvidence, base: np.ndarray, axis: int, low: float, high: float,
                         out: np.ndarray) -> None:
        """``base`` (this grid's :meth:`features` of other evidence) into ``out``, with the points whose
        voxel coordinate along ``axis`` lies in ``[low, high)`` computed from ``evidence``: what
        changes when a slice is left out, without recomputing the rest of the grid."""
        along = self.along()
        picked = np.flatnonzero((along[axis] >= low) & (along[axis] < high))  # consecutive grid points
        out[...] = base
        if len(picked):
            along[axis] = along[axis][picked]
            index = [slice(None)] * 3
            index[axis] = slice(int(picked[0]), int(picked[-1]) + 1)
            out[tuple(index)] = evidence.grid_features(along)

    def sample(self, values: np.ndarray, ijk: np.ndarray) -> np.ndarray:
        """Trilinear samples of ``values`` (on this grid) at voxel positions ``ijk`` (N, 3)."""
        local = ((np.asarray(ijk, np.float64) - self.lo) / self.step).T
        return ndimage.map_coordinates(values, local, order=1, mode="nearest")


ENCODER_BATCH_POINTS = 2**21  # grid points the encoder reads in one call (its activations' memory)


def encoder_logits(encoder: SliceEncoder, grids: np.ndarray) -> list[np.ndarray]:
    """The encoder's logits (float32, grid dims) from each of the (B, D, H, W, NUM_FEATURES) evidence
    grids (:meth:`EvidenceGrid.features`).

    The grids run in batches, channels last: oneDNN's 3D convolutions on the CPU then take a quarter
    to a half of the time per grid. A grid alone runs channels last too: 0.08 s for a lung's
    64x96x116 grid on 2 threads, against 0.20 s channels first (within 10% either way on grids
    of 30^3 points or fewer).
    """
    device = next(encoder.parameters()).device
    out: list[np.ndarray] = []
    per_call = max(1, ENCODER_BATCH_POINTS // max(int(np.prod(grids.shape[1:4])), 1))
    with torch.no_grad():
        for start in range(0, len(grids), per_call):
            batch = torch.from_numpy(grids[start:start + per_call]).permute(0, 4, 1, 2, 3)
            out.extend(x.float().cpu().numpy() for x in encoder(batch.to(device)).contiguous())
    return out


class EncodedEvidence:
    """Slice evidence plus one column: the encoder's logit, sampled at each point.

    Behaves like :class:`~.slices.SliceEvidence` for the shape-completion code (``features``,
    ``without``, ``prepare_without``, ``known_mask``, ``slices``, ``shape``, ``spacing``); leaving
    a slice out runs the encoder again on evidence without it, so held-out context stays honest.
    The encoder runs when logits are first needed, together with those of the slices
    :meth:`prepare_without` was told will be left out.
    """

    def __init__(self, evidence: SliceEvidence, encoder: SliceEncoder, lo, hi, pitch_mm: float):
        self.base = evidence
        self.encoder = encoder
        self.box = (np.asarray(lo), np.asarray(hi))
        self.pitch_mm = pitch_mm
        self.grid = EvidenceGrid(lo, hi, evidence.spacing, pitch_mm, encoder.grid_multiple)
        self._grid_features: np.ndarray | None = None
        self._logits: np.ndarray | None = None
        self._left_out: dict[tuple[int, int], EncodedEvidence] = {}  # by (axis, n), see without

    @property
    def grid_features(self) -> np.ndarray:
        """The evidence on :attr:`grid` (:meth:`EvidenceGrid.features`)."""
        if self._grid_features is None:
            self._grid_features = self.grid.features(self.base)
        return self._grid_features

    @property
    def logits(self) -> np.ndarray:
        """The encoder's logits on :attr:`grid`."""
        if self._logits is None:
            self.prepare_without([])
        return self._logits

    num_features = NUM_FEATURES + 1

    @property
    def slices(self):
        return self.base.slices

    @property
    def shape(self):
        return self.base.shape

    @property
    def spacing(self):
        return self.base.spacing

    @property
    def axes(self):
        return self.base.axes

    def known_mask(self) -> np.ndarray:
        return self.base.known_mask()

    def features(self, ijk: np.ndarray) -> np.ndarray:
        ijk = np.asarray(ijk, np.float64).reshape(-1, 3)
        column = np.clip(self.grid.sample(self.logits, ijk) / ENCODER_LOGIT_SCALE, -4.0, 4.0)
        return np.concatenate([self.base.features(ijk), column[:, None].astype(np.float32)], 1)

    def prepare_without(self, left_out: list[tuple[int, int]]) -> None:
        """Make the evidence without each ``(axis, n)`` of ``left_out``, running the encoder once
        for all of them (and for this evidence, if it has not run yet)."""
        self.base.prepare_without(left_out)
        todo = [key for key in dict.fromkeys(left_out) if key not in self._left_out]
        run_this = self._logits is None
        if not todo and not run_this:
            return
        grids = np.empty((len(todo) + run_this, *self.grid_features.shape), np.float32)  # the encoder's batch
        others = [self._without_slice(*key, grids[b]) for b, key in enumerate(todo)]
        if run_this:
            grids[-1] = self.grid_features
        logits = encoder_logits(self.encoder, grids)
        for key, other, values in zip(todo, others, logits):
            other._logits = values
            self._left_out[key] = other
        if run_this:
            self._logits = logits[-1]

    def forget_left_out(self) -> None:
        """Drop the evidence made without slices (its encoder grids): a case needs it only for its context."""
        self._left_out.clear()
        self.base.forget_left_out()

    def without(self, axis: int, n: int) -> EncodedEvidence:
        if (axis, n) not in self._left_out:
            self.prepare_without([(axis, n)])
        return self._left_out[(axis, n)]

    def _without_slice(self, axis: int, n: int, grid_features: np.ndarray) -> EncodedEvidence:
        """The evidence without slice ``n`` along ``axis``, its encoder not run yet; its features on
        the grid are written to ``grid_features``."""
        other = copy.copy(self)
        other.base = self.base.without(axis, n)
        positions = self.base.axes[axis].positions  # leaving slice n out changes the evidence from slice n - 2
        low = positions[n - 2] if n >= 2 else -np.inf  # (its next-but-one neighbour) to slice n + 2
        high = positions[n + 2] if n + 2 < len(positions) else np.inf
        self.grid.features_between(other.base, self.grid_features, axis, low, high, grid_features)
        other._grid_features, other._logits, other._left_out = None, None, {}  # the encoder's batch holds them
        return other

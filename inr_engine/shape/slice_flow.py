"""Correspondence between two annotated slices: a dense in-plane displacement field.

Shape-based interpolation blends the signed distance maps of the two slices around a point;
where the structure moves, bends, splits or merges between them, blending the maps at the
same in-plane position leaves holes (a thin bone 20 mm away from where it was). Registering
the previous slice's signed distance map onto the next one's (ITK's symmetric-forces demons,
coarse to fine, started from the centroid displacement) gives each point the path along which
to blend instead. Registration happens on the box where either slice is near its contour; the
field is extended from that box by its edge values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

FLOW_LEVELS_MM = (4.0, 2.0)  # pixel size of the pyramid's levels, coarse to fine (finer adds time, not accuracy)
FLOW_ITERATIONS = 20  # demons iterations per level
FLOW_SMOOTHING_PIXELS = 1.5  # Gaussian regularisation of the field, in pixels of the level
FLOW_MAX_STEP = 1.0  # largest update per iteration (ITK's default 0.5 is too slow for large moves)
BOX_MARGIN_MM = 12.0  # registration box: where either slice is within this distance of its contour
MIN_LEVEL_SIZE = 4  # a level is used only when the shrunk box keeps at least this many pixels per side


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
        local = (np.asarray(uv, np.float64) - self.origin).T
        return np.stack([ndimage.map_coordinates(self.field[c], local, order=1, mode="nearest") for c in range(2)], 1)


def slice_flow(sdf_prev: np.ndarray, sdf_next: np.ndarray, centroid_shift: np.ndarray,
               sampling: tuple[float, float]) -> SliceFlow:
    """Register ``sdf_prev`` onto ``sdf_next`` (signed distances in mm on the same plane grid of
    pixel size ``sampling`` mm).

    ``centroid_shift`` (2,), the in-plane centroid displacement from the previous slice to the
    next, starts the registration; it is also the answer when either slice is empty.
    """
    near = (sdf_prev < BOX_MARGIN_MM) | (sdf_next < BOX_MARGIN_MM)
    if not (sdf_prev < 0).any() or not (sdf_next < 0).any() or not near.any():
        return SliceFlow.constant(centroid_shift)
    where = np.argwhere(near)
    lo, hi = where.min(0), where.max(0) + 1
    box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]))
    shrink = [[max(1, round(level_mm / s)) for s in sampling] for level_mm in FLOW_LEVELS_MM]
    field = _demons(sdf_prev[box], sdf_next[box], np.asarray(centroid_shift, np.float64), shrink)
    return SliceFlow(lo.astype(np.float64), field)


def _demons(moving: np.ndarray, fixed: np.ndarray, initial: np.ndarray, shrink: list[list[int]]) -> np.ndarray:
    """ITK symmetric-forces demons over the ``shrink`` pyramid (per level, factors along the two
    array axes); returns the (2, n_b, n_c) prev -> next displacement in pixels."""
    fixed_image = sitk.GetImageFromArray(np.ascontiguousarray(fixed, np.float32))
    moving_image = sitk.GetImageFromArray(np.ascontiguousarray(moving, np.float32))
    # ITK's field maps a fixed (next) point to the moving (previous) one, in (x, y) = (column, row)
    # order: the previous -> next displacement is its negative, components swapped.
    start = np.empty(fixed.shape + (2,))
    start[..., 0], start[..., 1] = -initial[1], -initial[0]
    field = sitk.GetImageFromArray(start, isVector=True)
    field.CopyInformation(fixed_image)
    levels = [f for f in shrink if min(n // k for n, k in zip(fixed.shape, f)) >= MIN_LEVEL_SIZE] or [[1, 1]]
    for level in levels:
        level_fixed, level_moving = (_shrunk(im, level) for im in (fixed_image, moving_image))
        field = _resampled(field, level_fixed)
        demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
        demons.SetNumberOfIterations(FLOW_ITERATIONS)
        demons.SetStandardDeviations(FLOW_SMOOTHING_PIXELS)
        demons.SetMaximumUpdateStepLength(FLOW_MAX_STEP)
        demons.SetNumberOfThreads(1)  # small images: threading costs more than it saves
        field = demons.Execute(level_fixed, level_moving, field)
    xy = sitk.GetArrayFromImage(_resampled(field, fixed_image))
    return np.stack([-xy[..., 1], -xy[..., 0]]).astype(np.float32)


def _shrunk(image, factors: list[int]):
    if max(factors) == 1:
        return image
    smooth = sitk.SmoothingRecursiveGaussianImageFilter()
    smooth.SetSigma([0.5 * f for f in factors[::-1]])
    smooth.SetNumberOfThreads(1)
    shrink = sitk.ShrinkImageFilter()
    shrink.SetShrinkFactors(factors[::-1])  # ITK's order is (x, y) = (column, row)
    shrink.SetNumberOfThreads(1)
    return shrink.Execute(smooth.Execute(image))


def _resampled(field, reference):
    resample = sitk.ResampleImageFilter()
    resample.SetReferenceImage(reference)
    resample.SetInterpolator(sitk.sitkLinear)
    resample.SetOutputPixelType(sitk.sitkVectorFloat64)
    resample.SetNumberOfThreads(1)
    return resample.Execute(field)

"""Coordinate frames: voxel grids with a 4x4 affine, and the network's normalized frame.

Convention (stored in every prior as ``FRAME_CONVENTION``):

* Volumes carry an ``affine`` that maps voxel indices ``(i, j, k, 1)`` to **RAS** millimetres,
  as NIfTI does. Readers convert other conventions (NRRD's LPS) to RAS on load, and writers
  convert back, so a file's geometry survives a round trip exactly.
* The network sees ``u = (x_ras - center) / scale`` where ``center`` (RAS mm) is chosen per
  case by the method (shape completion: the centre of the annotated foreground) and ``scale``
  (mm) is fixed per prior. Rotation is kept: oblique volumes are seen in patient space, so a
  prior learned on axis-aligned scans applies to oblique ones.
* Anisotropic spacing needs no special case: voxel positions are mapped through the affine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FRAME_CONVENTION = "ijk-affine-to-ras-mm; u=(ras-center)/scale; v1"


class GeometryError(ValueError):
    """A voxel grid or affine that cannot be used."""


def validate_affine(affine: np.ndarray) -> np.ndarray:
    """Return ``affine`` as float64 4x4 after checking it is finite and invertible."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise GeometryError(f"affine must be 4x4, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise GeometryError("affine contains NaN or infinite values")
    if not np.allclose(a[3], [0, 0, 0, 1]):
        raise GeometryError(f"affine's last row must be [0, 0, 0, 1], got {a[3].tolist()}")
    if abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise GeometryError("affine is singular (zero voxel spacing?)")
    return a


def spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel spacing in mm along i, j, k (column norms of the linear part), to a nanometre.

    The rounding drops the last bits a geometry picks up on its way through other software
    (Slicer's IJK-to-RAS matrices differ from the file's by 1e-16): grids sized from the spacing
    (the encoder's, the crops') would otherwise gain or lose a row when a size is a whole number of
    steps, and the same annotation would complete differently in Slicer and on the command line.
    """
    return np.round(np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0), 9)


def ijk_to_ras(ijk: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Map (..., 3) voxel indices (possibly fractional) to RAS millimetres."""
    a = np.asarray(affine, dtype=np.float64)
    return np.asarray(ijk, dtype=np.float64) @ a[:3, :3].T + a[:3, 3]


def ras_to_ijk(ras: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`ijk_to_ras`."""
    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    return np.asarray(ras, dtype=np.float64) @ inv[:3, :3].T + inv[:3, 3]


def grid_ijk(shape: tuple[int, int, int], step: float = 1.0, start=(0.0, 0.0, 0.0), stop=None) -> np.ndarray:
    """Voxel-index coordinates of a (possibly finer) grid, shape (ni, nj, nk, 3).

    ``step`` < 1 samples between voxel centres (e.g. 0.5 for a mesh twice as fine).
    """
    stop = shape if stop is None else stop
    axes = [np.arange(b, e - 1 + 1e-6, step) for b, e in zip(start, stop)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def foreground_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """The bounding box of ``mask``'s foreground grown by ``margin`` voxels (clipped to the grid),
    as slices; None if the mask is empty."""
    mask = np.asarray(mask)
    if mask.dtype == bool:
        mask = mask.view(np.uint8)
    # a maximum of unsigned values is 0 only where all are (twice as fast as any); any for the rest (NaN, negatives)
    nonzero = (lambda x, axes: x.max(axis=axes) > 0) if mask.dtype.kind == "u" else (lambda x, axes: x.any(axis=axes))
    box = [slice(0, n) for n in mask.shape]
    for a in range(mask.ndim):  # each axis within the box found so far: one pass over the grid, then over crops
        span = np.flatnonzero(nonzero(mask[tuple(box)], tuple(b for b in range(mask.ndim) if b != a)))
        if len(span) == 0:
            return None
        box[a] = slice(box[a].start + int(span[0]), box[a].start + int(span[-1]) + 1)
    return tuple(slice(max(b.start - margin, 0), min(b.stop + margin, n)) for b, n in zip(box, mask.shape))


@dataclass(frozen=True)
class NormalizedFrame:
    """The network frame: ``u = (ras - center) / scale``."""

    center: tuple[float, float, float]
    scale: float

    def to_network(self, ras: np.ndarray) -> np.ndarray:
        return ((np.asarray(ras, dtype=np.float64) - np.asarray(self.center)) / self.scale).astype(np.float32)

    def from_network(self, u: np.ndarray) -> np.ndarray:
        return np.asarray(u, dtype=np.float64) * self.scale + np.asarray(self.center)

    def ijk_to_network(self, ijk: np.ndarray, affine: np.ndarray) -> np.ndarray:
        return self.to_network(ijk_to_ras(ijk, affine))

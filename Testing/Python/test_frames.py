"""Coordinate frames: IJK <-> RAS with oblique, anisotropic affines; the network frame; refusals."""

from __future__ import annotations

import numpy as np
import pytest

from inr_engine.frames import (
    GeometryError,
    NormalizedFrame,
    foreground_box,
    grid_ijk,
    ijk_to_ras,
    ras_to_ijk,
    spacing,
    validate_affine,
)

OBLIQUE = [
    dict(spacing=(1.0, 1.0, 1.0), angles_deg=(0, 0, 0), origin=(0, 0, 0)),
    dict(spacing=(0.7, 1.3, 3.0), angles_deg=(20, -35, 50), origin=(-120.5, 33.25, 7.0)),
    dict(spacing=(0.98, 0.98, 2.5), angles_deg=(0, 0, 180), origin=(250.0, 180.0, -400.0)),
    dict(spacing=(2.0, 0.5, 1.1), angles_deg=(-80, 10, -15), origin=(1.0, 2.0, 3.0)),
]


@pytest.mark.parametrize("geometry", OBLIQUE)
def test_ijk_ras_round_trip(affine_factory, geometry):
    affine = affine_factory(**geometry)
    rng = np.random.default_rng(0)
    ijk = rng.uniform(-5, 40, size=(500, 3))
    ras = ijk_to_ras(ijk, affine)
    # Same as the homogeneous matrix product.
    homogeneous = np.c_[ijk, np.ones(len(ijk))] @ affine.T
    np.testing.assert_allclose(ras, homogeneous[:, :3], rtol=0, atol=1e-9)
    np.testing.assert_allclose(ras_to_ijk(ras, affine), ijk, rtol=0, atol=1e-9)
    # Distances between voxel neighbours are the spacing, whatever the rotation.
    np.testing.assert_allclose(spacing(affine), geometry["spacing"], rtol=1e-12)
    step = ijk_to_ras(np.eye(3), affine) - ijk_to_ras(np.zeros(3), affine)
    np.testing.assert_allclose(np.linalg.norm(step, axis=1), geometry["spacing"], rtol=1e-12)


def test_ijk_to_ras_keeps_leading_dimensions(affine_factory):
    affine = affine_factory(**OBLIQUE[1])
    ijk = grid_ijk((3, 4, 5))
    assert ijk.shape == (3, 4, 5, 3)
    ras = ijk_to_ras(ijk, affine)
    assert ras.shape == (3, 4, 5, 3)
    np.testing.assert_allclose(ras_to_ijk(ras, affine), ijk, atol=1e-9)
    np.testing.assert_allclose(ras[1, 2, 3], affine[:3, :3] @ [1, 2, 3] + affine[:3, 3])


def test_grid_ijk_fine_step():
    grid = grid_ijk((3, 3, 3), step=0.5)
    assert grid.shape == (5, 5, 5, 3)
    np.testing.assert_allclose(grid[-1, -1, -1], [2, 2, 2])
    np.testing.assert_allclose(grid[1, 0, 0], [0.5, 0, 0])


@pytest.mark.parametrize("geometry", OBLIQUE)
def test_normalized_frame_round_trip(affine_factory, geometry):
    affine = affine_factory(**geometry)
    center_ijk = np.array([10.0, 12.0, 7.0])
    frame = NormalizedFrame(tuple(ijk_to_ras(center_ijk, affine)), 32.0)
    rng = np.random.default_rng(1)
    ijk = rng.uniform(0, 24, size=(200, 3))
    u = frame.ijk_to_network(ijk, affine)
    assert u.dtype == np.float32
    ras = frame.from_network(u)
    np.testing.assert_allclose(ras, ijk_to_ras(ijk, affine), atol=1e-4 * 32)
    np.testing.assert_allclose(ras_to_ijk(ras, affine), ijk, atol=1e-3)
    # The centre maps to the origin, and distances scale by 1/scale (rotation kept).
    np.testing.assert_allclose(frame.ijk_to_network(center_ijk[None], affine), 0, atol=1e-6)
    d_ras = np.linalg.norm(ijk_to_ras(ijk[0], affine) - ijk_to_ras(ijk[1], affine))
    np.testing.assert_allclose(np.linalg.norm(u[0] - u[1]), d_ras / 32.0, rtol=1e-5)


def test_validate_affine_accepts_and_returns_float64(affine_factory):
    affine = affine_factory(**OBLIQUE[1]).astype(np.float32)
    out = validate_affine(affine)
    assert out.dtype == np.float64 and out.shape == (4, 4)
    np.testing.assert_array_equal(out, affine.astype(np.float64))


@pytest.mark.parametrize("bad, message", [
    (np.full((4, 4), np.nan), "NaN"),
    (np.diag([1.0, np.inf, 1.0, 1.0]), "NaN or infinite"),
    (np.diag([1.0, 0.0, 1.0, 1.0]), "singular"),
    (np.array([[1, 2, 3, 0], [2, 4, 6, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float), "singular"),
    (np.eye(3), "4x4"),
    (np.eye(4)[:3], "4x4"),
    (np.eye(5), "4x4"),
    (np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], float), "last row"),
])
def test_validate_affine_refusals(bad, message):
    with pytest.raises(GeometryError, match=message):
        validate_affine(bad)


def test_nan_in_translation_refused():
    affine = np.eye(4)
    affine[1, 3] = np.nan
    with pytest.raises(GeometryError):
        validate_affine(affine)


def test_foreground_box_is_the_grown_bounding_box_clipped_to_the_grid():
    mask = np.zeros((10, 12, 8), bool)
    assert foreground_box(mask) is None
    mask[2, 5:7, 7] = True
    mask[4, 6, 6] = True
    assert foreground_box(mask) == (slice(2, 5), slice(5, 7), slice(6, 8))
    assert foreground_box(mask, margin=3) == (slice(0, 8), slice(2, 10), slice(3, 8))

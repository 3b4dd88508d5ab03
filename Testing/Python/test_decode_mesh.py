"""Grid decoding (chunked, adaptive) and surface meshes in world coordinates (RAS in memory, LPS on disk)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.vtkIOGeometry import vtkSTLReader
from vtkmodules.vtkIOPLY import vtkPLYReader
from vtkmodules.vtkIOXML import vtkXMLPolyDataReader

from inr_engine.decode import chunk_size, decode_box, evaluate_in_chunks
from inr_engine.frames import grid_ijk, ijk_to_ras
from inr_engine.mesh import surface_from_logits, write_mesh

OBLIQUE = dict(spacing=(0.8, 1.1, 2.0), angles_deg=(25, -15, 40), origin=(-30.0, 12.5, 100.0))


class CountingSphere:
    """A sphere's signed distance as the "network": logit = slope * (r - |x - c|), in voxel units."""

    def __init__(self, center, radius, slope=1.0):
        self.center = np.asarray(center, np.float64)
        self.radius = float(radius)
        self.slope = float(slope)
        self.calls = 0
        self.points = 0

    def __call__(self, ijk: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.points += len(ijk)
        return (self.slope * (self.radius - np.linalg.norm(ijk - self.center, axis=-1))).astype(np.float32)


def _sphere_logits_ras(shape, affine, center_ras, radius_mm):
    ras = ijk_to_ras(grid_ijk(shape), affine)
    return (radius_mm - np.linalg.norm(ras - center_ras, axis=-1)).astype(np.float32)


def _points(polydata):
    return vtk_to_numpy(polydata.GetPoints().GetData()).astype(np.float64)


@pytest.mark.parametrize("slope, lo, hi, step", [
    (1.0, (0, 0, 0), (48, 44, 40), 1.0),
    (3.0, (0, 0, 0), (48, 44, 40), 1.0),
    (1.0, (2.5, 1.0, 0.25), (30.5, 29.0, 27.25), 0.5),
])
def test_adaptive_decoding_agrees_with_exact(slope, lo, hi, step):
    fn = CountingSphere((24.3, 21.7, 19.1), 12.6, slope)
    exact = decode_box(fn, lo, hi, step, adaptive=False)
    exact_points = fn.points
    expected_shape = tuple(int(np.ceil((b - a) / step)) for a, b in zip(lo, hi))
    assert exact.shape == expected_shape
    np.testing.assert_allclose(exact, fn(grid_ijk(expected_shape) * step + np.asarray(lo)), rtol=0, atol=0)
    fn.points = 0
    adaptive = decode_box(fn, lo, hi, step, adaptive=True)
    assert adaptive.shape == exact.shape
    agree = np.mean((adaptive > 0) == (exact > 0))
    assert agree > 0.999, agree
    assert fn.points < exact_points  # it skipped evaluating points far from the surface
    # Near the surface the values are exact.
    band = np.abs(adaptive) < 4.0
    np.testing.assert_array_equal(adaptive[band], exact[band])


@pytest.mark.parametrize("slice_index", [13, 14])
def test_adaptive_decoding_keeps_what_lies_on_a_knot_alone(slice_index):
    """An annotated slice can hold what its neighbours do not (a thin structure drawn there only):
    interpolating across the slice would lose it, so a knot is sampled, wherever it lies."""
    sphere = CountingSphere((20, 20, 20), 9.0, 4.0)

    def fn(ijk):
        on_slice = np.abs(ijk[:, 2] - slice_index) < 0.5
        return np.where(on_slice & (np.abs(ijk[:, 0] - 20) < 3), 6.0, sphere(ijk) - 60.0).astype(np.float32)

    exact = decode_box(fn, (0, 0, 0), (40, 40, 40), adaptive=False)
    assert (exact > 0).sum() > 0
    np.testing.assert_array_equal(decode_box(fn, (0, 0, 0), (40, 40, 40), knots={2: [slice_index]}) > 0, exact > 0)


def test_adaptive_decoding_follows_steep_logits():
    """Logits that jump from -10 to 20 at the surface: interpolated values far from 0 can be on the
    wrong side of it, which the samples around them, disagreeing, tell."""
    sphere = CountingSphere((24.3, 21.7, 19.1), 12.6)

    def fn(ijk):
        return np.where(sphere(ijk) > 0, 20.0, -10.0).astype(np.float32)

    exact = decode_box(fn, (0, 0, 0), (48, 44, 40), adaptive=False)
    sphere.points = 0
    adaptive = decode_box(fn, (0, 0, 0), (48, 44, 40))
    np.testing.assert_array_equal(adaptive > 0, exact > 0)
    assert sphere.points < exact.size / 2  # it skipped most voxels


def test_small_boxes_are_decoded_exactly():
    fn = CountingSphere((5, 5, 5), 3.3)
    a = decode_box(fn, (0, 0, 0), (10, 10, 10), adaptive=True)
    b = decode_box(fn, (0, 0, 0), (10, 10, 10), adaptive=False)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("chunk", [1, 7, 1000, 1 << 20])
def test_chunked_evaluation_equals_one_shot(chunk):
    fn = CountingSphere((4, 5, 6), 3.0)
    points = np.random.default_rng(0).uniform(0, 10, size=(2003, 3))
    out = evaluate_in_chunks(fn, points, chunk)
    assert out.dtype == np.float32 and out.shape == (2003,)
    np.testing.assert_array_equal(out, fn(points))
    assert fn.calls == int(np.ceil(2003 / chunk)) + 1


def test_decode_box_chunking_does_not_change_result():
    fn = CountingSphere((20, 18, 16), 9.0, 2.0)
    ref = decode_box(fn, (0, 0, 0), (40, 36, 32), chunk=1 << 22)
    np.testing.assert_array_equal(decode_box(fn, (0, 0, 0), (40, 36, 32), chunk=1500), ref)
    np.testing.assert_array_equal(decode_box(fn, (0, 0, 0), (40, 36, 32), chunk=1500, adaptive=False),
                                  decode_box(fn, (0, 0, 0), (40, 36, 32), chunk=1 << 22, adaptive=False))


def test_chunk_size_budget():
    assert chunk_size(1024, 1024 * 5000) == 5000
    assert chunk_size(10**9, 1) == 1024  # never below a useful minimum
    assert chunk_size(0) >= 1024


# --------------------------------------------------------------------------- meshes
@pytest.mark.parametrize("geometry", [OBLIQUE, dict(spacing=(1, 1, 1), angles_deg=(0, 0, 0), origin=(0, 0, 0))])
def test_sphere_surface_in_ras(affine_factory, geometry):
    affine = affine_factory(**geometry)
    shape = (40, 34, 22)
    center_ras = ijk_to_ras(np.array([19.5, 16.0, 10.5]), affine)
    radius = 11.0
    logits = _sphere_logits_ras(shape, affine, center_ras, radius)
    surface = surface_from_logits(logits, (0, 0, 0), 1.0, affine)
    pts = _points(surface)
    assert len(pts) > 500
    dist = np.linalg.norm(pts - center_ras, axis=1)
    voxel = float(max(geometry["spacing"]))
    assert np.all(np.abs(dist - radius) < voxel), (dist.min(), dist.max())
    assert abs(dist.mean() - radius) < 0.25 * voxel
    # Normals exist and point outwards (consistent orientation).
    normals = vtk_to_numpy(surface.GetPointData().GetNormals())
    outward = np.einsum("ij,ij->i", normals, pts - center_ras)
    assert np.mean(outward > 0) > 0.99 or np.mean(outward < 0) > 0.99


def test_surface_with_offset_and_fine_step(affine_factory):
    affine = affine_factory(**OBLIQUE)
    center_ijk = np.array([25.0, 22.0, 14.0])
    center_ras = ijk_to_ras(center_ijk, affine)
    lo = np.array([12.0, 10.0, 7.0])
    step = 0.5
    n = (np.array([27, 25, 15]) / step).astype(int)
    ras = ijk_to_ras(grid_ijk(tuple(n)) * step + lo, affine)
    logits = (8.0 - np.linalg.norm(ras - center_ras, axis=-1)).astype(np.float32)
    pts = _points(surface_from_logits(logits, lo, step, affine, smoothing_iterations=0))
    dist = np.linalg.norm(pts - center_ras, axis=1)
    assert np.all(np.abs(dist - 8.0) < step * max(OBLIQUE["spacing"]))


def test_empty_surface():
    surface = surface_from_logits(-np.ones((6, 6, 6), np.float32), (0, 0, 0), 1.0, np.eye(4))
    assert surface.GetNumberOfPoints() == 0


def test_surface_is_closed_at_box_border():
    """A shape touching the decoded box's border still gives a closed surface (padding)."""
    logits = np.ones((8, 8, 8), np.float32)
    surface = surface_from_logits(logits, (0, 0, 0), 1.0, np.eye(4), smoothing_iterations=0)
    from vtkmodules.vtkFiltersCore import vtkFeatureEdges

    edges = vtkFeatureEdges()
    edges.SetInputData(surface)
    edges.BoundaryEdgesOn()
    edges.FeatureEdgesOff()
    edges.NonManifoldEdgesOff()
    edges.ManifoldEdgesOff()
    edges.Update()
    assert surface.GetNumberOfPoints() > 0
    assert edges.GetOutput().GetNumberOfLines() == 0


READERS = {".stl": vtkSTLReader, ".ply": vtkPLYReader, ".vtp": vtkXMLPolyDataReader}


@pytest.mark.parametrize("suffix", [".stl", ".ply", ".vtp"])
def test_write_mesh_in_lps(tmp_path, affine_factory, suffix):
    affine = affine_factory(**OBLIQUE)
    center_ras = ijk_to_ras(np.array([15.0, 14.0, 9.0]), affine)
    surface = surface_from_logits(_sphere_logits_ras((30, 28, 18), affine, center_ras, 9.0), (0, 0, 0), 1.0, affine)
    ras = _points(surface)
    path = write_mesh(tmp_path / f"sphere{suffix}", surface)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"sphere{suffix}"]
    reader = READERS[suffix]()
    reader.SetFileName(str(path))
    reader.Update()
    read = reader.GetOutput()
    assert read.GetNumberOfCells() == surface.GetNumberOfCells()
    pts = _points(read)
    expected = ras * np.array([-1.0, -1.0, 1.0])
    tol = 1e-6 if suffix == ".vtp" else 1e-3  # STL and PLY hold float32
    if suffix == ".vtp":
        np.testing.assert_allclose(pts, expected, atol=tol)
    else:
        d, _ = cKDTree(expected).query(pts)
        assert d.max() < tol
        d, _ = cKDTree(pts).query(expected)
        assert d.max() < tol
    # The in-memory surface stays in RAS.
    np.testing.assert_array_equal(_points(surface), ras)


@pytest.mark.parametrize("name", ["mesh.obj", "mesh.vtk", "mesh"])
def test_write_mesh_unsupported_suffix(tmp_path, name):
    surface = surface_from_logits(np.ones((4, 4, 4), np.float32), (0, 0, 0), 1.0, np.eye(4))
    with pytest.raises(ValueError, match="mesh files must end in"):
        write_mesh(tmp_path / name, surface)
    assert list(tmp_path.iterdir()) == []


def test_write_empty_mesh(tmp_path):
    surface = surface_from_logits(-np.ones((4, 4, 4), np.float32), (0, 0, 0), 1.0, np.eye(4))
    path = write_mesh(tmp_path / "empty.vtp", surface)
    reader = vtkXMLPolyDataReader()
    reader.SetFileName(str(path))
    reader.Update()
    assert reader.GetOutput().GetNumberOfPoints() == 0

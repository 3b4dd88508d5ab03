"""Surface meshes from INR outputs: marching cubes (VTK flying edges) in world coordinates.

Meshes are built in RAS millimetres. Files are written in LPS, the coordinate system that 3D
Slicer assumes for STL, PLY and VTP model files, so they load in place over the volume.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy
from vtkmodules.vtkCommonCore import vtkPoints
from vtkmodules.vtkCommonDataModel import vtkImageData, vtkPolyData
from vtkmodules.vtkFiltersCore import vtkFlyingEdges3D, vtkPolyDataNormals, vtkWindowedSincPolyDataFilter
from vtkmodules.vtkIOGeometry import vtkSTLWriter
from vtkmodules.vtkIOPLY import vtkPLYWriter
from vtkmodules.vtkIOXML import vtkXMLPolyDataWriter

from .files import atomic_output
from .frames import ijk_to_ras
from .inputs import MESH_SUFFIXES

RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])


def surface_from_logits(logits: np.ndarray, origin_ijk, step: float, affine: np.ndarray,
                        smoothing_iterations: int = 15) -> vtkPolyData:
    """Iso-surface at logit 0 of a box of logits sampled at ``origin_ijk + step * n``, in RAS mm."""
    padded = np.pad(np.asarray(logits, np.float32), 1, constant_values=-1e3)  # closes the surface
    image = vtkImageData()
    image.SetDimensions(*padded.shape)
    image.GetPointData().SetScalars(numpy_to_vtk(padded.ravel(order="F"), deep=True))
    contour = vtkFlyingEdges3D()
    contour.SetInputData(image)
    contour.SetValue(0, 0.0)
    contour.ComputeNormalsOff()
    contour.Update()
    surface = contour.GetOutput()
    if surface.GetNumberOfPoints() == 0:
        return surface
    grid = vtk_to_numpy(surface.GetPoints().GetData()).astype(np.float64)
    ijk = (grid - 1.0) * step + np.asarray(origin_ijk, np.float64)
    points = vtkPoints()
    points.SetData(numpy_to_vtk(ijk_to_ras(ijk, affine), deep=True))
    surface.SetPoints(points)
    if smoothing_iterations > 0:
        smoother = vtkWindowedSincPolyDataFilter()
        smoother.SetInputData(surface)
        smoother.SetNumberOfIterations(smoothing_iterations)
        smoother.SetPassBand(0.1)
        smoother.NormalizeCoordinatesOn()
        smoother.Update()
        surface = smoother.GetOutput()
    normals = vtkPolyDataNormals()
    normals.SetInputData(surface)
    normals.ConsistencyOn()
    normals.SplittingOff()
    normals.Update()
    return normals.GetOutput()


def write_mesh(path: str | Path, surface: vtkPolyData) -> Path:
    """Write a RAS surface as STL, PLY or VTP in LPS coordinates, atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise ValueError(f"{path}: mesh files must end in {', '.join(MESH_SUFFIXES)}")
    lps = vtkPolyData()
    lps.DeepCopy(surface)
    if lps.GetNumberOfPoints():
        pts = vtk_to_numpy(lps.GetPoints().GetData()) * RAS_TO_LPS
        lps.GetPoints().SetData(numpy_to_vtk(pts, deep=True))
    writer = {".stl": vtkSTLWriter, ".ply": vtkPLYWriter, ".vtp": vtkXMLPolyDataWriter}[suffix]()
    if suffix == ".stl":
        writer.SetFileTypeToBinary()
    with atomic_output(path) as tmp:
        writer.SetFileName(tmp)
        writer.SetInputData(lps)
        if not writer.Write():
            raise OSError(f"VTK could not write {path}")
    return path

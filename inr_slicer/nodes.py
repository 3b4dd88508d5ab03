"""MRML nodes in, engine arrays out: volumes and segments as (array indexed i, j, k; 4x4 affine).

The affine maps voxel indices to the node's own RAS space (its parent transform is not
applied): outputs are placed under the input's parent transform, so they stay aligned with it
whatever that transform does, and a volume is fitted exactly as the CLI fits its file.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk
from vtk.util.numpy_support import vtk_to_numpy


class InputError(ValueError):
    """An input node that cannot be used; nothing in the scene was changed."""


def check_steps(steps, what: str = "steps") -> int:
    """A request's step count: an integer, 0 (the prior's default) or more."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise InputError(f"{what} must be a whole number, 0 (the prior's default) or more, not {steps!r}")
    return int(steps)


def check_text(value, what: str) -> str:
    """A request's text field (a prior's name or file, a device)."""
    if not isinstance(value, str):
        raise InputError(f"{what} must be text, not {value!r}")
    return value


def check_optional_node(node, node_class: str, what: str) -> None:
    """An output node a request may name: none (a new node) or one of ``node_class``."""
    if node is not None and not (hasattr(node, "IsA") and node.IsA(node_class)):
        name = node.GetName() if hasattr(node, "GetName") else repr(node)
        kind = node.GetClassName() if hasattr(node, "GetClassName") else type(node).__name__
        raise InputError(f"the {what} {name!r} is a {kind}, not a {node_class}: choose another node or a new one")


def matrix_to_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def array_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def volume_array(node) -> tuple[np.ndarray, np.ndarray]:
    """A scalar volume node's voxels (a copy, indexed i, j, k) and IJK->RAS affine."""
    if node is None:
        raise InputError("no input volume selected")
    if not node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError(f"{node.GetName()!r} is a {node.GetClassName()}, not a scalar volume")
    image = node.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"volume {node.GetName()!r} holds no image data")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"volume {node.GetName()!r} has {image.GetNumberOfScalarComponents()} components per "
                         "voxel; a single-component (grey-value) volume is needed")
    dims = image.GetDimensions()
    if min(dims) < 2:
        raise InputError(f"volume {node.GetName()!r} is a single 2D slice ({dims[0]} x {dims[1]} x {dims[2]} "
                         "voxels): a 3D volume is needed")
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    return _image_array(image), matrix_to_array(ijk_to_ras)


def oriented_image_array(image) -> tuple[np.ndarray, np.ndarray]:
    """A ``vtkOrientedImageData``'s voxels (a copy, indexed i, j, k) and :func:`oriented_image_grid`'s affine."""
    return _image_array(image), oriented_image_grid(image)[0]


def oriented_image_grid(image) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The affine of a ``vtkOrientedImageData``'s first voxel (its extent need not start at 0), and its shape."""
    image_to_world = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(image_to_world)
    extent = image.GetExtent()
    offset = np.eye(4)
    offset[:3, 3] = extent[::2]
    shape = tuple(max(extent[2 * a + 1] - extent[2 * a] + 1, 0) for a in range(3))
    return matrix_to_array(image_to_world) @ offset, shape


def _image_array(image) -> np.ndarray:
    x0, x1, y0, y1, z0, z1 = image.GetExtent()
    shape = (z1 - z0 + 1, y1 - y0 + 1, x1 - x0 + 1)
    scalars = image.GetPointData().GetScalars()
    if min(shape) <= 0 or scalars is None:
        return np.zeros((0, 0, 0), np.uint8)
    return vtk_to_numpy(scalars).reshape(shape).transpose(2, 1, 0).copy()


def reference_geometry(segmentation_node) -> slicer.vtkOrientedImageData:
    """The segmentation's reference grid (the volume it was drawn on), as an empty image."""
    segmentation = segmentation_node.GetSegmentation()
    name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    geometry = slicer.vtkOrientedImageData()
    serialized = segmentation.GetConversionParameter(name)
    if not serialized or not slicer.vtkSegmentationConverter.DeserializeImageGeometry(serialized, geometry, False):
        raise InputError(f"segmentation {segmentation_node.GetName()!r} has no reference geometry: "
                         "set its source volume in the Segment Editor or the Segmentations module")
    return geometry


def check_output_grid(segmentation_node, affine: np.ndarray, shape: tuple[int, int, int]) -> None:
    """Refuse an output segmentation that holds segments made on another grid: they would not line up."""
    if segmentation_node is None or segmentation_node.GetSegmentation().GetNumberOfSegments() == 0:
        return
    try:
        reference = reference_geometry(segmentation_node)
    except InputError:
        return
    reference_affine, reference_shape = oriented_image_grid(reference)
    if reference_shape != tuple(shape) or not np.allclose(reference_affine, affine, atol=1e-3):
        raise InputError(f"the output segmentation {segmentation_node.GetName()!r} was made on another grid "
                         f"({reference_shape} voxels, not {tuple(shape)}): choose a new output segmentation")


def segment_mask(segmentation_node, segment_id: str) -> tuple[np.ndarray, np.ndarray]:
    """One segment as a boolean mask on the segmentation's reference grid, and that grid's affine."""
    if segmentation_node is None or not segmentation_node.IsA("vtkMRMLSegmentationNode"):
        raise InputError("no input segmentation selected")
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id or "")
    if segment is None:
        raise InputError(f"segmentation {segmentation_node.GetName()!r} has no segment {segment_id!r}")
    reference = reference_geometry(segmentation_node)
    # The segment's own labelmap, in the node's space like the reference grid (the module logic's
    # GetSegmentBinaryLabelmapRepresentation would apply the node's parent transform).
    name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    if segment.GetRepresentation(name) is None and not segmentation_node.CreateBinaryLabelmapRepresentation():
        raise InputError(f"segment {segment.GetName()!r} cannot be converted to a binary labelmap")
    labelmap = segment.GetRepresentation(name)
    resampled = slicer.vtkOrientedImageData()
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        labelmap, reference, resampled, False, True)
    layer, affine = oriented_image_array(resampled)
    mask = layer == segment.GetLabelValue()  # the layer may be shared with other segments
    if not mask.any():
        raise InputError(f"segment {segment.GetName()!r} is empty: paint the structure on a few slices first")
    return mask, affine


def labelmap_mask(node, label: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One label of a label map volume as a boolean mask; ``label`` 0 means its only label."""
    if node is None or not node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError("no input label map selected")
    from inr_engine.inputs import SliceError, input_labels

    array, affine = volume_array(node)
    try:
        present = input_labels(array)  # the engine's checks: integer, finite, not negative, not empty
    except SliceError as exc:
        raise InputError(f"label map {node.GetName()!r}: {exc}") from exc
    if label == 0:
        if len(present) > 1:
            raise InputError(f"label map {node.GetName()!r} has labels {present}: choose which one to complete")
        label = present[0]
    if label not in present:
        raise InputError(f"label map {node.GetName()!r} has no label {label} (labels present: {present})")
    return array == label, affine


def geometry_image(affine: np.ndarray, shape: tuple[int, int, int]) -> slicer.vtkOrientedImageData:
    """An empty oriented image with this grid (for reference geometries)."""
    image = slicer.vtkOrientedImageData()
    image.SetExtent(0, shape[0] - 1, 0, shape[1] - 1, 0, shape[2] - 1)
    image.SetImageToWorldMatrix(array_to_matrix(affine))
    return image

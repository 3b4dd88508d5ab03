"""Shape completion on the Slicer side, shared by MetaShapeReconstruction's logic and the Segment
Editor effect: load a shape completer, and complete a ``vtkOrientedImageData`` label map (the
effect's preview).

No Qt: runs on the ``slicer-core`` wheel as well as in the Slicer application. PyTorch is imported
only when a completer is loaded or a completion runs.
"""

from __future__ import annotations

from vtk.util.numpy_support import vtk_to_numpy

from inr_engine.priors import DEFAULT_PRIORS, SHAPE_COMPLETION_TASK

from .nodes import InputError, check_steps, oriented_image_array


def load_completer(prior: str = "", device: str = "auto"):
    """The shape completer of a bundled prior's name or a prior file ("" = the default)."""
    from inr_engine.priors import load_prior
    from inr_engine.runtime import resolve_device
    from inr_engine.shape.completer import ShapeCompleter

    return ShapeCompleter.from_prior(load_prior(prior or DEFAULT_PRIORS[SHAPE_COMPLETION_TASK],
                                                task=SHAPE_COMPLETION_TASK), resolve_device(device))


def complete_oriented_labelmap(merged, output, completer, steps: int | None = None) -> None:
    """The Segment Editor effect's preview: complete every label of ``merged`` into ``output``.

    Both are ``vtkOrientedImageData``; ``output`` gets ``merged``'s geometry, each voxel the label
    of the completed shape that claims it (overlaps go to the most confident one).
    """
    from inr_engine.shape.complete import complete_labelmap

    steps = None if steps is None else check_steps(steps)
    labels, affine = oriented_image_array(merged)
    if labels.size == 0 or not labels.any():
        raise InputError("no annotated slices to complete: paint the structure on a few slices first")
    completed = complete_labelmap(labels, affine, completer, steps).labels
    output.DeepCopy(merged)  # geometry and scalar type
    extent = merged.GetExtent()
    shape = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    vtk_to_numpy(output.GetPointData().GetScalars()).reshape(shape)[...] = completed.transpose(2, 1, 0)
    output.Modified()

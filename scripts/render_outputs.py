"""Render what the Slicer modules produce on the shipped samples, without the Slicer application.

Runs ``SegmentationLogic`` (MetaSeg on a held-out hippocampus MRI) and ``ReconstructionLogic``
(an adrenal gland from every 8th slice) on a ``slicer-core`` MRML scene, renders the output
segments' closed surfaces and the completed model off screen with VTK, and writes one PNG.
It shows the modules' outputs; it is not a screenshot of the Slicer application.

Example::

    PYTHONPATH=. python scripts/render_outputs.py \\
        --out Resources/Screenshots/INRSegmentation.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import slicer  # noqa: E402
import vtk  # noqa: E402
from vtk.util.numpy_support import vtk_to_numpy  # noqa: E402

from inr_engine.data import SAMPLES_DIR  # noqa: E402
from inr_slicer.reconstruction import ReconstructionLogic, ReconstructionRequest  # noqa: E402
from inr_slicer.segmentation import SegmentationLogic, SegmentationRequest  # noqa: E402


def load(scene, filename: str, node_class: str):
    node = scene.AddNewNodeByClass(node_class, filename.split(".")[0])
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(SAMPLES_DIR / filename))
    if not storage.ReadData(node):
        raise RuntimeError(f"cannot read {filename}")
    return node


def render(surfaces: list[tuple[vtk.vtkPolyData, tuple, float]], size=(640, 560)) -> np.ndarray:
    """RGB image of (surface, colour, opacity) triples, seen from the front-left and above."""
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(0.1, 0.11, 0.14)
    for polydata, color, opacity in surfaces:
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputData(polydata)
        mapper.ScalarVisibilityOff()  # colour by the segment, not by point data
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*color)
        actor.GetProperty().SetOpacity(opacity)
        renderer.AddActor(actor)
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    window.AddRenderer(renderer)
    camera = renderer.GetActiveCamera()
    camera.SetViewUp(0, 0, 1)
    camera.SetPosition(-1, -1.5, 0.8)
    camera.SetFocalPoint(0, 0, 0)
    renderer.ResetCamera()
    camera.Zoom(1.35)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.Update()
    image = grab.GetOutput()
    width, height, _ = image.GetDimensions()
    pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[::-1, :, :3]
    window.Finalize()
    return pixels


def closed_surfaces(node, opacity: float = 1.0) -> list:
    segmentation = node.GetSegmentation()
    out = []
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        out.append((segment.GetRepresentation("Closed surface"), segment.GetColor(), opacity))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="Resources/Screenshots/INRSegmentation.png")
    args = parser.parse_args(argv)
    scene = slicer.vtkMRMLScene()
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLScene(scene)  # registers the closed-surface converters

    volume = load(scene, "hippocampus_004_image.nii.gz", "vtkMRMLScalarVolumeNode")
    hippocampus = SegmentationLogic(scene).segment(SegmentationRequest(volume, method="metaseg"), timeout=300)
    sparse = load(scene, "adrenal_val000_sparse_w8_axis0.nii.gz", "vtkMRMLLabelMapVolumeNode")
    annotations = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "annotated slices")
    annotations.SetReferenceImageGeometryParameterFromVolumeNode(sparse)
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(sparse, annotations, "")
    annotations.GetSegmentation().GetNthSegment(0).SetColor(0.95, 0.8, 0.2)
    annotations.CreateClosedSurfaceRepresentation()
    _, model = ReconstructionLogic(scene).complete(ReconstructionRequest(sparse, model_step=0.5), timeout=300)

    panels = [
        (render(closed_surfaces(hippocampus)),
         "INR Segmentation (MetaSeg): hippocampus, anterior and posterior,\n"
         "segmented by fitting a held-out MRI's intensities only"),
        (render(closed_surfaces(annotations) + [(model.GetPolyData(), (0.45, 0.7, 0.95), 0.6)]),
         "Meta Shape Reconstruction: adrenal gland completed\n"
         "from every 8th slice (yellow), model at half a voxel"),
    ]
    figure, axes = plt.subplots(1, 2, figsize=(12.8, 6.2), facecolor=(0.1, 0.11, 0.14))
    for ax, (pixels, title) in zip(axes, panels):
        ax.imshow(pixels)
        ax.set_title(title, color="white", fontsize=11)
        ax.axis("off")
    figure.text(0.5, 0.02, "Outputs of the modules' logic on slicer-core, rendered with VTK "
                "(not a screenshot of the Slicer application)", color="0.7", ha="center", fontsize=9)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100, facecolor=figure.get_facecolor(), bbox_inches="tight")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

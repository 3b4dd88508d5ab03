"""Run the Slicer modules' logic in a Slicer-like Python environment, on the shipped samples.

Meant for a fresh venv holding only what 3D Slicer brings (numpy, vtk, SimpleITK, packaging, the
``slicer-core`` wheel for MRML), PyTorch (the PyTorch extension's part) and
``inr_slicer/requirements.txt`` (what the modules pip-install on first Apply), with the engine NOT
pip-installed: like Slicer, the repository and its module folders are put on ``sys.path``.
``.ci/install_checks`` builds that venv and runs this script. It checks that

* the engine's file readers and CLI packages (nibabel, pynrrd, matplotlib, tqdm) are absent,
  so the logic below proves the Slicer path does not need them;
* INRSegmentation's logic segments the demo image (read by Slicer's own reader) into non-empty
  segments that agree with the sample's labels;
* MetaShapeReconstruction's logic completes the demo sparse label map into a non-empty segment
  and model, and the Segment Editor effect's ``complete_oriented_labelmap`` fills its preview.

Usage: python scripts/check_slicer_environment.py   (exit status 0 when everything holds)
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIRS = ["INRSegmentation", "MetaShapeReconstruction", "SegmentEditorSparseCompletion"]
for folder in ["", *MODULE_DIRS]:  # what Slicer puts on sys.path for the extension
    if str(ROOT / folder) not in sys.path:
        sys.path.insert(0, str(ROOT / folder))

NOT_IN_SLICER = ["nibabel", "nrrd", "matplotlib", "tqdm"]  # import names (nrrd is pynrrd)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"check_slicer_environment: FAILED: {message}")
    print(f"  ok  {message}", flush=True)


def dice(a, b) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def main() -> None:
    present = [name for name in NOT_IN_SLICER if importlib.util.find_spec(name) is not None]
    check(not present, f"not importable here: {', '.join(NOT_IN_SLICER)} (found: {present or 'none'})")
    site_packages = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    installed = [d for d in importlib.metadata.distributions(path=sorted(site_packages))
                 if d.metadata["Name"] == "inr-engine"]
    import inr_engine

    check(not installed and Path(inr_engine.__file__).resolve().is_relative_to(ROOT),
          f"the engine comes from the source tree, not pip ({Path(inr_engine.__file__).parent})")

    import numpy as np
    import slicer
    import torch

    from inr_engine.data import SAMPLES_DIR, samples
    from inr_slicer.completion import complete_oriented_labelmap, load_completer
    from inr_slicer.nodes import array_to_matrix, labelmap_mask, oriented_image_array, segment_mask, volume_array
    from inr_slicer.reconstruction import ReconstructionLogic, ReconstructionRequest
    from inr_slicer.segmentation import SegmentationLogic, SegmentationRequest

    torch.set_num_threads(min(2, torch.get_num_threads()))
    image = next(s for s in samples() if s.get("demo") and s["kind"] == "image")
    sparse = next(s for s in samples() if s.get("demo") and s["kind"] == "sparse")

    scene = slicer.vtkMRMLScene()
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLScene(scene)  # registers the segmentation converters

    def load(filename: str, node_class: str):
        node = scene.AddNewNodeByClass(node_class, filename.split(".")[0])
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        scene.AddNode(storage)
        storage.SetFileName(str(SAMPLES_DIR / filename))
        check(bool(storage.ReadData(node)), f"Slicer's reader loads {filename}")
        scene.RemoveNode(storage)
        return node

    # INRSegmentation: the demo image, the method's bundled prior and default steps
    volume = load(image["file"], "vtkMRMLScalarVolumeNode")
    truth = volume_array(load(image["labels"], "vtkMRMLLabelMapVolumeNode"))[0]
    start = time.perf_counter()
    node = SegmentationLogic(scene).segment(SegmentationRequest(volume), timeout=600)
    seconds = time.perf_counter() - start
    segmentation = node.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    check(len(ids) >= 1, f"SegmentationLogic.segment made {len(ids)} segments ({seconds:.1f} s)")
    for label, sid in enumerate(ids, start=1):
        mask = segment_mask(node, sid)[0]
        score = dice(mask, truth == label)
        check(mask.any() and score > 0.6, f"segment {sid!r}: {int(mask.sum())} voxels, Dice {score:.3f}")

    # MetaShapeReconstruction: the demo sparse label map, the default prior and steps
    labelmap = load(sparse["file"], "vtkMRMLLabelMapVolumeNode")
    full = volume_array(load(sparse["ground_truth"], "vtkMRMLLabelMapVolumeNode"))[0] > 0
    start = time.perf_counter()
    node, model = ReconstructionLogic(scene).complete(ReconstructionRequest(labelmap), timeout=600)
    seconds = time.perf_counter() - start
    segmentation = node.GetSegmentation()
    check(segmentation.GetNumberOfSegments() == 1, f"ReconstructionLogic.complete made one segment ({seconds:.1f} s)")
    mask = segment_mask(node, segmentation.GetNthSegmentID(0))[0]
    score = dice(mask, full)
    check(mask.sum() > labelmap_mask(labelmap)[0].sum() and score > 0.7,
          f"completed segment: {int(mask.sum())} voxels, Dice {score:.3f} with the full mask")
    points = model.GetPolyData().GetNumberOfPoints() if model is not None else 0
    check(points > 100, f"completed model: {points} points")

    # the Segment Editor effect's preview, on the same slices as a vtkOrientedImageData
    array, affine = volume_array(labelmap)
    merged = slicer.vtkOrientedImageData()
    merged.DeepCopy(labelmap.GetImageData())
    merged.SetImageToWorldMatrix(array_to_matrix(affine))
    check(np.array_equal(oriented_image_array(merged)[0], array), "the effect's merged label map holds the slices")
    output = slicer.vtkOrientedImageData()
    start = time.perf_counter()
    complete_oriented_labelmap(merged, output, load_completer(sparse["prior"], "cpu"))
    seconds = time.perf_counter() - start
    preview = oriented_image_array(output)[0]
    score = dice(preview > 0, full)
    check(output.GetExtent() == merged.GetExtent() and preview.any() and score > 0.7,
          f"complete_oriented_labelmap: {int((preview > 0).sum())} voxels, Dice {score:.3f} ({seconds:.1f} s)")

    print("check_slicer_environment: all checks passed")


if __name__ == "__main__":
    main()

"""The Slicer modules' logic on real MRML (the ``slicer-core`` wheel): shipped samples loaded by
Slicer's own readers, real fitting on the worker thread, live output nodes, cancel and bad input.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from inr_engine.data import SAMPLES_DIR  # noqa: E402
from inr_engine.io import read_volume  # noqa: E402
from inr_engine.metrics import dice  # noqa: E402
from inr_engine.priors import PriorError, read_metadata, resolve  # noqa: E402
from inr_engine.runtime import DeviceError  # noqa: E402
from inr_engine.segmentation.volume import SegmentationError  # noqa: E402
from inr_engine.shape.slices import SliceError, sparsify  # noqa: E402
from inr_slicer import worker  # noqa: E402
from inr_slicer.completion import complete_oriented_labelmap, load_completer  # noqa: E402
from inr_slicer.nodes import InputError, array_to_matrix, oriented_image_array, segment_mask, volume_array  # noqa: E402
from inr_slicer.reconstruction import ReconstructionLogic, ReconstructionRequest  # noqa: E402
from inr_slicer.segmentation import SegmentationLogic, SegmentationRequest  # noqa: E402
from inr_slicer.worker import Cancelled, FitRun, Progress, RunState  # noqa: E402

HIPPOCAMPUS = "hippocampus_004"
ADRENAL_SPARSE = "adrenal_val000_sparse_w8_axis0.nii.gz"
ADRENAL_FULL = "adrenal_val000_full.nii.gz"


@pytest.fixture
def scene():
    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)  # registers the segmentation converters (closed surfaces)
    yield scene
    logic.SetMRMLScene(None)


def load(scene, filename: str, node_class: str = "vtkMRMLScalarVolumeNode"):
    """Read a shipped sample with Slicer's own volume reader."""
    node = scene.AddNewNodeByClass(node_class, filename.split(".")[0])
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(SAMPLES_DIR / filename))
    assert storage.ReadData(node), filename
    scene.RemoveNode(storage)
    return node


def node_ids(scene) -> list[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def segments(node) -> dict[str, object]:
    seg = node.GetSegmentation()
    return {seg.GetNthSegmentID(i): seg.GetNthSegment(i) for i in range(seg.GetNumberOfSegments())}


def segment_arrays(node) -> dict[str, np.ndarray]:
    return {sid: segment_mask(node, sid)[0] for sid in segments(node)}


def run_until(run: FitRun, condition, timeout: float = 60.0) -> None:
    import time

    end = time.monotonic() + timeout
    while not condition():
        assert run.poll(), f"run ended early: {run.state} {run.error}"
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


# ------------------------------------------------------------------------ MRML conversions
def test_volume_nodes_read_by_slicer_give_the_engines_arrays_and_affines(scene):
    for name in (f"{HIPPOCAMPUS}_image.nii.gz", "hn_0522c0331_parotid_lt_sparse_axial_every4.nrrd"):
        array, affine = volume_array(load(scene, name))
        reference = read_volume(SAMPLES_DIR / name)
        np.testing.assert_array_equal(array, reference.array)
        np.testing.assert_allclose(affine, reference.affine, atol=1e-5)


# ------------------------------------------------------------------------ INRSegmentation
def test_segmentation_writes_named_coloured_segments_with_surfaces_on_the_volume_grid(scene):
    volume = load(scene, f"{HIPPOCAMPUS}_image.nii.gz")
    run = SegmentationLogic(scene).start(SegmentationRequest(volume, method="metaseg", steps=8))
    assert run.wait(120) is RunState.FINISHED, run.error
    node = run.output.node
    found = segments(node)
    assert [s.GetName() for s in found.values()] == ["anterior", "posterior"]
    colors = [tuple(s.GetColor()) for s in found.values()]
    expected = read_metadata(resolve("hippocampus-metaseg"))["class_colors"][1:]  # from the prior's metadata
    np.testing.assert_allclose(colors, expected, atol=1e-6)
    assert colors[0] != colors[1]
    truth = read_volume(SAMPLES_DIR / f"{HIPPOCAMPUS}_labels.nii.gz").array
    _, affine = volume_array(volume)
    for label, sid in enumerate(found, start=1):
        mask, mask_affine = segment_mask(node, sid)
        np.testing.assert_allclose(mask_affine, affine, atol=1e-6)  # exactly the volume's grid
        assert dice(mask, truth == label) > 0.75  # the CLI's demo reaches 0.85 after 20 steps
        surface = found[sid].GetRepresentation("Closed surface")
        assert surface is not None and surface.GetNumberOfPoints() > 100
        assert surface.GetPointData().GetNormals() is not None  # the final surface: Slicer's own conversion
    assert node.GetSegmentation().GetConversionParameter("Conversion method") == "0"
    assert run.output.writes >= 2  # at least one live preview before the final result
    assert run.progress.step == run.progress.total == 8


def test_outputs_follow_the_inputs_parent_transform(scene):
    volume = load(scene, f"{HIPPOCAMPUS}_image.nii.gz")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transform.SetMatrixTransformToParent(array_to_matrix(np.array(
        [[0.0, -1.0, 0.0, 40.0], [1.0, 0.0, 0.0, -5.0], [0.0, 0.0, 1.0, 12.0], [0.0, 0.0, 0.0, 1.0]])))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    plain = SegmentationLogic(scene).segment(SegmentationRequest(load(scene, f"{HIPPOCAMPUS}_image.nii.gz"), steps=2))
    moved = SegmentationLogic(scene).segment(SegmentationRequest(volume, steps=2))
    assert moved.GetTransformNodeID() == transform.GetID() and plain.GetTransformNodeID() is None
    for sid in segments(plain):  # fitted in the volume's own space: the transform changes nothing else
        np.testing.assert_array_equal(segment_mask(moved, sid)[0], segment_mask(plain, sid)[0])


def test_segmentation_updates_the_scene_only_from_the_polling_thread(scene):
    volume = load(scene, f"{HIPPOCAMPUS}_image.nii.gz")
    threads = set()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    for observed in (node, node.GetSegmentation()):
        observed.AddObserver("AnyEvent", lambda *_: threads.add(threading.get_ident()))
    run = SegmentationLogic(scene).start(SegmentationRequest(volume, steps=3, output=node))
    assert run.wait(120) is RunState.FINISHED
    assert threads == {threading.get_ident()}


def test_cancel_midway_puts_the_previous_result_back(scene):
    volume = load(scene, f"{HIPPOCAMPUS}_image.nii.gz")
    logic = SegmentationLogic(scene)
    node = logic.segment(SegmentationRequest(volume, steps=1))
    before = segment_arrays(node)
    names = [s.GetName() for s in segments(node).values()]
    run = logic.start(SegmentationRequest(volume, method="nisf", steps=300, output=node))
    run_until(run, lambda: run.output.writes >= 1 and run.progress.step >= 2)
    assert any(not np.array_equal(before[k], v) for k, v in segment_arrays(node).items())  # a live preview
    run.cancel()
    assert run.state is RunState.CANCELLED
    after = segment_arrays(node)
    assert [s.GetName() for s in segments(node).values()] == names
    assert node.GetSegmentation().GetConversionParameter("Conversion method") == "0"  # live settings undone
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert not run.poll()  # later steps of the stopped fit change nothing


def test_cancel_of_a_first_run_removes_its_new_output(scene):
    volume = load(scene, f"{HIPPOCAMPUS}_image.nii.gz")
    nodes = node_ids(scene)
    run = SegmentationLogic(scene).start(SegmentationRequest(volume, method="nisf", steps=300))
    run_until(run, lambda: run.output.writes >= 1)
    assert len(node_ids(scene)) > len(nodes)
    run.cancel()
    assert node_ids(scene) == nodes


@pytest.mark.parametrize("case", ["none", "model", "slice", "nan", "labels", "cuda-missing", "foreign-prior",
                                  "other-grid", "negative-steps", "refine-without-refiner"])
def test_segmentation_bad_input_is_refused_and_the_scene_is_unchanged(scene, case):
    volume = load(scene, f"{HIPPOCAMPUS}_image.nii.gz")
    request = SegmentationRequest(volume, steps=1)
    if case == "none":
        request.volume, error = None, InputError
    elif case == "model":
        request.volume, error = scene.AddNewNodeByClass("vtkMRMLModelNode"), InputError
    elif case == "slice":
        request.volume, error = _volume_node(scene, np.random.rand(30, 30, 1), np.eye(4)), InputError
    elif case == "nan":
        image = np.random.rand(20, 20, 20)
        image[3, 4, 5] = np.nan
        request.volume, error = _volume_node(scene, image, np.eye(4)), SegmentationError
    elif case == "labels":
        request.volume, error = load(scene, f"{HIPPOCAMPUS}_labels.nii.gz"), SegmentationError
    elif case == "cuda-missing":
        pytest.importorskip("torch").cuda.is_available() and pytest.skip("this machine has CUDA")
        request.device, error = "cuda", DeviceError
    elif case == "foreign-prior":
        request.prior, error = "adrenal", PriorError
    elif case == "negative-steps":
        request.steps, error = -3, ValueError
    elif case == "refine-without-refiner":
        request.method, request.refine, error = "nisf", True, PriorError  # the bundled NISF prior has none
    else:
        other = _volume_node(scene, np.random.rand(20, 20, 20), np.diag([2.0, 2.0, 2.0, 1.0]))
        request.output = SegmentationLogic(scene).segment(SegmentationRequest(other, steps=1))
        error = InputError
    nodes = node_ids(scene)
    with pytest.raises(error):
        SegmentationLogic(scene).start(request)
    assert node_ids(scene) == nodes


def _volume_node(scene, array: np.ndarray, affine: np.ndarray):
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk

    image = vtk.vtkImageData()
    image.SetDimensions(*array.shape)
    image.GetPointData().SetScalars(numpy_to_vtk(np.ascontiguousarray(array.transpose(2, 1, 0)).ravel(), deep=True))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "synthetic")
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(array_to_matrix(affine))
    return node


# ------------------------------------------------------------------------ MetaShapeReconstruction
def test_completion_of_a_label_map_gives_a_segment_and_a_fine_model(scene):
    sparse = load(scene, ADRENAL_SPARSE, "vtkMRMLLabelMapVolumeNode")
    run = ReconstructionLogic(scene).start(ReconstructionRequest(sparse, model_step=0.5))
    assert run.wait(120) is RunState.FINISHED, run.error
    node, model = run.output.node, run.output_model.node
    (sid, segment), = segments(node).items()
    mask, affine = segment_mask(node, sid)
    np.testing.assert_allclose(affine, volume_array(sparse)[1], atol=1e-6)
    full = read_volume(SAMPLES_DIR / ADRENAL_FULL).array > 0
    assert dice(mask, full) > 0.78  # the demo's 0.834 on this sample
    polydata = model.GetPolyData()
    assert polydata.GetNumberOfPoints() > 1000
    ras = np.array([polydata.GetPoint(i) for i in range(0, polydata.GetNumberOfPoints(), 50)])
    voxel = np.linalg.solve(affine, np.c_[ras, np.ones(len(ras))].T).T[:, :3]
    inside = full[tuple(np.clip(np.round(voxel).astype(int), 0, np.array(full.shape) - 1).T)]
    assert voxel.min() > -1 and (voxel < np.array(full.shape)).all() and inside.mean() > 0.3  # on the shape's border


def test_completion_of_a_segment_writes_beside_it_and_keeps_its_name_and_colour(scene):
    sparse = load(scene, ADRENAL_SPARSE, "vtkMRMLLabelMapVolumeNode")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "annotations")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(sparse)  # as the Segment Editor does
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(sparse, node, "")
    (sid, segment), = segments(node).items()
    segment.SetName("adrenal")
    segment.SetColor(0.2, 0.4, 0.9)
    annotated = segment_mask(node, sid)[0]
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")  # a parent transform changes nothing
    transform.SetMatrixTransformToParent(array_to_matrix(np.array(
        [[0.0, 0.0, 1.0, 10.0], [0.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 3.0], [0.0, 0.0, 0.0, 1.0]])))
    node.SetAndObserveTransformNodeID(transform.GetID())
    run = ReconstructionLogic(scene).start(ReconstructionRequest(node, segment_id=sid, output=node, model_step=0))
    assert run.wait(120) is RunState.FINISHED, run.error
    found = segments(node)
    assert list(found) == [sid, "adrenal_completed"]
    assert found["adrenal_completed"].GetName() == "adrenal completed"
    np.testing.assert_allclose(found["adrenal_completed"].GetColor(), (0.2, 0.4, 0.9))
    np.testing.assert_array_equal(segment_mask(node, sid)[0], annotated)  # the annotations are kept
    full = read_volume(SAMPLES_DIR / ADRENAL_FULL).array > 0
    assert dice(segment_mask(node, "adrenal_completed")[0], full) > 0.78
    assert run.output_model.node is None  # model_step 0: no model


def test_completion_cancel_restores_an_existing_model_and_segmentation(scene):
    sparse = load(scene, ADRENAL_SPARSE, "vtkMRMLLabelMapVolumeNode")
    logic = ReconstructionLogic(scene)
    node, model = logic.complete(ReconstructionRequest(sparse, steps=1))
    before_points = model.GetPolyData().GetNumberOfPoints()
    before = segment_arrays(node)
    run = logic.start(ReconstructionRequest(sparse, steps=2000, output=node, output_model=model))
    run_until(run, lambda: run.output.writes >= 1 and run.progress.step >= 2)
    run.cancel()
    assert model.GetPolyData().GetNumberOfPoints() == before_points
    after = segment_arrays(node)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_completion_bad_input_is_refused_and_the_scene_is_unchanged(scene):
    sparse = load(scene, ADRENAL_SPARSE, "vtkMRMLLabelMapVolumeNode")
    logic = ReconstructionLogic(scene)
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    empty.SetReferenceImageGeometryParameterFromVolumeNode(sparse)
    empty.GetSegmentation().AddEmptySegment("nothing")
    no_geometry = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "no geometry")
    no_geometry.GetSegmentation().AddEmptySegment("nothing")
    array, affine = volume_array(sparse)
    one_slice = np.zeros_like(array)
    one_slice[20] = array[array.any((1, 2)).argmax()]
    two_labels = array.copy()
    two_labels[array.shape[0] // 2:] *= 2
    cases = [
        (ReconstructionRequest(None), InputError),
        (ReconstructionRequest(load(scene, f"{HIPPOCAMPUS}_image.nii.gz")), InputError),  # not a label map
        (ReconstructionRequest(empty, segment_id="nothing"), InputError),
        (ReconstructionRequest(empty, segment_id="missing"), InputError),
        (ReconstructionRequest(no_geometry, segment_id="nothing"), InputError),
        (ReconstructionRequest(_labelmap_node(scene, np.zeros_like(array), affine)), InputError),
        (ReconstructionRequest(_labelmap_node(scene, one_slice, affine)), SliceError),
        (ReconstructionRequest(_labelmap_node(scene, two_labels, affine)), InputError),
        (ReconstructionRequest(sparse, prior="hippocampus-metaseg"), PriorError),
        (ReconstructionRequest(sparse, steps=-1), ValueError),
    ]
    for request, error in cases:
        nodes = node_ids(scene)
        with pytest.raises(error):
            logic.start(request)
        assert node_ids(scene) == nodes


def _labelmap_node(scene, array, affine):
    node = _volume_node(scene, array.astype(np.uint8), affine)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    labelmap.SetAndObserveImageData(node.GetImageData())
    labelmap.SetIJKToRASMatrix(array_to_matrix(affine))
    scene.RemoveNode(node)
    return labelmap


# ------------------------------------------------------------------------ Segment Editor effect
def test_effect_preview_completes_every_label_of_the_merged_labelmap():
    full = read_volume(SAMPLES_DIR / ADRENAL_FULL)
    mask = full.array > 0
    two = np.concatenate([mask, mask[:, :, ::-1] * 2], axis=1).astype(np.uint8)  # the gland, a mirrored one beside
    sparse = np.zeros_like(two)
    kept = sparsify(two > 0, 0, 8)[1]
    sparse[kept] = two[kept]
    merged = slicer.vtkOrientedImageData()
    merged.SetExtent(5, 5 + two.shape[0] - 1, 0, two.shape[1] - 1, 0, two.shape[2] - 1)  # extent not at 0
    merged.AllocateScalars(3, 1)  # VTK_UNSIGNED_CHAR
    from vtk.util.numpy_support import vtk_to_numpy

    vtk_to_numpy(merged.GetPointData().GetScalars())[:] = sparse.transpose(2, 1, 0).ravel()
    merged.SetImageToWorldMatrix(array_to_matrix(full.affine))
    output = slicer.vtkOrientedImageData()
    complete_oriented_labelmap(merged, output, load_completer("adrenal", "cpu"))
    labels, affine = oriented_image_array(output)
    assert output.GetExtent() == merged.GetExtent()
    assert dice(labels == 1, two == 1) > 0.78 and dice(labels == 2, two == 2) > 0.75


# ------------------------------------------------------------------------ worker
def test_worker_reports_failures_as_messages_and_keeps_serving():
    stopped = []

    def failing(run):
        run.report(Progress(1, 2, 0.5, 0.1))
        raise ValueError("the prior does not fit this volume")

    run = worker.start(failing, on_stopped=lambda state, error: stopped.append((state, error)))
    assert run.wait(10) is RunState.FAILED
    assert run.error == "the prior does not fit this volume" and stopped == [(RunState.FAILED, run.error)]
    assert worker.start(lambda run: 42).wait(10) is RunState.FINISHED


def test_worker_previews_never_pile_up_and_cancel_stops_within_a_step():
    made, shown, steps_after_cancel = [], [], []
    cancel_seen = threading.Event()

    def job(run):
        step = 0
        while True:
            step += 1
            try:
                run.report(Progress(step, 10**6), lambda s=step: made.append(s) or s)
            except Cancelled:
                steps_after_cancel.append(step)
                cancel_seen.set()
                raise

    run = worker.start(job, on_preview=shown.append)
    run_until(run, lambda: len(shown) >= 3, timeout=10)
    run.cancel()
    assert cancel_seen.wait(5) and run.state is RunState.CANCELLED
    assert len(made) <= len(shown) + 2  # previews are made only once the last one was shown
    assert not run.poll()


def test_previews_that_are_slow_to_show_are_spaced_so_the_gui_stays_responsive():
    import time

    shown_at = []

    def job(run):
        for step in range(10**6):
            run.report(Progress(step + 1, 10**6), lambda: "preview")

    def slow_preview(_value):  # e.g. the closed surfaces of a large segment
        shown_at.append(time.monotonic())
        time.sleep(0.1)

    run = worker.start(job, on_preview=slow_preview)
    run_until(run, lambda: len(shown_at) >= 4, timeout=20)
    run.cancel()
    gaps = np.diff(shown_at)
    assert gaps.min() >= (1 + worker.PREVIEW_SPACING) * 0.1 * 0.9  # at most a quarter of the main thread


def test_an_error_while_updating_the_scene_fails_the_run_and_stops_the_fit():
    def job(run):
        for step in range(10**6):
            run.report(Progress(step + 1, 10**6), lambda: "preview")

    def bad_preview(_value):
        raise RuntimeError("segment is locked")

    run = worker.start(job, on_preview=bad_preview)
    assert run.wait(10) is RunState.FAILED and "segment is locked" in run.error
    assert worker.start(lambda run: "next").wait(10) is RunState.FINISHED  # the worker was freed


def test_refined_segmentation_keeps_the_quality_floor(scene):
    volume = load(scene, f"{HIPPOCAMPUS}_image.nii.gz")
    node = SegmentationLogic(scene).segment(SegmentationRequest(volume, steps=8, refine=True), timeout=120)
    truth = read_volume(SAMPLES_DIR / f"{HIPPOCAMPUS}_labels.nii.gz").array
    for label, sid in enumerate(segments(node), start=1):
        assert dice(segment_mask(node, sid)[0], truth == label) > 0.75

"""The Segment Editor effect's logic (``inr_slicer.completion.PreviewCompletion``) on real MRML
(``slicer-core``): the preview is completed on the worker thread, reaches the main thread when it is
ready, a new edit supersedes the completion under way, and failures arrive as one line.

A completion is held at its first fitting step by a gate (a real completer whose ``fit`` waits on an
event), so "still running" is a fact of the test, not a wall-clock guess.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from vtk.util.numpy_support import vtk_to_numpy  # noqa: E402

from inr_engine.data import SAMPLES_DIR  # noqa: E402
from inr_engine.io import read_volume  # noqa: E402
from inr_slicer import worker  # noqa: E402
from inr_slicer.completion import (  # noqa: E402
    PreviewCompletion,
    PreviewFailure,
    complete_oriented_labelmap,
    load_completer,
    same_grid,
)
from inr_slicer.nodes import InputError, array_to_matrix, oriented_image_array  # noqa: E402
from inr_slicer.worker import RunState  # noqa: E402

ADRENAL_SPARSE = "adrenal_val000_sparse_w8_axis0.nii.gz"  # annotated on I slices 25, 33 and 41
MAIN = threading.get_ident()


class GatedCompleter:
    """A real completer whose fitting waits, on the worker thread, until the test opens the gate."""

    def __init__(self, completer):
        self.completer = completer
        self.entered = threading.Event()  # a fit has started (and waits at the gate)
        self.gate = threading.Event()
        self.threads: set[int] = set()
        self.steps_done: list[int] = []  # fitting steps yielded, per fit

    def __getattr__(self, name):
        return getattr(self.completer, name)

    def fit(self, case, steps=None):
        self.threads.add(threading.get_ident())
        self.steps_done.append(0)
        self.entered.set()
        if not self.gate.wait(60):
            raise RuntimeError("the test never opened the gate")
        for step in self.completer.fit(case, steps):
            self.steps_done[-1] += 1
            yield step


@pytest.fixture(scope="module")
def adrenal():
    return load_completer("adrenal", "cpu")


def merged_labelmap(labels: np.ndarray, affine: np.ndarray, start=(5, 0, 2)):
    """A merged label map as the Segment Editor makes it: a vtkOrientedImageData whose extent need not start at 0."""
    image = slicer.vtkOrientedImageData()
    image.SetExtent(*(v for a in range(3) for v in (start[a], start[a] + labels.shape[a] - 1)))
    image.AllocateScalars(3, 1)  # VTK_UNSIGNED_CHAR
    vtk_to_numpy(image.GetPointData().GetScalars())[:] = labels.transpose(2, 1, 0).ravel()
    offset = np.eye(4)
    offset[:3, 3] = -np.asarray(start, float)
    image.SetImageToWorldMatrix(array_to_matrix(affine @ offset))  # so that the first voxel sits at affine
    return image


@pytest.fixture(scope="module")
def sparse():
    volume = read_volume(SAMPLES_DIR / ADRENAL_SPARSE)
    return volume.array.astype(np.uint8), volume.affine


def synchronous(merged, completer):
    output = slicer.vtkOrientedImageData()
    complete_oriented_labelmap(merged, output, completer)
    return output


def assert_same_image(image, expected):
    assert image.GetExtent() == expected.GetExtent()
    assert image.GetScalarType() == expected.GetScalarType()
    assert same_grid(image, expected)
    np.testing.assert_array_equal(oriented_image_array(image)[0], oriented_image_array(expected)[0])


def test_the_preview_is_completed_off_the_main_thread_and_delivered_on_it(sparse, adrenal):
    merged = merged_labelmap(*sparse)
    gated = GatedCompleter(adrenal)
    completion = PreviewCompletion(loader=lambda prior, device: gated)
    ready, failed = [], []
    completion.start(merged, lambda image: ready.append((image, threading.get_ident())), failed.append,
                     prior="adrenal", device="cpu")
    # start() returned although the completion cannot finish before the gate opens: it runs elsewhere.
    assert gated.entered.wait(60), "the completion never started"
    assert gated.threads and MAIN not in gated.threads
    assert completion.poll() and completion.busy  # still running: polling delivers nothing
    assert ready == [] and failed == []

    merged.GetPointData().GetScalars().Fill(0)  # the caller's image may change meanwhile: the copy is used
    gated.gate.set()
    assert completion.wait(120) is RunState.FINISHED
    assert failed == [] and len(ready) == 1
    image, thread = ready[0]
    assert thread == MAIN  # the scene is changed only from the polling (main) thread
    assert completion.last_result is image and not completion.busy
    assert_same_image(image, synchronous(merged_labelmap(*sparse), adrenal))
    labels = oriented_image_array(image)[0]
    assert labels.any() and (labels > 0).sum() > 3 * (sparse[0] > 0).sum()  # a completed shape, not the slices


def test_a_new_edit_supersedes_the_completion_under_way(sparse, adrenal):
    labels, affine = sparse
    first = merged_labelmap(labels, affine)
    edited = labels.copy()
    edited[41] = 0  # the edit: the last annotated slice erased (slices 25 and 33 remain)
    second = merged_labelmap(edited, affine)
    gated = GatedCompleter(adrenal)
    completion = PreviewCompletion(loader=lambda prior, device: gated)
    first_ready, first_failed, second_ready, second_failed = [], [], [], []
    first_run = completion.start(first, first_ready.append, first_failed.append)
    assert gated.entered.wait(60)  # the first edit's completion is fitting, held at the gate

    completion.start(second, second_ready.append, second_failed.append)
    assert first_run.state is RunState.CANCELLED
    gated.gate.set()
    assert completion.wait(120) is RunState.FINISHED
    assert not first_run.poll() and first_run.state is RunState.CANCELLED
    assert first_ready == [] and first_failed == []  # the superseded result is never delivered
    assert gated.steps_done[0] <= 1  # the first fit stopped at its next step, not at its end
    assert second_failed == [] and len(second_ready) == 1
    expected = synchronous(second, adrenal)
    assert_same_image(second_ready[0], expected)
    assert not np.array_equal(oriented_image_array(expected)[0], oriented_image_array(synchronous(first, adrenal))[0])


def test_cancel_delivers_nothing_and_a_queued_completion_never_starts(sparse, adrenal):
    gated = GatedCompleter(adrenal)
    completion = PreviewCompletion(loader=lambda prior, device: gated)
    delivered = []
    run = completion.start(merged_labelmap(*sparse), delivered.append, delivered.append)
    assert gated.entered.wait(60)
    completion.reset()  # e.g. the preview was discarded
    assert run.state is RunState.CANCELLED and not completion.busy and completion.last_result is None
    gated.gate.set()
    assert completion.wait(10) is None and not completion.poll()

    hold = threading.Event()
    blocker = worker.start(lambda run: hold.wait(60))  # keeps the worker thread busy
    queued = completion.start(merged_labelmap(*sparse), delivered.append, delivered.append)
    completion.cancel()
    hold.set()
    assert blocker.wait(60) is RunState.FINISHED and queued.wait(60) is RunState.CANCELLED
    assert worker.start(lambda run: None).wait(60) is RunState.FINISHED  # runs after the queued one
    assert delivered == [] and len(gated.steps_done) == 1  # the queued one never reached fitting


def test_failures_arrive_as_one_line_and_nothing_is_shown(sparse, adrenal):
    labels, affine = sparse
    single = np.zeros_like(labels)
    single[33] = labels[33]  # one annotated slice: the engine refuses it (on the worker thread)
    completion = PreviewCompletion(loader=lambda prior, device: adrenal)
    ready, failed = [], []
    completion.start(merged_labelmap(single, affine), ready.append, failed.append)
    assert completion.wait(60) is RunState.FINISHED
    assert ready == [] and len(failed) == 1
    failure = failed[0]
    assert isinstance(failure, PreviewFailure) and failure.expected and failure.message
    assert "\n" not in failure.message and "slice" in failure.message
    assert completion.last_result is None

    def broken(prior, device):
        raise RuntimeError("the prior file is damaged:\n  tensor 'init.0' is missing")

    completion = PreviewCompletion(loader=broken)
    completion.start(merged_labelmap(*sparse), ready.append, failed.append, prior="somewhere.safetensors")
    completion.wait(60)
    failure = failed[1]
    assert failure.message == "the prior file is damaged: tensor 'init.0' is missing"
    assert not failure.expected and "Traceback" in failure.details and ready == []

    def unshowable(_image):
        raise RuntimeError("segment is locked\nby another effect")

    completion = PreviewCompletion(loader=lambda prior, device: adrenal)
    completion.start(merged_labelmap(*sparse), unshowable, failed.append)
    assert completion.wait(60) is RunState.FAILED
    assert "segment is locked by another effect" in failed[2].message and "\n" not in failed[2].message


def test_input_refused_at_once_starts_nothing(sparse):
    labels, affine = sparse
    loads = []
    completion = PreviewCompletion(loader=lambda prior, device: loads.append(prior))
    with pytest.raises(InputError, match="paint the structure"):
        completion.start(merged_labelmap(np.zeros_like(labels), affine), print)
    with pytest.raises(InputError):
        completion.start(merged_labelmap(labels, affine), print, steps=-2)
    assert not completion.busy and loads == []


def test_while_computing_the_last_preview_stays_shown_on_the_same_grid(sparse):
    labels, affine = sparse
    merged = merged_labelmap(labels, affine)
    completion = PreviewCompletion()
    shown = slicer.vtkOrientedImageData()
    completion.provisional(merged, shown)  # no preview yet: the slices themselves
    assert_same_image(shown, merged)

    previous = merged_labelmap(np.ones_like(labels), affine)
    completion.last_result = previous
    completion.provisional(merged, shown)
    assert_same_image(shown, previous)
    moved = merged_labelmap(labels, affine, start=(0, 0, 0))  # another grid (the preview was rebuilt)
    assert not same_grid(moved, previous)
    completion.provisional(moved, shown)
    assert_same_image(shown, moved)

"""Shape completion on the Slicer side, shared by MetaShapeReconstruction's logic and the Segment
Editor effect: load a shape completer, and complete a ``vtkOrientedImageData`` label map (the
effect's preview), synchronously or (:class:`PreviewCompletion`) on the worker thread.

No Qt: runs on the ``slicer-core`` wheel as well as in the Slicer application. PyTorch is imported
only when a completer is loaded or a completion runs.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import slicer
import vtk
from vtk.util.numpy_support import vtk_to_numpy

from inr_engine.priors import DEFAULT_PRIORS, SHAPE_COMPLETION_TASK, shape_prior_for

from . import worker
from .nodes import InputError, array_to_matrix, check_steps, check_text, matrix_to_array
from .worker import Cancelled, FitRun, Progress, RunState

NOTHING_TO_COMPLETE = "no annotated slices to complete: paint the structure on a few slices first"


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
    steps = None if steps is None else check_steps(steps)
    grid = OrientedLabels.copy_of(merged)
    output.DeepCopy(grid.image(grid.complete(completer, steps)))


@dataclass(frozen=True)
class OrientedLabels:
    """A ``vtkOrientedImageData`` label map copied off its VTK object, for use on another thread.

    Copying is one memory copy of the scalars (what the main thread pays); transposing them to the
    engine's (i, j, k) arrays and back happens where the completion runs.
    """

    voxels: np.ndarray  # the scalars as VTK lays them out: indexed k, j, i (a copy)
    extent: tuple[int, int, int, int, int, int]
    image_to_world: np.ndarray  # 4x4, of voxel (0, 0, 0) of the extent's index space
    scalar_type: int

    @classmethod
    def copy_of(cls, image) -> OrientedLabels:
        """Copy ``image``'s voxels and grid; an image with no voxels or no labels is refused."""
        extent = tuple(int(e) for e in image.GetExtent())
        shape = tuple(extent[2 * a + 1] - extent[2 * a] + 1 for a in (2, 1, 0))
        scalars = image.GetPointData().GetScalars()
        if min(shape) <= 0 or scalars is None:
            raise InputError(NOTHING_TO_COMPLETE)
        if scalars.GetNumberOfComponents() != 1:
            raise InputError(f"the label map has {scalars.GetNumberOfComponents()} components per voxel, not one")
        voxels = vtk_to_numpy(scalars).reshape(shape).copy()
        if not voxels.any():
            raise InputError(NOTHING_TO_COMPLETE)
        image_to_world = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(image_to_world)
        return cls(voxels, extent, matrix_to_array(image_to_world), image.GetScalarType())

    @property
    def affine(self) -> np.ndarray:
        """IJK -> RAS of the first voxel of the extent (``nodes.oriented_image_grid``'s affine)."""
        offset = np.eye(4)
        offset[:3, 3] = self.extent[::2]
        return self.image_to_world @ offset

    def complete(self, completer, steps: int | None = None, on_step=None, check=None) -> np.ndarray:
        """Every label completed (the engine's ``complete_labelmap``), indexed i, j, k; ``check()``
        runs between the preparation's phases and may raise to stop it."""
        from inr_engine.shape.complete import complete_labelmap

        labels = np.ascontiguousarray(self.voxels.transpose(2, 1, 0))
        return complete_labelmap(labels, self.affine, completer, steps, on_step=on_step, check=check).labels

    def image(self, labels: np.ndarray):
        """A new ``vtkOrientedImageData`` on this grid and scalar type holding ``labels`` (i, j, k)."""
        image = slicer.vtkOrientedImageData()
        image.SetExtent(*self.extent)
        image.SetImageToWorldMatrix(array_to_matrix(self.image_to_world))
        image.AllocateScalars(self.scalar_type, 1)
        vtk_to_numpy(image.GetPointData().GetScalars()).reshape(self.voxels.shape)[...] = labels.transpose(2, 1, 0)
        return image


def same_grid(a, b) -> bool:
    """Whether two ``vtkOrientedImageData`` have the same extent and voxel-to-world matrix."""
    if a is None or b is None or tuple(a.GetExtent()) != tuple(b.GetExtent()):
        return False
    ma, mb = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    a.GetImageToWorldMatrix(ma)
    b.GetImageToWorldMatrix(mb)
    return np.allclose(matrix_to_array(ma), matrix_to_array(mb), atol=1e-6)


def one_line(message: str) -> str:
    return " ".join(str(message).split())


@dataclass(frozen=True)
class PreviewFailure:
    """Why a preview could not be computed, as one line; ``expected`` for the user's own errors (bad
    slices, a bad prior or device: the message says what to do), else ``details`` holds a traceback."""

    message: str
    expected: bool = True
    details: str = ""


ReadyCallback = Callable[[object], None]  # a vtkOrientedImageData on the merged label map's grid
FailedCallback = Callable[[PreviewFailure], None]


class PreviewCompletion:
    """The Segment Editor effect's preview, computed on the worker thread; the newest edit wins.

    * :meth:`start` (main thread) copies the merged label map, cancels the completion of the
      previous edit and queues this one on the shared worker thread (``inr_slicer.worker``); it
      returns at once. Input refused at once (nothing painted) raises ``InputError``.
    * :meth:`poll` (main thread: the effect's ``QTimer``; :meth:`wait` in scripts and tests) hands
      the finished preview to ``on_ready`` (a new ``vtkOrientedImageData`` on the merged label
      map's grid: the scene changes only there, on the main thread), or a :class:`PreviewFailure`
      to ``on_failed``. A superseded or cancelled completion calls neither, ever.

    The completers (one per prior and device) are loaded on the worker thread and kept.
    """

    def __init__(self, loader: Callable[[str, str], object] = load_completer):
        self._loader = loader
        self._completers: dict[tuple[str, str], object] = {}
        self._run: FitRun | None = None
        self.last_result = None  # the newest preview handed to on_ready (until reset)

    @property
    def busy(self) -> bool:
        """A completion was started and neither delivered, failed nor cancelled yet."""
        return self._run is not None and not self._run.state.done

    @property
    def progress(self) -> Progress:
        return self._run.progress if self._run is not None else Progress()

    def start(self, merged, on_ready: ReadyCallback, on_failed: FailedCallback | None = None, prior: str = "",
              device: str = "auto", steps: int | None = 0) -> FitRun:
        """Complete every label of ``merged`` (``vtkOrientedImageData``) on the worker thread; 0 or None
        steps are the prior's default."""
        steps = check_steps(steps or 0) or None
        check_text(prior, "the prior")
        grid = OrientedLabels.copy_of(merged)
        key = (shape_prior_for(grid.voxels.transpose(2, 1, 0), grid.affine, prior),
               check_text(device, "the device") or "auto")
        self.cancel()

        def job(run: FitRun):
            try:
                if run.cancelled:
                    raise Cancelled
                completer = self._completer(key)
                total = steps or completer.cfg.default_steps

                def on_step(_label, st, _case):
                    run.report(Progress(st.step, total, st.loss, st.seconds))  # raises Cancelled when superseded

                def check():  # a superseded run stops between the phases of its preparation too
                    if run.cancelled:
                        raise Cancelled

                return grid.image(grid.complete(completer, steps, on_step, check))
            except Cancelled:
                raise
            except ValueError as exc:  # the user's input, prior or device: the message says what to do
                return PreviewFailure(one_line(exc) or type(exc).__name__)
            except Exception as exc:
                logging.exception("INR completion: the preview failed")
                return PreviewFailure(one_line(exc) or type(exc).__name__, False, traceback.format_exc())

        def finished(outcome):
            if isinstance(outcome, PreviewFailure):
                if on_failed is not None:
                    on_failed(outcome)
                return
            on_ready(outcome)
            self.last_result = outcome

        def stopped(state: RunState, error: str | None):
            if state is RunState.FAILED and on_failed is not None:  # on_ready itself failed
                on_failed(PreviewFailure(one_line(error or "the preview could not be shown"), False))

        self._run = worker.start(job, on_finished=finished, on_stopped=stopped)
        return self._run

    def poll(self) -> bool:
        """Deliver a finished preview or failure; True while a completion is still going on."""
        run = self._run
        if run is None:
            return False
        alive = run.poll()
        if not alive and self._run is run:
            self._run = None
        return alive

    def wait(self, timeout: float | None = None) -> RunState | None:
        """Poll until the current completion is done (scripts, tests, Apply); None if there was none."""
        run = self._run
        if run is None:
            return None
        try:
            return run.wait(timeout)
        finally:
            if self._run is run and run.state.done:
                self._run = None

    def cancel(self) -> None:
        """Stop the current completion (a new edit): its result is never delivered."""
        run, self._run = self._run, None
        if run is not None:
            run.cancel()

    def reset(self) -> None:
        """Cancel, and forget the last preview (the preview was discarded, applied or rebuilt)."""
        self.cancel()
        self.last_result = None

    def unload(self) -> None:
        """Cancel and drop the loaded completers (the effect's cleanup)."""
        self.reset()
        self._completers = {}

    def provisional(self, merged, output) -> None:
        """What to show at once while the completion runs: the last preview when it is on ``merged``'s
        grid (so the preview does not flicker back to the slices on every edit), else the slices."""
        output.DeepCopy(self.last_result if same_grid(self.last_result, merged) else merged)

    def _completer(self, key: tuple[str, str]):  # worker thread
        completers = self._completers
        if key not in completers:
            completers[key] = self._loader(*key)
        return completers[key]

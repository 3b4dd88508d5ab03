"""What the web page does, without the page: load files into the scene, run a method, cancel, export.

The runs are the Slicer modules' own logic classes (:mod:`inr_slicer.segmentation`,
:mod:`inr_slicer.reconstruction`) on trame-slicer's scene; this class only chooses their inputs
(the loaded volume, or the segment being drawn), keeps their outputs for the next run and the
downloads, and checks uploads. Every check happens before the scene changes.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inr_engine.cli.batch import split_volume_name
from inr_engine.inputs import looks_like_labels
from inr_engine.io import Volume, VolumeError, read_volume, write_volume
from inr_engine.priors import SHAPE_COMPLETION_TASK, PriorError
from inr_slicer.nodes import InputError
from inr_slicer.outputs import default_color
from inr_slicer.priors import described_prior_choices
from inr_slicer.reconstruction import ReconstructionLogic, ReconstructionRequest
from inr_slicer.segmentation import SegmentationLogic, SegmentationRequest
from inr_slicer.worker import FitRun, RunState

TASKS = {"metaseg": "MetaSeg", "nisf": "NISF", SHAPE_COMPLETION_TASK: "Sparse-slice shape completion"}
SEGMENTATION_FORMATS = {"nrrd": ".nrrd", "nifti": ".nii.gz"}
MODEL_STEP = 0.5  # the completed model is decoded twice as fine as the voxels, as in the Slicer module
PRIOR_SUFFIX = ".safetensors"


@dataclass
class Loaded:
    """The file the page works on: the engine's reading of it (geometry for the downloads) and its node."""

    path: Path
    volume: Volume
    node: object  # vtkMRMLScalarVolumeNode
    is_labelmap: bool  # annotations to complete, not an image to segment


@dataclass
class Outcome:
    """A finished run: its labels on the loaded grid and, for a completion, its smooth model."""

    task: str
    labels: np.ndarray
    surface: object = None  # vtkPolyData in RAS mm


class WebSession:
    """One scene's work: ``slicer_app`` is trame-slicer's ``SlicerApp``, ``editor`` its ``SegmentationEditor``."""

    def __init__(self, slicer_app, upload_dir: str | Path | None = None):
        self.app = slicer_app
        self.loaded: Loaded | None = None
        self.run: FitRun | None = None
        self.run_task: str | None = None
        self.outcome: Outcome | None = None
        self.uploaded_priors: dict[str, dict[str, str]] = {}  # task -> {name: path}
        self._outputs: dict[tuple, tuple] = {}  # (task, segment) -> (segmentation node, model node)
        self._uploads = tempfile.TemporaryDirectory(prefix="inr-web-") if upload_dir is None else None
        self.upload_dir = Path(upload_dir or self._uploads.name)

    @property
    def scene(self):
        return self.app.scene

    @property
    def editor(self):
        return self.app.segmentation_editor

    @property
    def running(self) -> bool:
        return self.run is not None and not self.run.state.done

    # ------------------------------------------------------------------ loading
    def load(self, path: str | Path):
        """Read ``path`` (NIfTI or NRRD) and show it; a label map also becomes the segmentation the
        editor draws in. Returns the volume node. Bad files raise before the scene changes."""
        path = Path(path)
        volume = read_volume(path)  # one-line VolumeError: 4D, corrupt, foreign, too large...
        if volume.array.ndim != 3:
            raise VolumeError(f"{path.name}: expected a 3D volume, got {volume.array.ndim}D data")
        is_labelmap = looks_like_labels(volume.array)
        self.cancel()
        self.scene.Clear(0)
        self._outputs.clear()
        self.outcome = None
        node = self.app.io_manager.load_volumes([str(path)])[0]
        if is_labelmap:
            segmentation = self.app.io_manager.load_segmentation(str(path))
            segmentation.SetName(f"{_stem(path)} annotations")
            segments = segmentation.GetSegmentation()
            for index in range(segments.GetNumberOfSegments()):  # Slicer's palette, not the file's dark defaults
                segments.GetNthSegment(index).SetColor(*default_color(index))
        self.loaded = Loaded(path, volume, node, is_labelmap)
        self.app.display_manager.show_volume(node, do_reset_views=True)
        # the 3D view shows the segments' surfaces and the model, not the volume rendering in front of them
        self.app.volume_rendering.get_vr_display_node(node).SetVisibility(False)
        return node

    # ------------------------------------------------------------------ priors
    def prior_choices(self, task: str) -> list[dict[str, str]]:
        """The priors ``task`` can use: the bundled ones (its default first), then uploaded ones."""
        bundled = [{"title": f"{name}: {text}" if text != name else name, "value": name}
                   for name, text in described_prior_choices(task)]
        uploaded = [{"title": f"{name} (uploaded)", "value": path}
                    for name, path in self.uploaded_priors.get(task, {}).items()]
        return bundled + uploaded

    def add_prior(self, filename: str, content: bytes) -> tuple[str, str]:
        """Keep an uploaded prior file after checking it as ``inr-engine priors verify`` does (it is
        opened completely; safetensors only, nothing is unpickled). Returns (task, path)."""
        from inr_engine.cli.prior_check import verify_prior
        from inr_engine.priors import load_prior

        name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(filename).name)[-100:] or "prior"
        if not name.endswith(PRIOR_SUFFIX):
            raise PriorError(f"{filename}: a prior is a {PRIOR_SUFFIX} file")
        folder = Path(tempfile.mkdtemp(dir=self.upload_dir))
        path = folder / name
        path.write_bytes(content)
        try:
            verify_prior(path)
            task = load_prior(path).task
        except Exception:
            path.unlink()
            folder.rmdir()
            raise
        self.uploaded_priors.setdefault(task, {})[name] = str(path)
        return task, str(path)

    # ------------------------------------------------------------------ runs
    def start(self, task: str, prior: str = "", steps: int = 0, device: str = "auto") -> FitRun:
        """Start ``task`` on the loaded file (MetaSeg, NISF) or on the segment being drawn (shape
        completion). Bad input raises (a one-line message) before the scene changes."""
        if task not in TASKS:
            raise InputError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
        if self.running:
            raise InputError("a run is in progress: cancel it first")
        if self.loaded is None:
            raise InputError("load a volume or a label map first")
        if task == SHAPE_COMPLETION_TASK:
            run = self._start_completion(prior, steps, device)
        else:
            run = self._start_segmentation(task, prior, steps, device)
        self.run, self.run_task = run, task
        return run

    def _start_segmentation(self, task: str, prior: str, steps: int, device: str) -> FitRun:
        if self.loaded.is_labelmap:
            raise InputError(f"{self.loaded.path.name} is a label map: {TASKS[task]} segments images; load an "
                             "image, or choose shape completion to complete these annotations")
        key = (task, None)
        output, _ = self._outputs.get(key, (None, None))
        run = SegmentationLogic(self.scene).start(SegmentationRequest(
            self.loaded.node, method=task, prior=prior, steps=steps, device=device, output=_alive(self.scene, output)))
        run.key = key
        return run

    def _start_completion(self, prior: str, steps: int, device: str) -> FitRun:
        node, segment_id = self.editor.active_segmentation_node, self.editor.get_active_segment_id()
        if node is None or not segment_id:
            raise InputError("no segment to complete: add a segment and paint the structure on a few slices")
        key = (SHAPE_COMPLETION_TASK, node.GetID(), segment_id)
        output, model = (_alive(self.scene, n) for n in self._outputs.get(key, (None, None)))
        run = ReconstructionLogic(self.scene).start(ReconstructionRequest(
            node, segment_id=segment_id, prior=prior, steps=steps, device=device, model_step=MODEL_STEP,
            output=output, output_model=model))
        run.key = key
        return run

    def cancel(self) -> None:
        """Stop the run under way; its outputs are put back as they were before it."""
        if self.running:
            self.run.cancel()

    def finish(self, run: FitRun) -> None:
        """Take a finished run's result (call once ``run.poll()`` returned False)."""
        if run.state is not RunState.FINISHED:
            return
        self._outputs[run.key] = (run.output.node, run.output_model.node if run.output_model else None)
        if self.run_task == SHAPE_COMPLETION_TASK:
            labels, surface = run.result[:2]
            self.outcome = Outcome(self.run_task, labels.astype(np.uint8), surface)
        else:
            self.outcome = Outcome(self.run_task, run.result.labels.astype(np.uint8))

    # ------------------------------------------------------------------ downloads
    def result_name(self, suffix: str) -> str:
        """The last result's file name, as the command line names it: ``<input>_completed.nrrd``..."""
        kind = "completed" if self.outcome.task == SHAPE_COMPLETION_TASK else "segmented"
        return f"{_stem(self.loaded.path)}_{kind}{suffix}"

    def segmentation_file(self, fmt: str = "nrrd") -> tuple[str, bytes]:
        """The last result as a label map on the loaded file's grid: (file name, bytes)."""
        if self.outcome is None:
            raise InputError("nothing to download yet: run a method first")
        name = self.result_name(SEGMENTATION_FORMATS[fmt])
        with tempfile.TemporaryDirectory() as tmp:
            path = write_volume(Path(tmp) / name, self.outcome.labels, self.loaded.volume)
            return name, path.read_bytes()

    def mesh_file(self) -> tuple[str, bytes]:
        """The last completion's smooth model as STL: (file name, bytes)."""
        from inr_engine.mesh import write_mesh

        if self.outcome is None or self.outcome.surface is None:
            raise InputError("no model to download: complete a shape first")
        name = self.result_name(".stl")
        with tempfile.TemporaryDirectory() as tmp:
            return name, write_mesh(Path(tmp) / name, self.outcome.surface).read_bytes()


def _stem(path: Path) -> str:
    return split_volume_name(path.name)[0]  # as the command line names its outputs


def _alive(scene, node):
    """``node`` if it is still in ``scene`` (the user may have deleted it), else None."""
    return node if node is not None and scene.IsNodePresent(node) else None


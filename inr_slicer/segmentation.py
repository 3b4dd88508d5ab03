"""The INRSegmentation module's logic: a volume node in, a live-updated segmentation node out.

No widgets and no Qt: the module's widget, the in-Slicer test, the web front end and the pytest
suite (on the ``slicer-core`` wheel) all drive this class the same way. PyTorch is imported only when a run
starts, so the module can show its choices before PyTorch is installed.
"""

from __future__ import annotations

from dataclasses import dataclass

from inr_engine.priors import SEGMENTATION_TASKS
from inr_slicer import worker
from inr_slicer.nodes import check_optional_node, check_output_grid, check_steps, check_text, volume_array
from inr_slicer.outputs import LiveSegmentation, SegmentSpec, default_color
from inr_slicer.worker import FitRun, Progress, RunState


@dataclass
class SegmentationRequest:
    """What to segment and how: the widget's parameter node holds the same fields."""

    volume: object  # vtkMRMLScalarVolumeNode
    method: str = "metaseg"  # "metaseg" or "nisf"
    prior: str = ""  # a bundled prior's name or a prior file; "" = the method's bundled prior
    steps: int = 0  # fitting steps; 0 = the prior's default
    device: str = "auto"  # "auto", "cpu" or "cuda"
    procedure: str = "fast"  # NISF only: "fast" (meta-learned) or "paper" (latent only)
    refine: bool = False  # re-label the most uncertain voxels with the prior's boundary refiner
    output: object = None  # vtkMRMLSegmentationNode to (re)write; None = a new node


class SegmentationLogic:
    """Segment a volume with MetaSeg or NISF on the worker thread, updating the scene every step."""

    def __init__(self, scene):
        self.scene = scene

    def start(self, request: SegmentationRequest) -> FitRun:
        """Check the inputs and start fitting; the returned run is polled from the main thread.

        Bad input raises here (``InputError``, ``PriorError``, ``SegmentationError``, ...) before
        anything in the scene changes. Until the run finishes, the output node shows a live
        preview; cancel or failure puts the output back as it was.
        """
        from inr_engine.runtime import resolve_device
        from inr_engine.segmentation.refinement import load_refiner
        from inr_engine.segmentation.segment import load_segmenter, preview_labels, segment_volume

        if request.method not in SEGMENTATION_TASKS:
            raise ValueError(f"unknown method {request.method!r}; choose from {sorted(SEGMENTATION_TASKS)}")
        steps = check_steps(request.steps)
        check_text(request.prior, "the prior")
        check_text(request.device, "the device")
        check_optional_node(request.output, "vtkMRMLSegmentationNode", "output segmentation")
        image, affine = volume_array(request.volume)
        check_output_grid(request.output, affine, image.shape)
        segmenter = load_segmenter(request.method, request.prior or None, resolve_device(request.device),
                                   request.procedure)
        refiner = load_refiner(segmenter) if request.refine else None
        prepared = segmenter.prepare(image, affine)  # validates the image; cheap next to fitting
        steps = steps or segmenter.default_steps
        output = LiveSegmentation(self.scene, affine, image.shape, segment_specs(segmenter), request.output,
                                  f"{request.volume.GetName()} {request.method}",
                                  request.volume.GetTransformNodeID())

        def job(run: FitRun):
            def on_step(st, volume):
                last = st.step == steps  # its labels come with the result
                run.report(Progress(st.step, steps, st.loss, st.seconds),
                           None if last else lambda: preview_labels(segmenter, volume, st.params))

            return segment_volume(prepared, segmenter, steps, on_step, refiner)

        def finished(result):
            output.write(result.labels)
            output.commit()

        def stopped(state: RunState, _error):
            output.revert()

        run = worker.start(job, on_preview=output.write, on_finished=finished, on_stopped=stopped)
        run.output = output
        return run

    def segment(self, request: SegmentationRequest, timeout: float | None = None):
        """Segment synchronously (for scripts); returns the output segmentation node."""
        run = self.start(request)
        if run.wait(timeout) is not RunState.FINISHED:
            raise RuntimeError(run.error or "segmentation was cancelled")
        return run.output.node


def segment_specs(segmenter) -> list[SegmentSpec]:
    """One output segment per foreground class, named and coloured from the prior's metadata."""
    from inr_engine.segmentation.segment import class_names

    metadata = segmenter.prior.metadata if segmenter.prior is not None else {}
    colors = metadata.get("class_colors") or []
    specs = []
    for label, name in enumerate(class_names(segmenter)[1:], start=1):
        color = tuple(colors[label]) if label < len(colors) else default_color(label - 1)
        specs.append(SegmentSpec(segment_id=name.replace(" ", "_"), name=name, color=color, label=label))
    return specs

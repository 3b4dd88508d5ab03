"""The MetaShapeReconstruction module's logic: a few annotated slices in, a completed segment and a smooth
model out, both updated live while the occupancy INR is fitted.

No widgets and no Qt (see ``inr_slicer.segmentation``). PyTorch is imported only when
a run starts. Loading a completer is ``inr_slicer.completion``'s, which the Segment Editor effect
shares.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inr_slicer import worker
from inr_slicer.completion import load_completer
from inr_slicer.nodes import (
    InputError,
    check_optional_node,
    check_output_grid,
    check_steps,
    check_text,
    labelmap_mask,
    segment_mask,
)
from inr_slicer.outputs import LiveModel, LiveSegmentation, SegmentSpec, default_color
from inr_slicer.worker import FitRun, Progress, RunState

PREVIEW_MODEL_STEP = 1.0  # voxels: a preview's model is the surface of the logits decoded for its labels


@dataclass
class ReconstructionRequest:
    """What to complete and how: the widget's parameter node holds the same fields."""

    input: object  # vtkMRMLSegmentationNode (with ``segment_id``) or vtkMRMLLabelMapVolumeNode
    segment_id: str = ""  # the segment to complete (segmentation input)
    label: int = 0  # the label to complete (label map input); 0 = its only label
    prior: str = ""  # a bundled prior's name or a prior file; "" = chosen for the input (priors.shape_prior_for)
    steps: int = 0  # fitting steps; 0 = the prior's default
    device: str = "auto"
    model_step: float = 0.5  # model sampling in voxels (0.5 = twice as fine as the voxels); 0 = no model
    output: object = None  # vtkMRMLSegmentationNode; None = a new node
    output_model: object = None  # vtkMRMLModelNode; None = a new node


@dataclass
class _Shape:
    mask: np.ndarray
    affine: np.ndarray
    name: str
    color: tuple[float, float, float]


class ReconstructionLogic:
    """Complete a sparsely annotated shape on the worker thread, updating the scene every step."""

    def __init__(self, scene):
        self.scene = scene

    def start(self, request: ReconstructionRequest) -> FitRun:
        """Check the inputs and start fitting; bad input raises before the scene changes."""
        from inr_engine.decode import labels_on_grid
        from inr_engine.inputs import MAX_MESH_STEP
        from inr_engine.priors import shape_prior_for
        from inr_engine.shape.case import annotated_slices
        from inr_engine.shape.complete import check_sparse_labelmap, complete_labelmap, completion_surface

        steps = check_steps(request.steps)
        check_text(request.prior, "the prior")
        check_text(request.device, "the device")
        if not isinstance(request.model_step, (int, float)) or not 0 <= request.model_step <= MAX_MESH_STEP:
            raise InputError(f"the model step must be 0 (no model) to {MAX_MESH_STEP:g} voxels, not "
                             f"{request.model_step!r}")
        check_optional_node(request.output, "vtkMRMLSegmentationNode", "output segmentation")
        check_optional_node(request.output_model, "vtkMRMLModelNode", "output model")
        shape = self._input_shape(request)
        _, box = check_sparse_labelmap(shape.mask, shape.affine)  # as the CLI checks its input
        if request.output is not request.input:
            check_output_grid(request.output, shape.affine, shape.mask.shape)
        annotated_slices(shape.mask, within=box)  # two or more; the preparation itself runs on the worker thread
        completer = load_completer(shape_prior_for(shape.mask, shape.affine, request.prior), request.device)
        steps = steps or completer.cfg.default_steps
        transform = request.input.GetTransformNodeID()
        same_node = request.output is request.input
        segment = LiveSegmentation(
            self.scene, shape.affine, shape.mask.shape,
            [SegmentSpec(f"{shape.name}_completed" if same_node else shape.name,
                         f"{shape.name} completed" if same_node else shape.name, shape.color, 1)],
            request.output, f"{shape.name} completed", transform)
        model = LiveModel(self.scene, request.output_model, f"{shape.name} model", shape.color, transform)
        mesh_step = request.model_step or None

        def job(run: FitRun):
            def preview(st, case):
                logits, lo = completer.decode(case, st.params)
                # previews mesh the voxels' logits (no second decoding); only the result is decoded finer
                surface = completion_surface(completer, case, st.params, PREVIEW_MODEL_STEP, (logits, lo)) \
                    if mesh_step else None
                return labels_on_grid(shape.mask.shape, lo, logits), surface

            def on_step(_label, st, case):
                last = st.step == steps  # its result comes with the completion
                run.report(Progress(st.step, steps, st.loss, st.seconds), None if last else lambda: preview(st, case))

            result = complete_labelmap(shape.mask.astype(np.uint8), shape.affine, completer, steps,
                                       mesh_step=mesh_step, on_step=on_step, check=run.check)
            return result.labels, result.surfaces.get(1), result.report

        def show(outcome):
            labels, surface = outcome[:2]
            segment.write(labels)
            if surface is not None:
                model.write(surface)

        def finished(outcome):
            show(outcome)
            segment.commit()
            model.commit()

        def stopped(_state: RunState, _error):
            segment.revert()
            model.revert()

        run = worker.start(job, on_preview=show, on_finished=finished, on_stopped=stopped)
        run.output, run.output_model = segment, model
        return run

    def complete(self, request: ReconstructionRequest, timeout: float | None = None):
        """Complete synchronously (for scripts); returns (segmentation node, model node or None)."""
        run = self.start(request)
        if run.wait(timeout) is not RunState.FINISHED:
            raise RuntimeError(run.error or "completion was cancelled")
        return run.output.node, run.output_model.node

    @staticmethod
    def _input_shape(request: ReconstructionRequest) -> _Shape:
        node = request.input
        if node is not None and node.IsA("vtkMRMLSegmentationNode"):
            mask, affine = segment_mask(node, request.segment_id)
            segment = node.GetSegmentation().GetSegment(request.segment_id)
            return _Shape(mask, affine, segment.GetName(), tuple(segment.GetColor()))
        if node is not None and node.IsA("vtkMRMLLabelMapVolumeNode"):
            mask, affine = labelmap_mask(node, request.label)
            return _Shape(mask, affine, node.GetName(), default_color(0))
        raise InputError("choose a segmentation (and a segment) or a label map with a few annotated slices")

"""Meta Shape Reconstruction: complete a 3D shape from a few annotated slices with a meta-learned
implicit shape prior, with the segment and a smooth surface model updated after every fitting step.

This file is the GUI only. The work is done by ``inr_slicer.reconstruction``
(MRML in and out, no Qt) on the engine ``inr_engine`` (PyTorch); ``inr_slicer.modulewidget`` holds
the widget life cycle the extension's modules share (its run panel follows a run,
``inr_slicer.dependencies`` installs PyTorch and the other packages on first Apply). Nothing here
imports PyTorch, so the module loads before PyTorch is installed.
"""

import os
import sys
from typing import Annotated

import slicer
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLModelNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest

# inr_slicer and inr_engine sit beside the modules once installed, one folder up in a source checkout:
# put that folder on sys.path. Each module file of the extension repeats these three lines, as nothing
# shared can be imported before they have run.
_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_root, "inr_slicer")) and _root not in sys.path:
    sys.path.append(_root)

from inr_engine.data import sample_path  # noqa: E402
from inr_slicer.modulewidget import Device, ModuleTestMixin, ModuleWidget, nodeID  # noqa: E402

MIN_MODEL_STEP = 0.25  # finest model sampling offered, in voxels; 0 = no model

DOCUMENTATION_URL = "https://github.com/inr-segmentation/SlicerINRSegmentation/blob/main/MetaShapeReconstruction/README.md"


#
# MetaShapeReconstruction
#


class MetaShapeReconstruction(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Meta Shape Reconstruction")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["INR Segmentation developers"]
        self.parent.helpText = _("""
Completes a 3D shape from a few annotated slices (any orientation, any spacing): a meta-learned
implicit shape prior is fine-tuned on the slices in a few steps. The completed segment and a smooth
surface model, at a resolution finer than the voxels, update after every fitting step; <b>Cancel</b>
stops at any time and puts the outputs back as they were. PyTorch (through the PyTorch extension)
and a few Python packages are installed on the first Apply, after asking.
See the <a href="{docs}">module documentation</a>.
""").format(docs=DOCUMENTATION_URL)
        self.parent.acknowledgementText = _("""
Sparse-slice shape completion follows De Paolis et al. (ShapeMI @ MICCAI 2024). The bundled priors
and samples derive from AdrenalMNIST3D (CC BY 4.0; Yang et al., Sci. Data 2023) and the DeepMind
head-and-neck organ segmentations (CC BY 4.0; Nikolov et al., J Med Internet Res 2021).
""")


#
# MetaShapeReconstructionParameterNode
#


@parameterNodeWrapper
class MetaShapeReconstructionParameterNode:
    """
    The module's choices, saved with the scene (ReconstructionRequest holds the same fields).

    inputSegmentation - the segmentation holding the annotated slices (used if set).
    inputSegmentID - the segment of inputSegmentation to complete.
    inputLabelmap - a label map with the annotated slices (used if no segmentation is set).
    label - the label map's label to complete; 0 = its only label.
    prior - a bundled shape prior's name or a prior file; "" = the default prior.
    steps - fitting steps; 0 = the prior's default.
    device - auto, cpu or cuda.
    modelStep - model sampling in voxels (0.25-1); 0 = no model.
    outputSegmentation - the segmentation to write; none = a new one, created on Apply.
    outputModel - the model to write; none = a new one, created on Apply.
    """

    inputSegmentation: vtkMRMLSegmentationNode
    inputSegmentID: str = ""
    inputLabelmap: vtkMRMLLabelMapVolumeNode
    label: Annotated[int, WithinRange(0, 65535)] = 0
    prior: str = ""
    steps: Annotated[int, WithinRange(0, 10000)] = 0
    device: Device = Device.AUTO
    modelStep: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    outputSegmentation: vtkMRMLSegmentationNode
    outputModel: vtkMRMLModelNode


#
# MetaShapeReconstructionWidget
#


class MetaShapeReconstructionWidget(ModuleWidget):
    """Annotated slices (a segment or a label map), prior, output segmentation and model; ModuleWidget
    (inr_slicer/modulewidget.py) holds the template's setup (the .ui) and life cycle (cleanup, enter, exit, scene
    close, setParameterNode) and Apply, which the extension's module widgets share.
    """

    def setup(self) -> None:
        ModuleWidget.setup(self)  # the template's: Resources/UI/MetaShapeReconstruction.ui in self.ui

        # The logic imports the engine (and PyTorch) only when a run starts.
        from inr_slicer.reconstruction import ReconstructionLogic

        self.logic = ReconstructionLogic(slicer.mrmlScene)
        self.setupRun(failureMessage=_("Shape completion failed."),
                      startFailureMessage=_("Shape completion could not start."),
                      priorDialogTitle=_("Choose a shape prior"))
        self.ui.inputSegmentSelector.connect("currentSegmentChanged(QString)", self.onSegmentChanged)

        self.initializeParameterNode()

    # ------------------------------------------------------------------ parameter node
    def initializeParameterNode(self) -> None:
        self.setParameterNode(MetaShapeReconstructionParameterNode(self.moduleParameterNode()))

        parameters = self._parameterNode
        if not parameters.inputSegmentation and not parameters.inputLabelmap:
            segmentation = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
            if segmentation:
                parameters.inputSegmentation = segmentation
            else:
                labelmap = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLLabelMapVolumeNode")
                if labelmap:
                    parameters.inputLabelmap = labelmap

    def _updateGUIFromParameterNode(self) -> None:
        from inr_slicer.priors import SHAPE_COMPLETION_TASK, prior_choices

        parameters = self._parameterNode
        self.priorChooser.update(prior_choices(SHAPE_COMPLETION_TASK), parameters.prior if parameters else "")
        self._updateSegmentSelector()
        useLabel = bool(parameters) and parameters.inputSegmentation is None and parameters.inputLabelmap is not None
        self.ui.labelSpinBox.enabled = useLabel
        self.ui.labelLabel.enabled = useLabel

    def _updateSegmentSelector(self) -> None:
        """The segment selector follows the chosen segmentation and the stored segment ID."""
        parameters = self._parameterNode
        selector = self.ui.inputSegmentSelector
        segmentation = parameters.inputSegmentation if parameters else None
        wanted = parameters.inputSegmentID if parameters else ""
        if nodeID(selector.currentNode()) != nodeID(segmentation):
            selector.setCurrentNode(segmentation)
        if wanted and wanted != selector.currentSegmentID() and wanted in list(selector.segmentIDs()):
            selector.setCurrentSegmentID(wanted)
        selector.enabled = segmentation is not None
        self.ui.inputSegmentLabel.enabled = segmentation is not None
        current = selector.currentSegmentID() if segmentation is not None else ""
        if parameters and parameters.inputSegmentID != (current or ""):
            parameters.inputSegmentID = current or ""  # the selector's pick (first segment, or after a removal)

    def onSegmentChanged(self, segmentID) -> None:
        if self._updatingGUI or not self._parameterNode:
            return
        self._parameterNode.inputSegmentID = segmentID or ""

    def _checkCanApply(self) -> None:
        parameters = self._parameterNode
        if parameters and parameters.inputSegmentation is not None and parameters.inputSegmentID:
            self.panel.setApplyAllowed(True, _("Complete the selected segment; the outputs update after every step"))
        elif parameters and parameters.inputSegmentation is None and parameters.inputLabelmap is not None:
            self.panel.setApplyAllowed(True, _("Complete the label map's shape; the outputs update after every step"))
        elif parameters and parameters.inputSegmentation is not None:
            self.panel.setApplyAllowed(False, _("Select the segment to complete"))
        else:
            self.panel.setApplyAllowed(False, _("Select a segmentation (and a segment) or a label map"))

    def _inputKey(self):
        """What the run would complete: the segmentation and segment, or the label map and label."""
        parameters = self._parameterNode
        if parameters.inputSegmentation is not None:
            return nodeID(parameters.inputSegmentation), parameters.inputSegmentID
        return nodeID(parameters.inputLabelmap), parameters.label

    # ------------------------------------------------------------------ run
    def _buildRequest(self):
        from inr_slicer.reconstruction import ReconstructionRequest

        parameters = self._parameterNode
        useSegmentation = parameters.inputSegmentation is not None
        modelStep = parameters.modelStep
        return ReconstructionRequest(
            input=parameters.inputSegmentation if useSegmentation else parameters.inputLabelmap,
            segment_id=parameters.inputSegmentID if useSegmentation else "",
            label=parameters.label, prior=parameters.prior, steps=parameters.steps,
            device=parameters.device.value,
            model_step=max(modelStep, MIN_MODEL_STEP) if modelStep > 0 else 0.0,
            output=parameters.outputSegmentation, output_model=parameters.outputModel)

    def _runOutputs(self, run) -> dict:
        return {"outputSegmentation": run.output.node, "outputModel": run.output_model.node}


#
# MetaShapeReconstructionTest
#


SPARSE_SAMPLE = "adrenal_val000_sparse_w8_axis0.nii.gz"  # three annotated slices of an adrenal gland


class MetaShapeReconstructionTest(ModuleTestMixin, ScriptedLoadableModuleTest):
    """The logic on the shipped sparse adrenal sample, as the pytest suite runs it outside Slicer."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.runTests(self.test_complete_labelmap, self.test_complete_segment, self.test_cancel_leaves_scene_unchanged)

    def _assertCompleted(self, segmentationNode, segmentName, modelNode):
        segmentation = segmentationNode.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 1)
        segmentId = segmentation.GetNthSegmentID(0)
        self.assertEqual(segmentation.GetSegment(segmentId).GetName(), segmentName)
        surface = segmentationNode.GetClosedSurfaceInternalRepresentation(segmentId)
        self.assertIsNotNone(surface)
        self.assertGreater(surface.GetNumberOfPoints(), 0)
        self.assertIsNotNone(modelNode)
        self.assertGreater(modelNode.GetPolyData().GetNumberOfPoints(), 0)

    def test_complete_labelmap(self):
        self._requireDependencies()
        from inr_slicer.reconstruction import ReconstructionLogic, ReconstructionRequest

        self.delayDisplay("Completing the sparse adrenal label map")
        labelmap = slicer.util.loadLabelVolume(str(sample_path(SPARSE_SAMPLE)))
        segmentationNode, modelNode = ReconstructionLogic(slicer.mrmlScene).complete(
            ReconstructionRequest(labelmap, steps=3, device="cpu", model_step=1.0), timeout=600)
        self._assertCompleted(segmentationNode, labelmap.GetName(), modelNode)
        self.delayDisplay("Test passed")

    def test_complete_segment(self):
        self._requireDependencies()
        from inr_slicer.reconstruction import ReconstructionLogic, ReconstructionRequest

        self.delayDisplay("Completing a segment drawn on three slices")
        labelmap = slicer.util.loadLabelVolume(str(sample_path(SPARSE_SAMPLE)))
        sparse = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "sparse")
        sparse.SetReferenceImageGeometryParameterFromVolumeNode(labelmap)
        slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, sparse)
        segmentId = sparse.GetSegmentation().GetNthSegmentID(0)
        segmentName = sparse.GetSegmentation().GetSegment(segmentId).GetName()

        segmentationNode, modelNode = ReconstructionLogic(slicer.mrmlScene).complete(
            ReconstructionRequest(sparse, segment_id=segmentId, steps=3, device="cpu", model_step=1.0), timeout=600)
        self.assertIsNot(segmentationNode, sparse)
        self._assertCompleted(segmentationNode, segmentName, modelNode)
        self.delayDisplay("Test passed")

    def test_cancel_leaves_scene_unchanged(self):
        self._requireDependencies()
        from inr_slicer.reconstruction import ReconstructionLogic, ReconstructionRequest

        self.delayDisplay("Cancelling a completion right after its start")
        labelmap = slicer.util.loadLabelVolume(str(sample_path(SPARSE_SAMPLE)))
        self.assertCancelLeavesSceneUnchanged(ReconstructionLogic(slicer.mrmlScene),
                                              ReconstructionRequest(labelmap, steps=200, device="cpu"))
        self.delayDisplay("Test passed")

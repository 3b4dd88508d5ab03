"""Meta Shape Reconstruction: complete a 3D shape from a few annotated slices with a meta-learned
implicit shape prior, with the segment and a smooth surface model updated after every fitting step.

This file is the GUI only. The work is done by ``MetaShapeReconstructionLib.ReconstructionLogic``
(MRML in and out, no Qt) on the engine ``inr_engine`` (PyTorch); ``inr_slicer.runpanel`` follows a
run from the panel and ``inr_slicer.dependencies`` installs PyTorch and the other packages on
first Apply. Nothing here imports PyTorch, so the module loads before PyTorch is installed.
"""

import enum
import os
import sys
import unittest
from typing import Annotated

import slicer
import vtk
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLModelNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


def _addSourceCheckoutToPath() -> None:
    """Run from a source checkout, the shared packages (inr_slicer, inr_engine) sit one folder up;
    an installed extension has them beside its modules, on the path already."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isdir(os.path.join(root, "inr_slicer")) and root not in sys.path:
        sys.path.append(root)


_addSourceCheckoutToPath()

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


class Device(enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"

    def label(self) -> str:
        return {"auto": _("Automatic (CUDA if available, else CPU)"), "cpu": _("CPU"),
                "cuda": _("CUDA (NVIDIA GPU)")}[self.value]


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


def _nodeID(node):
    return node.GetID() if node is not None else None


#
# MetaShapeReconstructionWidget
#


class MetaShapeReconstructionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self.panel = None
        self.priorChooser = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingGUI = False
        self._filledOutputs = None  # (input key, output IDs) of the outputs the last finished run created

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MetaShapeReconstruction.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        # Neither imports PyTorch: the logic imports the engine only when a run starts.
        from MetaShapeReconstructionLib.ReconstructionLogic import ReconstructionLogic

        from inr_slicer.runpanel import PriorChooser, RunPanel

        self.logic = ReconstructionLogic(slicer.mrmlScene)
        self.panel = RunPanel(
            self.ui.progressBar, self.ui.statusLabel, self.ui.applyButton, self.ui.cancelButton,
            failureMessage=_("Shape completion failed."),
            lockedWidgets=[self.ui.inputsCollapsibleButton, self.ui.methodCollapsibleButton,
                           self.ui.outputsCollapsibleButton, self.ui.advancedCollapsibleButton])
        self.priorChooser = PriorChooser(self.ui.priorComboBox, self._onPriorChosen, _("Choose a shape prior"))

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.inputSegmentSelector.connect("currentSegmentChanged(QString)", self.onSegmentChanged)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        if self.panel:
            self.panel.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        if self.panel:
            self.panel.cancel()  # the run's outputs go before the scene does
        self._filledOutputs = None
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onReload(self) -> None:
        """Developer mode: reload the logic and the shared GUI helpers with the module."""
        import importlib

        for name in ("inr_slicer.dependencies", "inr_slicer.runpanel",
                     "MetaShapeReconstructionLib.ReconstructionLogic"):
            if name in sys.modules:
                importlib.reload(sys.modules[name])
        ScriptedLoadableModuleWidget.onReload(self)

    # ------------------------------------------------------------------ parameter node
    def initializeParameterNode(self) -> None:
        store = ScriptedLoadableModuleLogic()
        store.moduleName = self.moduleName  # the scene's parameter node of this module
        self.setParameterNode(MetaShapeReconstructionParameterNode(store.getParameterNode()))

        parameters = self._parameterNode
        if not parameters.inputSegmentation and not parameters.inputLabelmap:
            segmentation = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
            if segmentation:
                parameters.inputSegmentation = segmentation
            else:
                labelmap = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLLabelMapVolumeNode")
                if labelmap:
                    parameters.inputLabelmap = labelmap

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # In the .ui file, widgets bound to a parameter have a "SlicerParameterName" dynamic property.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        if self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            parameters = self._parameterNode
            self.priorChooser.update(self.logic.prior_choices(), parameters.prior if parameters else "")
            self._updateSegmentSelector()
            self._releaseFilledOutputs()
            useLabel = bool(parameters) and parameters.inputSegmentation is None and \
                parameters.inputLabelmap is not None
            self.ui.labelSpinBox.enabled = useLabel
            self.ui.labelLabel.enabled = useLabel
        finally:
            self._updatingGUI = False
        self._checkCanApply()

    def _updateSegmentSelector(self) -> None:
        """The segment selector follows the chosen segmentation and the stored segment ID."""
        parameters = self._parameterNode
        selector = self.ui.inputSegmentSelector
        segmentation = parameters.inputSegmentation if parameters else None
        wanted = parameters.inputSegmentID if parameters else ""
        if _nodeID(selector.currentNode()) != _nodeID(segmentation):
            selector.setCurrentNode(segmentation)
        if wanted and wanted != selector.currentSegmentID() and wanted in list(selector.segmentIDs()):
            selector.setCurrentSegmentID(wanted)
        selector.enabled = segmentation is not None
        self.ui.inputSegmentLabel.enabled = segmentation is not None
        current = selector.currentSegmentID() if segmentation is not None else ""
        if parameters and parameters.inputSegmentID != (current or ""):
            parameters.inputSegmentID = current or ""  # the selector's pick (first segment, or after a removal)

    def _inputKey(self):
        """What the run would complete: the segmentation and segment, or the label map and label."""
        parameters = self._parameterNode
        if parameters.inputSegmentation is not None:
            return _nodeID(parameters.inputSegmentation), parameters.inputSegmentID
        return _nodeID(parameters.inputLabelmap), parameters.label

    def _releaseFilledOutputs(self) -> None:
        """Outputs a finished run created belong to that run's input: once another input is chosen,
        the next Apply creates new ones instead of overwriting them."""
        parameters = self._parameterNode
        if not parameters or not self._filledOutputs or self._inputKey() == self._filledOutputs[0]:
            return
        segmentationID, modelID = self._filledOutputs[1]
        if segmentationID and _nodeID(parameters.outputSegmentation) == segmentationID:
            parameters.outputSegmentation = None
        if modelID and _nodeID(parameters.outputModel) == modelID:
            parameters.outputModel = None
        self._filledOutputs = None

    def onSegmentChanged(self, segmentID) -> None:
        if self._updatingGUI or not self._parameterNode:
            return
        self._parameterNode.inputSegmentID = segmentID or ""

    def _onPriorChosen(self, prior: str) -> None:
        if self._parameterNode:
            self._parameterNode.prior = prior

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

    # ------------------------------------------------------------------ run
    def onApplyButton(self) -> None:
        if self.panel.running or not self._parameterNode:
            return
        with slicer.util.tryWithErrorDisplay(_("The Python packages INR Segmentation needs could not be installed.")):
            from inr_slicer.dependencies import ensure_dependencies

            if not ensure_dependencies():
                return  # the user declined an installation; nothing changed
        from MetaShapeReconstructionLib.ReconstructionLogic import ReconstructionRequest

        parameters = self._parameterNode
        useSegmentation = parameters.inputSegmentation is not None
        modelStep = parameters.modelStep
        request = ReconstructionRequest(
            input=parameters.inputSegmentation if useSegmentation else parameters.inputLabelmap,
            segment_id=parameters.inputSegmentID if useSegmentation else "",
            label=parameters.label, prior=parameters.prior, steps=parameters.steps,
            device=parameters.device.value,
            model_step=max(modelStep, MIN_MODEL_STEP) if modelStep > 0 else 0.0,
            output=parameters.outputSegmentation, output_model=parameters.outputModel)
        with slicer.util.tryWithErrorDisplay(_("Shape completion could not start."), waitCursor=True):
            run = self.logic.start(request)  # bad input raises here, before the scene changes
            self.panel.start(run, self._onRunDone)

    def _onRunDone(self, run) -> None:
        from inr_slicer.runpanel import showIn3D
        from inr_slicer.worker import RunState

        if run.state is not RunState.FINISHED:
            return  # cancelled or failed: the outputs were put back, the panel told the user
        segmentation, model = run.output.node, run.output_model.node
        parameters = self._parameterNode
        if parameters:
            filled = (None if parameters.outputSegmentation is not None else _nodeID(segmentation),
                      None if parameters.outputModel is not None else _nodeID(model))
            if segmentation is not None:
                parameters.outputSegmentation = segmentation
            if model is not None:
                parameters.outputModel = model
            self._filledOutputs = (self._inputKey(), filled)
        showIn3D(segmentation)
        showIn3D(model)


#
# MetaShapeReconstructionTest
#


def samplePath(name: str) -> str:
    """A sample file shipped with the engine (inr_engine/data/samples)."""
    import inr_engine.data

    return os.path.join(list(inr_engine.data.__path__)[0], "samples", name)


SPARSE_SAMPLE = "adrenal_val000_sparse_w8_axis0.nii.gz"  # three annotated slices of an adrenal gland


class MetaShapeReconstructionTest(ScriptedLoadableModuleTest):
    """The logic on the shipped sparse adrenal sample, as the pytest suite runs it outside Slicer."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_complete_labelmap, self.test_complete_segment,
                     self.test_cancel_leaves_scene_unchanged):
            self.setUp()
            try:
                test()
            except unittest.SkipTest as reason:
                self.delayDisplay(f"Skipped {test.__name__}: {reason}")

    def _requireDependencies(self):
        from inr_slicer.dependencies import TORCH_REQUIREMENT, load_requirements, missing_requirements

        missing = missing_requirements(["torch" + TORCH_REQUIREMENT, *load_requirements()])
        if missing:
            self.skipTest(f"not installed: {', '.join(missing)} (press Apply in the module once to install them)")

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
        from MetaShapeReconstructionLib.ReconstructionLogic import ReconstructionLogic, ReconstructionRequest

        self.delayDisplay("Completing the sparse adrenal label map")
        labelmap = slicer.util.loadLabelVolume(samplePath(SPARSE_SAMPLE))
        segmentationNode, modelNode = ReconstructionLogic(slicer.mrmlScene).complete(
            ReconstructionRequest(labelmap, steps=3, device="cpu", model_step=1.0), timeout=600)
        self._assertCompleted(segmentationNode, labelmap.GetName(), modelNode)
        self.delayDisplay("Test passed")

    def test_complete_segment(self):
        self._requireDependencies()
        from MetaShapeReconstructionLib.ReconstructionLogic import ReconstructionLogic, ReconstructionRequest

        self.delayDisplay("Completing a segment drawn on three slices")
        labelmap = slicer.util.loadLabelVolume(samplePath(SPARSE_SAMPLE))
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
        import time

        from MetaShapeReconstructionLib.ReconstructionLogic import ReconstructionLogic, ReconstructionRequest

        from inr_slicer.worker import RunState

        self.delayDisplay("Cancelling a completion right after its start")
        labelmap = slicer.util.loadLabelVolume(samplePath(SPARSE_SAMPLE))
        nodes = slicer.mrmlScene.GetNumberOfNodes()
        run = ReconstructionLogic(slicer.mrmlScene).start(ReconstructionRequest(labelmap, steps=200, device="cpu"))
        run.cancel()
        time.sleep(0.5)  # let the worker reach its next step
        run.poll()
        self.assertIs(run.state, RunState.CANCELLED)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodes)
        self.delayDisplay("Test passed")

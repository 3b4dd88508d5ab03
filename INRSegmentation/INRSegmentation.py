"""INR Segmentation: segment a volume by fitting a meta-learned implicit neural representation
(MetaSeg or NISF) to it, with the segmentation updated after every fitting step.

This file is the GUI only. The work is done by ``INRSegmentationLib.SegmentationLogic`` (MRML in
and out, no Qt) on the engine ``inr_engine`` (PyTorch); ``inr_slicer.runpanel`` follows a run from
the panel and ``inr_slicer.dependencies`` installs PyTorch and the other packages on first Apply.
Nothing here imports PyTorch, so the module loads before PyTorch is installed.
"""

import enum
import os
import sys
import unittest
from typing import Annotated

import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
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

DOCUMENTATION_URL = "https://github.com/inr-segmentation/SlicerINRSegmentation/blob/main/INRSegmentation/README.md"


#
# INRSegmentation
#


class INRSegmentation(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("INR Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["INR Segmentation developers"]
        self.parent.helpText = _("""
Segments a volume by fitting a meta-learned implicit neural representation to it: <b>MetaSeg</b>
(a network fitted to the volume's intensities, whose features a learned head turns into labels) or
<b>NISF</b> (an auto-decoder whose latent code is fitted to the intensities). The segmentation and
its 3D surface update after every fitting step; <b>Cancel</b> stops at any time and puts the output
back as it was. PyTorch (through the PyTorch extension) and a few Python packages are installed on
the first Apply, after asking.
See the <a href="{docs}">module documentation</a>.
""").format(docs=DOCUMENTATION_URL)
        self.parent.acknowledgementText = _("""
MetaSeg follows Vyas et al. (MICCAI 2025), NISF follows Stolt-Ans&oacute; et al. (MICCAI 2023).
The bundled hippocampus priors and samples derive from the Medical Segmentation Decathlon,
Task04 Hippocampus (CC BY-SA 4.0; Simpson et al., arXiv:1902.09063; Antonelli et al., Nat. Commun. 2022).
""")


#
# INRSegmentationParameterNode
#


class Method(enum.Enum):
    METASEG = "metaseg"
    NISF = "nisf"

    def label(self) -> str:
        return {"metaseg": "MetaSeg", "nisf": "NISF"}[self.value]


class Device(enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"

    def label(self) -> str:
        return {"auto": _("Automatic (CUDA if available, else CPU)"), "cpu": _("CPU"),
                "cuda": _("CUDA (NVIDIA GPU)")}[self.value]


class Procedure(enum.Enum):
    FAST = "fast"
    PAPER = "paper"

    def label(self) -> str:
        return {"fast": _("Fast (meta-learned)"),
                "paper": _("Paper (latent code only, slow)")}[self.value]


@parameterNodeWrapper
class INRSegmentationParameterNode:
    """
    The module's choices, saved with the scene (SegmentationRequest holds the same fields).

    inputVolume - the volume to segment.
    method - MetaSeg or NISF.
    prior - a bundled prior's name or a prior file; "" = the method's default prior.
    steps - fitting steps; 0 = the prior's default.
    device - auto, cpu or cuda.
    procedure - NISF only: fast or paper.
    outputSegmentation - the segmentation to write; none = a new one, created on Apply.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    method: Method = Method.METASEG
    prior: str = ""
    steps: Annotated[int, WithinRange(0, 10000)] = 0
    device: Device = Device.AUTO
    procedure: Procedure = Procedure.FAST
    outputSegmentation: vtkMRMLSegmentationNode


def _nodeID(node):
    return node.GetID() if node is not None else None


#
# INRSegmentationWidget
#


class INRSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
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
        self._filledOutput = None  # (input ID, output ID) of the segmentation the last finished run created

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/INRSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        # Neither imports PyTorch: the logic imports the engine only when a run starts.
        from INRSegmentationLib.SegmentationLogic import SegmentationLogic

        from inr_slicer.runpanel import PriorChooser, RunPanel

        self.logic = SegmentationLogic(slicer.mrmlScene)
        self.panel = RunPanel(
            self.ui.progressBar, self.ui.statusLabel, self.ui.applyButton, self.ui.cancelButton,
            failureMessage=_("Segmentation failed."),
            lockedWidgets=[self.ui.inputsCollapsibleButton, self.ui.methodCollapsibleButton,
                           self.ui.outputsCollapsibleButton, self.ui.advancedCollapsibleButton])
        self.priorChooser = PriorChooser(self.ui.priorComboBox, self._onPriorChosen, _("Choose a segmentation prior"))

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)

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
            self.panel.cancel()  # the run's output goes before the scene does
        self._filledOutput = None
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onReload(self) -> None:
        """Developer mode: reload the logic and the shared GUI helpers with the module."""
        import importlib

        for name in ("inr_slicer.dependencies", "inr_slicer.runpanel", "INRSegmentationLib.SegmentationLogic"):
            if name in sys.modules:
                importlib.reload(sys.modules[name])
        ScriptedLoadableModuleWidget.onReload(self)

    # ------------------------------------------------------------------ parameter node
    def initializeParameterNode(self) -> None:
        store = ScriptedLoadableModuleLogic()
        store.moduleName = self.moduleName  # the scene's parameter node of this module
        self.setParameterNode(INRSegmentationParameterNode(store.getParameterNode()))

        if not self._parameterNode.inputVolume:
            volumes = [node for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                       if not node.IsA("vtkMRMLLabelMapVolumeNode")]
            if volumes:
                self._parameterNode.inputVolume = volumes[0]

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
            self._releaseFilledOutput()
            self._updatePriorComboBox()
            nisf = bool(self._parameterNode) and self._parameterNode.method is Method.NISF
            self.ui.procedureComboBox.enabled = nisf
            self.ui.procedureLabel.enabled = nisf
        finally:
            self._updatingGUI = False
        self._checkCanApply()

    def _checkCanApply(self) -> None:
        if self._parameterNode and self._parameterNode.inputVolume:
            self.panel.setApplyAllowed(True, _("Segment the input volume; the output updates after every step"))
        else:
            self.panel.setApplyAllowed(False, _("Select an input volume"))

    def _releaseFilledOutput(self) -> None:
        """A segmentation a finished run created belongs to that run's input: once another input is
        chosen, the next Apply creates a new one (the logic refuses one made on another grid)."""
        parameters = self._parameterNode
        if not parameters or not self._filledOutput or _nodeID(parameters.inputVolume) == self._filledOutput[0]:
            return
        if _nodeID(parameters.outputSegmentation) == self._filledOutput[1]:
            parameters.outputSegmentation = None
        self._filledOutput = None

    # ------------------------------------------------------------------ prior
    def _updatePriorComboBox(self) -> None:
        parameters = self._parameterNode
        method = parameters.method.value if parameters else Method.METASEG.value
        choices = self.logic.prior_choices(method)
        prior = parameters.prior if parameters else ""
        if prior and prior not in choices and any(prior in self.logic.prior_choices(m.value) for m in Method):
            parameters.prior = prior = ""  # another method's bundled prior: back to this method's default
        self.priorChooser.update(choices, prior)

    def _onPriorChosen(self, prior: str) -> None:
        if self._parameterNode:
            self._parameterNode.prior = prior

    # ------------------------------------------------------------------ run
    def onApplyButton(self) -> None:
        if self.panel.running or not self._parameterNode:
            return
        with slicer.util.tryWithErrorDisplay(_("The Python packages INR Segmentation needs could not be installed.")):
            from inr_slicer.dependencies import ensure_dependencies

            if not ensure_dependencies():
                return  # the user declined an installation; nothing changed
        from INRSegmentationLib.SegmentationLogic import SegmentationRequest

        parameters = self._parameterNode
        request = SegmentationRequest(
            volume=parameters.inputVolume, method=parameters.method.value, prior=parameters.prior,
            steps=parameters.steps, device=parameters.device.value, procedure=parameters.procedure.value,
            output=parameters.outputSegmentation)
        with slicer.util.tryWithErrorDisplay(_("Segmentation could not start."), waitCursor=True):
            run = self.logic.start(request)  # bad input raises here, before the scene changes
            self.panel.start(run, self._onRunDone)

    def _onRunDone(self, run) -> None:
        from inr_slicer.runpanel import showIn3D
        from inr_slicer.worker import RunState

        if run.state is not RunState.FINISHED:
            return  # cancelled or failed: the output was put back, the panel told the user
        node = run.output.node
        parameters = self._parameterNode
        if parameters and node is not None:
            if parameters.outputSegmentation is None:  # the run created the node
                self._filledOutput = (_nodeID(parameters.inputVolume), _nodeID(node))
            parameters.outputSegmentation = node
        showIn3D(node)


#
# INRSegmentationTest
#


def samplePath(name: str) -> str:
    """A sample file shipped with the engine (inr_engine/data/samples)."""
    import inr_engine.data

    return os.path.join(list(inr_engine.data.__path__)[0], "samples", name)


class INRSegmentationTest(ScriptedLoadableModuleTest):
    """The logic on the shipped hippocampus sample, as the pytest suite runs it outside Slicer."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_segment_hippocampus, self.test_cancel_leaves_scene_unchanged):
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

    def test_segment_hippocampus(self):
        self._requireDependencies()
        from INRSegmentationLib.SegmentationLogic import SegmentationLogic, SegmentationRequest

        self.delayDisplay("Segmenting the hippocampus sample")
        volume = slicer.util.loadVolume(samplePath("hippocampus_004_image.nii.gz"))
        node = SegmentationLogic(slicer.mrmlScene).segment(
            SegmentationRequest(volume, method="metaseg", steps=2, device="cpu"), timeout=600)

        segmentation = node.GetSegmentation()
        segmentIds = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        self.assertEqual(sorted(segmentation.GetSegment(s).GetName() for s in segmentIds), ["anterior", "posterior"])
        surfacePoints = 0
        for segmentId in segmentIds:
            surface = node.GetClosedSurfaceInternalRepresentation(segmentId)
            surfacePoints += surface.GetNumberOfPoints() if surface is not None else 0
        self.assertGreater(surfacePoints, 0)
        self.assertEqual(node.GetTransformNodeID(), volume.GetTransformNodeID())
        self.delayDisplay("Test passed")

    def test_cancel_leaves_scene_unchanged(self):
        self._requireDependencies()
        import time

        from INRSegmentationLib.SegmentationLogic import SegmentationLogic, SegmentationRequest

        from inr_slicer.worker import RunState

        self.delayDisplay("Cancelling a segmentation right after its start")
        volume = slicer.util.loadVolume(samplePath("hippocampus_004_image.nii.gz"))
        nodes = slicer.mrmlScene.GetNumberOfNodes()
        run = SegmentationLogic(slicer.mrmlScene).start(SegmentationRequest(volume, steps=50, device="cpu"))
        run.cancel()
        time.sleep(0.5)  # let the worker reach its next step
        run.poll()
        self.assertIs(run.state, RunState.CANCELLED)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodes)
        self.delayDisplay("Test passed")

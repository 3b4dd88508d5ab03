"""INR Segmentation: segment a volume by fitting a meta-learned implicit neural representation
(MetaSeg or NISF) to it, with the segmentation updated after every fitting step.

This file is the GUI only. The work is done by ``inr_slicer.segmentation`` (MRML in
and out, no Qt) on the engine ``inr_engine`` (PyTorch); ``inr_slicer.modulewidget`` holds the widget
life cycle the extension's modules share (its run panel follows a run, ``inr_slicer.dependencies``
installs PyTorch and the other packages on first Apply). Nothing here imports PyTorch, so the
module loads before PyTorch is installed.
"""

import enum
import os
import sys
from typing import Annotated

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
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
    refineBoundaries - re-label the most uncertain voxels with the prior's boundary refiner.
    outputSegmentation - the segmentation to write; none = a new one, created on Apply.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    method: Method = Method.METASEG
    prior: str = ""
    steps: Annotated[int, WithinRange(0, 10000)] = 0
    device: Device = Device.AUTO
    procedure: Procedure = Procedure.FAST
    refineBoundaries: bool = False
    outputSegmentation: vtkMRMLSegmentationNode


#
# INRSegmentationWidget
#


class INRSegmentationWidget(ModuleWidget):
    """Input volume, method, prior and output segmentation; see ModuleWidget (inr_slicer/modulewidget.py)
    for what all the extension's module widgets do alike (the .ui, cleanup, enter, exit, scene close,
    setParameterNode, Apply).
    """

    def setup(self) -> None:
        ModuleWidget.setup(self)  # the template's: Resources/UI/INRSegmentation.ui in self.ui

        # The logic imports the engine (and PyTorch) only when a run starts.
        from inr_slicer.segmentation import SegmentationLogic

        self.logic = SegmentationLogic(slicer.mrmlScene)
        self.setupRun(failureMessage=_("Segmentation failed."), startFailureMessage=_("Segmentation could not start."),
                      priorDialogTitle=_("Choose a segmentation prior"))
        self.initializeParameterNode()

    # ------------------------------------------------------------------ parameter node
    def initializeParameterNode(self) -> None:
        self.setParameterNode(INRSegmentationParameterNode(self.moduleParameterNode()))

        if not self._parameterNode.inputVolume:
            volumes = [node for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                       if not node.IsA("vtkMRMLLabelMapVolumeNode")]
            if volumes:
                self._parameterNode.inputVolume = volumes[0]

    def _updateGUIFromParameterNode(self) -> None:
        self._updatePriorComboBox()
        nisf = bool(self._parameterNode) and self._parameterNode.method is Method.NISF
        self.ui.procedureComboBox.enabled = nisf
        self.ui.procedureLabel.enabled = nisf

    def _updatePriorComboBox(self) -> None:
        from inr_slicer.priors import prior_choices

        parameters = self._parameterNode
        method = parameters.method.value if parameters else Method.METASEG.value
        choices = prior_choices(method)
        prior = parameters.prior if parameters else ""
        if prior and prior not in choices and any(prior in prior_choices(m.value) for m in Method):
            parameters.prior = prior = ""  # another method's bundled prior: back to this method's default
        self.priorChooser.update(choices, prior)

    def _checkCanApply(self) -> None:
        if self._parameterNode and self._parameterNode.inputVolume:
            self.panel.setApplyAllowed(True, _("Segment the input volume; the output updates after every step"))
        else:
            self.panel.setApplyAllowed(False, _("Select an input volume"))

    def _inputKey(self):
        """A segmentation a finished run created belongs to its input volume (the logic refuses one
        made on another grid)."""
        return nodeID(self._parameterNode.inputVolume)

    # ------------------------------------------------------------------ run
    def _buildRequest(self):
        from inr_slicer.segmentation import SegmentationRequest

        parameters = self._parameterNode
        return SegmentationRequest(
            volume=parameters.inputVolume, method=parameters.method.value, prior=parameters.prior,
            steps=parameters.steps, device=parameters.device.value, procedure=parameters.procedure.value,
            refine=parameters.refineBoundaries,
            output=parameters.outputSegmentation)

    def _runOutputs(self, run) -> dict:
        return {"outputSegmentation": run.output.node}


#
# INRSegmentationTest
#


class INRSegmentationTest(ModuleTestMixin, ScriptedLoadableModuleTest):
    """The logic on the shipped hippocampus sample, as the pytest suite runs it outside Slicer."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.runTests(self.test_segment_hippocampus, self.test_cancel_leaves_scene_unchanged)

    def test_segment_hippocampus(self):
        self._requireDependencies()
        from inr_slicer.segmentation import SegmentationLogic, SegmentationRequest

        self.delayDisplay("Segmenting the hippocampus sample")
        volume = slicer.util.loadVolume(str(sample_path("hippocampus_004_image.nii.gz")))
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
        from inr_slicer.segmentation import SegmentationLogic, SegmentationRequest

        self.delayDisplay("Cancelling a segmentation right after its start")
        volume = slicer.util.loadVolume(str(sample_path("hippocampus_004_image.nii.gz")))
        self.assertCancelLeavesSceneUnchanged(SegmentationLogic(slicer.mrmlScene),
                                              SegmentationRequest(volume, steps=50, device="cpu"))
        self.delayDisplay("Test passed")

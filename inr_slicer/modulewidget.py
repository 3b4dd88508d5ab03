"""What the extension's module widgets and module tests share.

:class:`ModuleWidget` is a ``ScriptedLoadableModuleWidget`` with the parts of Slicer's scripted
module template that the modules do alike: loading the module's ``.ui`` (``setup``), the
parameter node's life cycle (``cleanup``, ``enter``, ``exit``, ``onSceneStartClose``,
``onSceneEndClose``, ``setParameterNode``), the run panel and prior chooser
(:mod:`inr_slicer.runpanel`), Apply (install the dependencies, then start the logic's run), the
finished run's outputs and ``onReload``. A module's widget adds its logic and its connections
(``setup``), its parameters (``initializeParameterNode``) and the hooks below. :class:`Device` is
the device choice both modules' parameter nodes hold; :class:`ModuleTestMixin` serves the
``ScriptedLoadableModuleTest`` of the modules and of the Segment Editor effect.

Slicer application only (imports ``qt`` and ``slicer``, like :mod:`inr_slicer.runpanel`).
"""

from __future__ import annotations

import enum
import sys
import time
import unittest

import slicer
import vtk
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic, ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from .runpanel import PriorChooser, RunPanel, showIn3D
from .worker import RunState

# Reloaded with a module in developer mode, in this order (the module's logic follows).
SHARED_GUI_MODULES = ("inr_slicer.dependencies", "inr_slicer.priors", "inr_slicer.completion", "inr_slicer.runpanel",
                      "inr_slicer.modulewidget")


def nodeID(node):
    """``node``'s ID, None for no node."""
    return node.GetID() if node is not None else None


class Device(enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"

    def label(self) -> str:
        return {"auto": _("Automatic (CUDA if available, else CPU)"), "cpu": _("CPU"),
                "cuda": _("CUDA (NVIDIA GPU)")}[self.value]


class ModuleWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The template's widget life cycle around one run at a time.

    A module's widget, in its ``setup``, first calls ``ModuleWidget.setup(self)`` (which loads its
    ``Resources/UI/<module>.ui``, with ``progressBar``, ``statusLabel``, ``applyButton``,
    ``cancelButton``, ``priorComboBox`` and the four collapsible sections), sets ``self.logic``
    (``start(request)`` returns a :class:`~inr_slicer.worker.FitRun`; ``start`` may raise on bad
    input before the scene changes), calls :meth:`setupRun` and then
    ``initializeParameterNode``, which wraps :meth:`moduleParameterNode` in the module's
    parameter node class and passes it to :meth:`setParameterNode`. It implements:

    * ``_updateGUIFromParameterNode()``: its GUI updates when the parameter node changes;
    * ``_checkCanApply()``: ``self.panel.setApplyAllowed(...)`` for the current inputs;
    * ``_inputKey()``: what a run would work on; outputs a run created are released when it changes;
    * ``_buildRequest()``: the logic's request from the parameter node (dependencies are installed);
    * ``_runOutputs(run)``: ``{parameter name: node}`` of a finished run's outputs.
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
        # (input key, {output parameter: ID of the node the run created, or None}) of the last finished
        # run that created an output
        self._filledOutputs = None
        self._startFailureMessage = ""

    def setup(self) -> None:
        """The template's setup: the module's ``Resources/UI/<module>.ui`` in the panel, its widgets in ``self.ui``."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath(f"UI/{self.moduleName}.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

    def setupRun(self, failureMessage: str, startFailureMessage: str, priorDialogTitle: str) -> None:
        """The run panel and the prior chooser on the ``.ui``'s widgets, the scene-close observers, Apply."""
        self._startFailureMessage = startFailureMessage
        self.panel = RunPanel(
            self.ui.progressBar, self.ui.statusLabel, self.ui.applyButton, self.ui.cancelButton,
            failureMessage=failureMessage,
            lockedWidgets=[self.ui.inputsCollapsibleButton, self.ui.methodCollapsibleButton,
                           self.ui.outputsCollapsibleButton, self.ui.advancedCollapsibleButton])
        self.priorChooser = PriorChooser(self.ui.priorComboBox, self._onPriorChosen, priorDialogTitle)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)

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
        """Developer mode: reload the shared GUI helpers and the logic with the module."""
        import importlib

        names = SHARED_GUI_MODULES + ((type(self.logic).__module__,) if self.logic is not None else ())
        for name in names:
            if name in sys.modules:
                importlib.reload(sys.modules[name])
        ScriptedLoadableModuleWidget.onReload(self)

    # ------------------------------------------------------------------ parameter node
    def moduleParameterNode(self):
        """The scene's parameter node of this module (a vtkMRMLScriptedModuleNode), for its wrapper class."""
        store = ScriptedLoadableModuleLogic()
        store.moduleName = self.moduleName
        return store.getParameterNode()

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
            self._updateGUIFromParameterNode()
            self._releaseFilledOutputs()
        finally:
            self._updatingGUI = False
        self._checkCanApply()

    def _releaseFilledOutputs(self) -> None:
        """Outputs a finished run created belong to that run's input: once another input is chosen,
        the next Apply creates new ones instead of overwriting them (or failing on another grid)."""
        parameters = self._parameterNode
        if not parameters or not self._filledOutputs or self._inputKey() == self._filledOutputs[0]:
            return
        for name, createdID in self._filledOutputs[1].items():
            if createdID and nodeID(getattr(parameters, name)) == createdID:
                setattr(parameters, name, None)
        self._filledOutputs = None

    def _onPriorChosen(self, prior: str) -> None:
        if self._parameterNode:
            self._parameterNode.prior = prior

    # ------------------------------------------------------------------ run
    def onApplyButton(self) -> None:
        if self.panel.running or not self._parameterNode:
            return
        with slicer.util.tryWithErrorDisplay(_("The Python packages INR Segmentation needs could not be installed.")):
            from .dependencies import ensure_dependencies

            if not ensure_dependencies():
                return  # the user declined an installation; nothing changed
        request = self._buildRequest()
        with slicer.util.tryWithErrorDisplay(self._startFailureMessage, waitCursor=True):
            run = self.logic.start(request)  # bad input raises here, before the scene changes
            self.panel.start(run, self._onRunDone)

    def _onRunDone(self, run) -> None:
        if run.state is not RunState.FINISHED:
            return  # cancelled or failed: the outputs were put back, the panel told the user
        outputs = self._runOutputs(run)
        parameters = self._parameterNode
        if parameters:
            created = {name: None if getattr(parameters, name) is not None else nodeID(node)
                       for name, node in outputs.items()}
            for name, node in outputs.items():
                if node is not None:
                    setattr(parameters, name, node)
            if any(created.values()):  # a run into existing outputs leaves the record as it was
                self._filledOutputs = (self._inputKey(), created)
        for node in outputs.values():
            showIn3D(node)

    # ------------------------------------------------------------------ the module's widget implements
    def _updateGUIFromParameterNode(self) -> None:
        raise NotImplementedError

    def _checkCanApply(self) -> None:
        raise NotImplementedError

    def _inputKey(self):
        raise NotImplementedError

    def _buildRequest(self):
        raise NotImplementedError

    def _runOutputs(self, run) -> dict:
        raise NotImplementedError


class ModuleTestMixin:
    """For a module's ``ScriptedLoadableModuleTest`` (put it first among the bases)."""

    # How the user installs the dependencies from the module, for the message of a skipped test.
    installHint = "press Apply in the module once to install them"

    def runTests(self, *tests) -> None:
        """Run ``tests`` (bound test methods), each on a clean scene; a skipped one is shown, not failed."""
        for test in tests:
            self.setUp()
            try:
                test()
            except unittest.SkipTest as reason:
                self.delayDisplay(f"Skipped {test.__name__}: {reason}")

    def _requireDependencies(self) -> None:
        """Skip the test unless PyTorch and the other packages are installed."""
        from .dependencies import TORCH_REQUIREMENT, load_requirements, missing_requirements

        missing = missing_requirements(["torch" + TORCH_REQUIREMENT, *load_requirements()])
        if missing:
            self.skipTest(f"not installed: {', '.join(missing)} ({self.installHint})")

    def assertCancelLeavesSceneUnchanged(self, logic, request) -> None:
        """A run of ``logic`` on ``request`` cancelled right after its start ends cancelled and leaves
        the scene's nodes as they were."""
        nodes = slicer.mrmlScene.GetNumberOfNodes()
        run = logic.start(request)
        run.cancel()
        time.sleep(0.5)  # let the worker reach its next step
        run.poll()
        self.assertIs(run.state, RunState.CANCELLED)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodes)

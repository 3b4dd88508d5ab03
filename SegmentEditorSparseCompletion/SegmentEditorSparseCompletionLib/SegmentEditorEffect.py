"""The "INR completion" Segment Editor effect: paint a few slices, preview the completed 3D shape.

Thin on purpose: the preview node, auto-update, Apply and Cancel come from Slicer's auto-complete
base class; the computation is ``inr_slicer.completion.PreviewCompletion`` (Qt-free), which
completes on the extension's worker thread so that an edit never freezes Slicer. This file only
wires it to the base class: start it from ``computePreviewLabelmap`` (showing the last preview, or
the slices, at once), poll it from a ``QTimer``, and put the finished preview into the preview
node on the main thread. A new edit cancels the completion of the previous one. The effect's
module file (``SegmentEditorSparseCompletion.py``, loaded first) puts ``inr_slicer`` and
``inr_engine`` on ``sys.path``.
"""

import logging
import os
import traceback

import qt
import slicer
from SegmentEditorEffects import AbstractScriptedSegmentEditorAutoCompleteEffect
from slicer.i18n import tr as _

PRIOR = "Prior"  # a bundled prior's name or a prior file; "" = the default shape prior
STEPS = "Steps"  # fitting steps; 0 = the prior's default
DEVICE = "Device"  # auto, cpu or cuda
POLL_INTERVAL_MS = 50


class SegmentEditorEffect(AbstractScriptedSegmentEditorAutoCompleteEffect):
    """Complete every visible segment from a few annotated slices with a meta-learned shape prior."""

    def __init__(self, scriptedEffect):
        AbstractScriptedSegmentEditorAutoCompleteEffect.__init__(self, scriptedEffect)
        scriptedEffect.name = "INR completion"  # not translated: effects are found by name
        scriptedEffect.title = _("INR completion")
        scriptedEffect.requireSegments = True
        self.minimumNumberOfSegments = 1
        self.minimumNumberOfSegmentsWithEditableArea = 1
        # The completed shape reaches past the outermost annotated slices (by up to the largest gap
        # between slices), so the preview grid grows by the annotations' extent on each side, not 10%.
        self.extentGrowthRatio = 1.0
        self.completion = None  # inr_slicer.completion.PreviewCompletion, made on the first preview
        self.dependenciesReady = False
        self.shownProgress = None
        self.show3DPending = False  # "Show 3D" asked while a completion runs: the surface comes with its result
        # Hands the worker thread's result to the main thread (as the modules' run panels do).
        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(POLL_INTERVAL_MS)
        self.pollTimer.connect("timeout()", self.pollPreview)

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        iconPath = os.path.join(os.path.dirname(__file__), "SegmentEditorEffect.png")
        if os.path.exists(iconPath):
            return qt.QIcon(iconPath)
        return qt.QIcon()

    def helpText(self):
        return "<html>" + _(
            """Complete a 3D shape from a few annotated slices with a meta-learned implicit shape prior.<br>
<p><ul>
<li>Paint the structure on a few slices (at least two per segment) in the slice views: axial, sagittal and
coronal slices of the volume can be mixed (slice views rotated away from the volume's axes are not supported).
Leave the slices in between empty.</li>
<li>Click <b>Initialize</b> to preview the completed 3D shape of every visible segment.</li>
<li>Edit the slices (paint, erase, add slices): the preview updates automatically while <b>Auto-update</b>
is checked, or click <b>Update</b>. The completion runs in the background: Slicer stays responsive, the
previous preview stays shown until the new one is ready, and a new edit cancels the completion of the
previous one.</li>
<li><b>Apply</b> replaces the segments by the preview; <b>Cancel</b> discards it.</li>
</ul></p>
<p><b>Shape prior</b>: the kind of structure the completion expects. <b>Fitting steps</b>: how long the prior is
fitted to the slices (more steps follow the slices more closely; 0 uses the prior's default). <b>Device</b>:
where to compute (automatic uses a CUDA GPU when PyTorch sees one).</p>
<p>The first preview may ask to install PyTorch and the other Python packages the completion needs. Masking
settings are honored when the result is applied.</p>"""
        )

    def setupOptionsFrame(self):
        self.priorComboBox = qt.QComboBox()
        self.priorComboBox.setToolTip(_("Shape prior: the kind of structure to complete."))
        for name, description in self.priorChoices():
            self.priorComboBox.addItem(name, name)
            self.priorComboBox.setItemData(self.priorComboBox.count - 1, description, qt.Qt.ToolTipRole)
        self.scriptedEffect.addLabeledOptionsWidget(_("Shape prior:"), self.priorComboBox)

        self.stepsSpinBox = qt.QSpinBox()
        self.stepsSpinBox.minimum = 0
        self.stepsSpinBox.maximum = 1000
        self.stepsSpinBox.specialValueText = _("prior default")
        self.stepsSpinBox.setToolTip(_("Fitting steps on the annotated slices (0: the prior's default)."))
        self.scriptedEffect.addLabeledOptionsWidget(_("Fitting steps:"), self.stepsSpinBox)

        self.deviceComboBox = qt.QComboBox()
        self.deviceComboBox.addItem(_("automatic"), "auto")
        self.deviceComboBox.addItem(_("CPU"), "cpu")
        self.deviceComboBox.addItem(_("CUDA GPU"), "cuda")
        self.deviceComboBox.setToolTip(_("Where to compute: automatic uses the GPU when PyTorch sees one."))
        self.scriptedEffect.addLabeledOptionsWidget(_("Device:"), self.deviceComboBox)

        AbstractScriptedSegmentEditorAutoCompleteEffect.setupOptionsFrame(self)

        self.priorComboBox.connect("currentIndexChanged(int)", self.onOptionChanged)
        self.stepsSpinBox.connect("valueChanged(int)", self.onOptionChanged)
        self.deviceComboBox.connect("currentIndexChanged(int)", self.onOptionChanged)

    @staticmethod
    def priorChoices():
        """(name, description) of the bundled shape priors, the default first; no PyTorch needed."""
        try:
            from inr_slicer.priors import SHAPE_COMPLETION_TASK, described_prior_choices

            return described_prior_choices(SHAPE_COMPLETION_TASK)
        except Exception:  # a broken install must not break the Segment Editor
            logging.exception("INR completion: the bundled shape priors could not be listed")
            return []

    def setMRMLDefaults(self):
        AbstractScriptedSegmentEditorAutoCompleteEffect.setMRMLDefaults(self)
        self.scriptedEffect.setParameterDefault(PRIOR, "")
        self.scriptedEffect.setParameterDefault(STEPS, 0)
        self.scriptedEffect.setParameterDefault(DEVICE, "auto")

    def updateGUIFromMRML(self):
        AbstractScriptedSegmentEditorAutoCompleteEffect.updateGUIFromMRML(self)
        prior = self.scriptedEffect.parameter(PRIOR)
        index = self.priorComboBox.findData(prior) if prior else 0
        if index < 0:  # a prior file, set from a script
            self.priorComboBox.addItem(os.path.basename(prior), prior)
            index = self.priorComboBox.count - 1
        wasBlocked = self.priorComboBox.blockSignals(True)
        self.priorComboBox.setCurrentIndex(index)
        self.priorComboBox.blockSignals(wasBlocked)

        wasBlocked = self.stepsSpinBox.blockSignals(True)
        self.stepsSpinBox.value = self.scriptedEffect.integerParameter(STEPS)
        self.stepsSpinBox.blockSignals(wasBlocked)

        wasBlocked = self.deviceComboBox.blockSignals(True)
        self.deviceComboBox.setCurrentIndex(max(self.deviceComboBox.findData(self.scriptedEffect.parameter(DEVICE)), 0))
        self.deviceComboBox.blockSignals(wasBlocked)

    def updateMRMLFromGUI(self):
        AbstractScriptedSegmentEditorAutoCompleteEffect.updateMRMLFromGUI(self)
        if self.priorComboBox.currentIndex >= 0:
            self.scriptedEffect.setParameter(PRIOR, self.priorComboBox.itemData(self.priorComboBox.currentIndex))
        self.scriptedEffect.setParameter(STEPS, self.stepsSpinBox.value)
        self.scriptedEffect.setParameter(DEVICE, self.deviceComboBox.itemData(self.deviceComboBox.currentIndex))

    def onOptionChanged(self):
        """An option changed in the GUI: store it, and refresh a shown preview (when auto-updating)."""
        self.updateMRMLFromGUI()
        if self.getPreviewNode() is not None and self.autoUpdateCheckBox.isChecked():
            self.delayedAutoUpdateTimer.start()

    def onPreview(self):
        # Replaces the base class's handler (Initialize/Update button and auto-update timer) to install
        # the dependencies first and to report errors as a message rather than a traceback. Only the
        # preview's set-up runs here: the completion itself runs on the worker thread (pollPreview).
        if self.previewComputationInProgress:
            return
        self.previewComputationInProgress = True
        try:
            if not self.ensureDependencies():
                return
            slicer.util.showStatusMessage(_("Completing the segments from their annotated slices..."), 2000)
            with slicer.util.WaitCursor():
                self.preview()
            if self.getPreviewNode() is None:
                slicer.util.errorDisplay(_("Nothing to complete: paint the structure on a few slices first."),
                                         windowTitle=_("INR completion"))
        except Exception as error:
            self.previewFailed(error, "" if self.isUserError(error) else traceback.format_exc())
        finally:
            self.previewComputationInProgress = False

    def ensureDependencies(self):
        """PyTorch and the other packages, installed on the first preview; False if the user declined."""
        if not self.dependenciesReady:
            from inr_slicer.dependencies import ensure_dependencies

            self.dependenciesReady = bool(ensure_dependencies())
        return self.dependenciesReady

    def previewFailed(self, error, details="", logged=False):
        """Report a preview that failed (``details``: a traceback, for errors that are not the user's, not
        ``logged`` yet); a first preview that never showed a completion is removed."""
        previewNode = self.getPreviewNode()
        if previewNode is not None and (self.completion is None or self.completion.last_result is None):
            self.reset()  # a failed first preview leaves no preview of the bare slices behind
        message = _("The segments could not be completed:") + f"\n\n{error}"
        if not details:
            slicer.util.errorDisplay(message, windowTitle=_("INR completion"))
        else:
            if not logged:
                logging.error(details)
            slicer.util.errorDisplay(message, windowTitle=_("INR completion"), detailedText=details)

    @staticmethod
    def isUserError(error):
        """Errors whose message says what to do: bad input (e.g. a single annotated slice), a bad prior,
        a dependency that cannot be installed. Anything else also gets its traceback as details."""
        try:
            from inr_slicer.dependencies import DependencyError
        except ImportError:
            return isinstance(error, ValueError)
        return isinstance(error, (ValueError, DependencyError))

    def previewCompletion(self):
        if self.completion is None:
            from inr_slicer.completion import PreviewCompletion

            self.completion = PreviewCompletion()
        return self.completion

    def computePreviewLabelmap(self, mergedImage, outputLabelmap):
        # Called by the base class's preview() on the main thread: start the completion on the worker
        # thread (cancelling the previous edit's) and show the last preview, or the slices, meanwhile.
        completion = self.previewCompletion()
        completion.start(mergedImage, self.onPreviewReady, self.onPreviewFailed,
                         prior=self.scriptedEffect.parameter(PRIOR),
                         device=self.scriptedEffect.parameter(DEVICE) or "auto",
                         steps=self.scriptedEffect.integerParameter(STEPS))
        completion.provisional(mergedImage, outputLabelmap)
        self.shownProgress = None
        self.pollTimer.start()

    def pollPreview(self):
        """Main thread, from the timer: deliver a finished preview (onPreviewReady) or failure."""
        completion = self.completion
        if completion is None or not completion.poll():
            self.pollTimer.stop()
            return
        progress = completion.progress
        if progress.total > 0 and progress.step != self.shownProgress:
            self.shownProgress = progress.step
            slicer.util.showStatusMessage(_("INR completion: {progress}").format(progress=progress.describe()), 2000)

    def waitForPreview(self, timeout=None):
        """Wait until the preview being computed is shown (scripts and tests; Apply does it too)."""
        if self.completion is not None and self.completion.busy:
            with slicer.util.WaitCursor():
                self.completion.wait(timeout)
        self.pollTimer.stop()

    def onPreviewReady(self, outputLabelmap):
        """The completed labels arrived (main thread): show them in the preview segments, as the base
        class's preview() does with the label map computePreviewLabelmap fills."""
        previewNode = self.getPreviewNode()
        if previewNode is None or self.selectedSegmentIds is None:
            return
        show3D = self.getPreviewShow3D()
        previewNode.RemoveClosedSurfaceRepresentation()  # rebuilt from the new labels if shown
        segmentation = previewNode.GetSegmentation()
        labelmapName = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
        for index in range(self.selectedSegmentIds.GetNumberOfValues()):
            segmentID = self.selectedSegmentIds.GetValue(index)
            previewSegment = segmentation.GetSegment(segmentID)
            if previewSegment is None:
                continue
            labelValue = index + 1
            previewSegment.AddRepresentation(labelmapName, outputLabelmap)
            previewSegment.SetLabelValue(labelValue)
            previewNode.GetDisplayNode().SetSegmentVisibility3D(
                segmentID, not self.isBackgroundLabelmap(outputLabelmap, labelValue))
        self.show3DPending = False
        AbstractScriptedSegmentEditorAutoCompleteEffect.setPreviewShow3D(self, show3D)
        slicer.util.showStatusMessage(_("INR completion: preview updated."), 2000)

    def onPreviewFailed(self, failure):
        """A completion failed (main thread): one line, with the traceback as details if unexpected."""
        self.pollTimer.stop()  # this run is over; no polling from inside the message box
        self.previewFailed(failure.message, "" if failure.expected else failure.details, logged=True)
        self.showPending3D()  # the preview kept (an earlier completion) gets its surface

    def setPreviewShow3D(self, show):
        # While a completion runs, the preview holds the last preview (or the slices) and Slicer would build
        # its surface on the main thread now and again when the completion arrives: build it once, then.
        if show and self.completion is not None and self.completion.busy and self.getPreviewNode() is not None:
            self.show3DPending = True
            wasBlocked = self.previewShow3DButton.blockSignals(True)
            self.previewShow3DButton.checked = True
            self.previewShow3DButton.blockSignals(wasBlocked)
            return
        self.show3DPending = False
        AbstractScriptedSegmentEditorAutoCompleteEffect.setPreviewShow3D(self, show)

    def getPreviewShow3D(self):
        if self.show3DPending and self.getPreviewNode() is not None:
            return True
        return AbstractScriptedSegmentEditorAutoCompleteEffect.getPreviewShow3D(self)

    def showPending3D(self):
        """Build the surface that was put off (the completion was cancelled or failed: show what is there)."""
        if self.show3DPending and self.getPreviewNode() is not None:
            self.show3DPending = False
            AbstractScriptedSegmentEditorAutoCompleteEffect.setPreviewShow3D(self, True)

    def onSegmentationModified(self, caller, event):
        # An edit: once the base class schedules an update, the running completion is stale, cancel it now
        # (its result must never be shown) rather than when the update starts.
        AbstractScriptedSegmentEditorAutoCompleteEffect.onSegmentationModified(self, caller, event)
        if self.completion is not None and self.delayedAutoUpdateTimer.isActive():
            self.completion.cancel()

    def onApply(self):
        self.waitForPreview()  # apply the completion of the last edit, not the preview shown meanwhile
        if self.getPreviewNode() is None:  # it failed, and there was no earlier preview
            return
        self.showPending3D()  # the segments get a surface if the preview shows one
        AbstractScriptedSegmentEditorAutoCompleteEffect.onApply(self)

    def reset(self):
        # Cancel, Apply, a rebuilt preview grid: the completion under way (if any) is for a preview that is gone.
        if self.completion is not None:
            self.completion.reset()
        self.pollTimer.stop()
        self.show3DPending = False
        AbstractScriptedSegmentEditorAutoCompleteEffect.reset(self)

    def cleanup(self):
        self.pollTimer.stop()
        self.pollTimer.disconnect("timeout()", self.pollPreview)
        if self.completion is not None:
            self.completion.unload()
        AbstractScriptedSegmentEditorAutoCompleteEffect.cleanup(self)

"""The "INR completion" Segment Editor effect: paint a few slices, preview the completed 3D shape.

Thin on purpose: the preview, auto-update, Apply and Cancel come from Slicer's auto-complete base
class, the computation from ``inr_slicer.completion`` (``complete_oriented_labelmap``), which
MetaShapeReconstruction's logic shares. The effect's module file (``SegmentEditorSparseCompletion.py``,
loaded first) puts ``inr_slicer`` and ``inr_engine`` on ``sys.path``.
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
        self.completers = {}  # (prior, device) -> loaded completer
        self.dependenciesReady = False

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
is checked, or click <b>Update</b>.</li>
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
        # the dependencies first and to report errors as a message rather than a traceback.
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
            self.previewFailed(error, traceback.format_exc())
        finally:
            self.previewComputationInProgress = False

    def ensureDependencies(self):
        """PyTorch and the other packages, installed on the first preview; False if the user declined."""
        if not self.dependenciesReady:
            from inr_slicer.dependencies import ensure_dependencies

            self.dependenciesReady = bool(ensure_dependencies())
        return self.dependenciesReady

    def previewFailed(self, error, details):
        previewNode = self.getPreviewNode()
        if previewNode is not None and previewNode.GetSegmentation().GetNumberOfSegments() == 0:
            self.reset()  # a failed first preview leaves no empty preview behind
        message = _("The segments could not be completed:") + f"\n\n{error}"
        if self.isUserError(error):
            slicer.util.errorDisplay(message, windowTitle=_("INR completion"))
        else:
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

    def computePreviewLabelmap(self, mergedImage, outputLabelmap):
        from inr_slicer.completion import complete_oriented_labelmap

        steps = self.scriptedEffect.integerParameter(STEPS)
        complete_oriented_labelmap(mergedImage, outputLabelmap, self.completer(), steps or None)

    def completer(self):
        """The completer of the chosen prior and device, loaded once."""
        from inr_slicer.completion import load_completer

        key = (self.scriptedEffect.parameter(PRIOR), self.scriptedEffect.parameter(DEVICE) or "auto")
        if key not in self.completers:
            self.completers[key] = load_completer(*key)
        return self.completers[key]

    def cleanup(self):
        AbstractScriptedSegmentEditorAutoCompleteEffect.cleanup(self)
        self.completers.clear()

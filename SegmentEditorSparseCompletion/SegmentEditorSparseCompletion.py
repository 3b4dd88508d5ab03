"""Hidden module that registers the "INR completion" Segment Editor effect.

The effect itself is ``SegmentEditorSparseCompletionLib/SegmentEditorEffect.py``; its computation
is ``inr_slicer.completion`` (``complete_oriented_labelmap``), which MetaShapeReconstruction's
logic shares.
"""

import os
import sys

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest

# inr_slicer and inr_engine sit beside the modules once installed, one folder up in a source checkout:
# put that folder on sys.path. Each module file of the extension repeats these three lines, as nothing
# shared can be imported before they have run. (The effect's file is loaded after this one.)
_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_root, "inr_slicer")) and _root not in sys.path:
    sys.path.append(_root)

from inr_engine.data import sample_path  # noqa: E402
from inr_slicer.modulewidget import ModuleTestMixin  # noqa: E402

EFFECT_NAME = "INR completion"
SPARSE_SAMPLE = "adrenal_val000_sparse_w8_axis0.nii.gz"  # slices 25, 33 and 41 of an adrenal gland (I axis)
FULL_SAMPLE = "adrenal_val000_full.nii.gz"  # its ground truth


class SegmentEditorSparseCompletion(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SegmentEditorSparseCompletion"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["INR Segmentation developers"]
        self.parent.hidden = True
        self.parent.helpText = (
            "This hidden module registers the <b>INR completion</b> Segment Editor effect: paint a structure on a "
            "few slices, and a meta-learned implicit shape prior completes it in 3D. See the "
            '<a href="https://github.com/inr-segmentation/SlicerINRSegmentation/blob/main/'
            'SegmentEditorSparseCompletion/README.md">documentation</a>.'
        )
        self.parent.acknowledgementText = (
            "Part of the INRSegmentation extension (segmentation and shape completion with implicit neural "
            "representations). The completion runs on PyTorch, provided by the PyTorch extension."
        )
        slicer.app.connect("startupCompleted()", self.registerEditorEffect)

    def registerEditorEffect(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as qSlicerSegmentationsEditorEffects

        instance = qSlicerSegmentationsEditorEffects.qSlicerSegmentEditorScriptedEffect(None)
        effectFilename = os.path.join(os.path.dirname(__file__), self.__class__.__name__ + "Lib/SegmentEditorEffect.py")
        instance.setPythonSource(effectFilename.replace("\\", "/"))
        instance.self().register()


class SegmentEditorSparseCompletionTest(ModuleTestMixin, ScriptedLoadableModuleTest):
    """The "INR completion" effect driven through a Segment Editor widget, on the shipped sparse adrenal sample."""

    installHint = "preview the effect once to install them"

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.runTests(self.test_preview_and_apply, self.test_single_slice_leaves_segment_unchanged)

    def _loadSparseSegmentation(self):
        """The sparse label map, and a segmentation with its one segment imported from it."""
        labelmap = slicer.util.loadLabelVolume(str(sample_path(SPARSE_SAMPLE)))
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "sparse")
        segmentationNode.CreateDefaultDisplayNodes()  # the effect completes the visible segments
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(labelmap)
        segmentationsLogic = slicer.modules.segmentations.logic()
        self.assertTrue(segmentationsLogic.ImportLabelmapToSegmentationNode(labelmap, segmentationNode))
        self.assertEqual(segmentationNode.GetSegmentation().GetNumberOfSegments(), 1)
        return labelmap, segmentationNode, segmentationNode.GetSegmentation().GetNthSegmentID(0)

    def _activateEffect(self, segmentationNode, segmentId, sourceVolumeNode):
        """A Segment Editor widget on the segmentation, with the effect active (on the CPU)."""
        segmentEditorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        segmentEditorWidget = slicer.qMRMLSegmentEditorWidget()
        segmentEditorWidget.setMRMLScene(slicer.mrmlScene)
        segmentEditorWidget.setMRMLSegmentEditorNode(segmentEditorNode)
        segmentEditorWidget.setSegmentationNode(segmentationNode)
        segmentEditorWidget.setSourceVolumeNode(sourceVolumeNode)
        segmentEditorWidget.setCurrentSegmentID(segmentId)
        self.assertIn(EFFECT_NAME, segmentEditorWidget.availableEffectNames())
        segmentEditorWidget.setActiveEffectByName(EFFECT_NAME)
        effect = segmentEditorWidget.activeEffect()
        self.assertIsNotNone(effect)
        effect.setParameter("Prior", "adrenal")
        effect.setParameter("Device", "cpu")
        return segmentEditorWidget, segmentEditorNode, effect.self()

    @staticmethod
    def _closeSegmentEditor(segmentEditorWidget, segmentEditorNode):
        segmentEditorWidget.setActiveEffect(None)
        segmentEditorWidget.setMRMLScene(None)
        segmentEditorWidget.deleteLater()
        slicer.mrmlScene.RemoveNode(segmentEditorNode)

    def test_preview_and_apply(self):
        self._requireDependencies()
        import numpy as np

        self.delayDisplay("Completing the sparse adrenal segment in the Segment Editor")
        labelmap, segmentationNode, segmentId = self._loadSparseSegmentation()
        groundTruth = slicer.util.loadLabelVolume(str(sample_path(FULL_SAMPLE)))
        segmentEditorWidget, segmentEditorNode, effect = self._activateEffect(segmentationNode, segmentId, labelmap)
        try:
            effect.onPreview()  # returns at once: the completion runs on the worker thread
            previewNode = effect.getPreviewNode()
            self.assertIsNotNone(previewNode)  # showing the slices until the completion is ready
            effect.waitForPreview(120)
            self.assertIsNotNone(effect.completion.last_result)
            self.assertIs(effect.getPreviewNode(), previewNode)
            self.assertEqual(previewNode.GetSegmentation().GetNumberOfSegments(), 1)

            effect.onApply()
            self.assertIsNone(effect.getPreviewNode())
        finally:
            self._closeSegmentEditor(segmentEditorWidget, segmentEditorNode)

        self.assertEqual(segmentationNode.GetSegmentation().GetNumberOfSegments(), 1)
        completed = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, groundTruth) > 0
        truth = slicer.util.arrayFromVolume(groundTruth) > 0
        dice = 2.0 * np.count_nonzero(completed & truth) / (np.count_nonzero(completed) + np.count_nonzero(truth))
        self.assertGreater(dice, 0.78)
        self.delayDisplay(f"Test passed (Dice {dice:.3f})")

    def test_single_slice_leaves_segment_unchanged(self):
        self._requireDependencies()
        import numpy as np

        self.delayDisplay("Previewing a segment painted on a single slice")
        labelmap, segmentationNode, segmentId = self._loadSparseSegmentation()
        sparse = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, labelmap)
        single = np.zeros_like(sparse)
        single[:, :, 33] = sparse[:, :, 33]  # arrays are KJI: keep the middle annotated I slice only
        self.assertTrue(single.any())
        slicer.util.updateSegmentBinaryLabelmapFromArray(single, segmentationNode, segmentId, labelmap)
        segmentEditorWidget, segmentEditorNode, effect = self._activateEffect(segmentationNode, segmentId, labelmap)
        try:
            effect.onPreview()
            effect.waitForPreview(120)  # reports the error (only logged in testing mode) and leaves no preview
            self.assertIsNone(effect.getPreviewNode())
        finally:
            self._closeSegmentEditor(segmentEditorWidget, segmentEditorNode)

        self.assertEqual(len(slicer.util.getNodesByClass("vtkMRMLSegmentationNode")), 1)
        self.assertEqual(segmentationNode.GetSegmentation().GetNumberOfSegments(), 1)
        after = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, labelmap)
        np.testing.assert_array_equal(after, single)
        self.delayDisplay("Test passed")

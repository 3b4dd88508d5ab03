"""Hidden module that registers the "INR completion" Segment Editor effect.

The effect itself is ``SegmentEditorSparseCompletionLib/SegmentEditorEffect.py``; its computation
is MetaShapeReconstruction's logic (``complete_oriented_labelmap``).
"""

import os

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule


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

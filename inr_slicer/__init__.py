"""The Slicer logic layer shared by the extension's modules and its Segment Editor effect.

MRML nodes in and out, a worker thread for fitting, live output nodes that can be reverted.
It imports Slicer's MRML and VTK but no Qt, so it runs on the ``slicer-core`` wheel as well as
in the Slicer application; the computation itself is :mod:`inr_engine`'s.
"""

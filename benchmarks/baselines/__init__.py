"""Baselines for sparse-slice shape completion, run beside the engine's method in the benchmarks.

* :mod:`.fill_between_slices`: 3D Slicer's "Fill between slices" (ITK morphological contour
  interpolation), through the optional ``slicer-core`` wheel;
* :mod:`.coordinate_inr`: coordinate-only occupancy networks (random and pretrained SIREN, and
  the auto-decoder of Amiranashvili et al., MIDL 2022) in the engine's normalized frame.
"""

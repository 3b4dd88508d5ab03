"""Sparse-slice shape completion with a meta-learned occupancy INR.

After De Paolis et al. (ShapeMI 2024): a SIREN maps a point to the probability that it lies
inside the shape; its initialisation is meta-learned over training shapes (context: voxels of
a few slices; target: the whole shape) so that a few gradient steps on the annotated slices
of a new case complete it. What this implementation adds, because a coordinate-only SIREN
only ties with morphological interpolation on small structures (see docs/benchmarks.md):

* the network also sees what the annotated slices say about each point
  (:class:`~inr_engine.shape.slices.SliceEvidence`: shape-based interpolation along the
  registered correspondence between neighbouring slices, distances to the slices), and its
  logit is a learned correction of the interpolated signed distance (``alpha`` and ``beta``);
* optionally, non-local context: a 3D U-Net over the evidence of the whole region
  (:mod:`~inr_engine.shape.encoder`), trained before the meta-learning and frozen in
  it, whose logit the INR also sees and corrects;
* Meta-SGD (learned per-parameter inner step sizes) instead of a fixed inner rate;
* training tasks with random spacing, offset and orientation (single and mixed axes).
"""

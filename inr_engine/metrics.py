"""Segmentation metrics: foreground Dice, and HD95 / average symmetric surface distance in mm.

Surface distances use MONAI (``pip install monai``, in the ``bench`` and ``test`` extras) with
the voxel spacing of the file, as the evaluation protocol asks.
"""

from __future__ import annotations

import warnings

import numpy as np

from .frames import foreground_box


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two binary masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def segmentation_scores(pred: np.ndarray, truth: np.ndarray, spacing) -> dict[str, float]:
    """Dice, HD95 and symmetric ASD (mm) of binary masks; distances are NaN if either is empty."""
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    out = {"dice": dice(pred, truth), "hd95": float("nan"), "asd": float("nan")}
    if not pred.any() or not truth.any():
        return out
    box = foreground_box(pred | truth, margin=2)  # distances are unchanged by cropping; computing them is not
    p, t = (torch.from_numpy(np.stack([~m[box], m[box]])[None].astype(np.float32)) for m in (pred, truth))
    spc = [float(s) for s in spacing]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about empty classes, handled above
        out["hd95"] = float(compute_hausdorff_distance(p, t, include_background=False, percentile=95, spacing=spc))
        out["asd"] = float(compute_average_surface_distance(p, t, include_background=False, symmetric=True,
                                                            spacing=spc))
    return out

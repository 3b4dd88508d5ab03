"""Metrics: Dice, and MONAI's HD95 / ASD in millimetres with anisotropic spacing."""

import numpy as np
import pytest

from inr_engine.metrics import dice, segmentation_scores


def _cube(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return m


def test_dice_values():
    a = _cube((10, 10, 10), (0, 0, 0), (4, 4, 4))
    assert dice(a, a) == 1.0
    assert dice(a, ~a) == 0.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_surface_distances_use_spacing():
    truth = _cube((30, 30, 30), (10, 10, 10), (20, 20, 20))
    shifted = _cube((30, 30, 30), (11, 10, 10), (21, 20, 20))  # one voxel along axis 0
    iso = segmentation_scores(shifted, truth, (1.0, 1.0, 1.0))
    aniso = segmentation_scores(shifted, truth, (2.5, 1.0, 1.0))
    assert iso["hd95"] == pytest.approx(1.0, abs=1e-6)
    assert aniso["hd95"] == pytest.approx(2.5, abs=1e-6)
    assert 0 < iso["asd"] < iso["hd95"] + 1e-9


def test_empty_prediction_gives_nan_distances():
    truth = _cube((10, 10, 10), (2, 2, 2), (6, 6, 6))
    out = segmentation_scores(np.zeros_like(truth), truth, (1, 1, 1))
    assert out["dice"] == 0.0 and np.isnan(out["hd95"]) and np.isnan(out["asd"])

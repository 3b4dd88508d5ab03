"""Slice-to-slice correspondence (demons registration of signed distance maps) and its use."""

from __future__ import annotations

import numpy as np
import pytest

from inr_engine.metrics import dice
from inr_engine.shape.slice_flow import SliceFlow, slice_flows
from inr_engine.shape.slices import SDF_CAP_MM, SliceEvidence, _signed_distance


def disk(shape, centre, radius) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return np.hypot(yy - centre[0], xx - centre[1]) <= radius


def sdf(mask):
    return _signed_distance(mask, (1.0, 1.0))


def slice_flow(sdf_prev, sdf_next, centroid_shift, sampling) -> SliceFlow:
    """One pair, registered as a batch of one."""
    return slice_flows(sdf_prev[None], sdf_next[None], np.asarray(centroid_shift, np.float64)[None], sampling)[0]


def test_flow_follows_a_translated_disk():
    a, b = disk((48, 48), (20, 18), 6), disk((48, 48), (26, 28), 6)
    flow = slice_flow(sdf(a), sdf(b), np.zeros(2), (1.0, 1.0))  # started from nothing: the registration finds the move
    shift = flow.shift(np.array([[26.0, 28.0], [23.0, 23.0]]))
    np.testing.assert_allclose(shift, [[6.0, 10.0], [6.0, 10.0]], atol=1.5)


def test_flow_of_an_empty_slice_is_the_given_shift():
    empty = np.full((16, 16), SDF_CAP_MM, np.float32)
    flow = slice_flow(empty, sdf(disk((16, 16), (8, 8), 3)), np.array([1.0, -2.0]), (1.0, 1.0))
    np.testing.assert_allclose(flow.shift(np.array([[0.0, 0.0], [15.0, 3.0]])), [[1.0, -2.0]] * 2)
    assert isinstance(flow, SliceFlow)


def test_flow_interpolation_keeps_diverging_limbs():
    """Two thin limbs that move apart between slices (a V in section): blending the signed
    distances at the same position (or after a common centroid shift) loses them half-way;
    along the registered correspondence they stay whole."""
    shape = (9, 64, 24)
    volume = np.zeros(shape, bool)
    for k in range(shape[0]):
        offset = 10 + 2.0 * k
        for centre in (32 - offset, 32 + offset):
            volume[k] |= disk(shape[1:], (centre, 12), 2.5)
    sparse = np.zeros_like(volume)
    sparse[[0, 8]] = volume[[0, 8]]
    evidence = SliceEvidence(sparse, {0: [0, 8]}, np.ones(3))
    ijk = np.argwhere(np.ones(shape, bool))
    completed = (evidence.features(ijk)[:, -1] < 0).reshape(shape)
    assert dice(completed[4], volume[4]) > 0.8
    assert dice(completed, volume) > 0.85


@pytest.mark.parametrize("left_out", [0, 1, 2, 3])
def test_evidence_without_a_slice_equals_evidence_never_given_it(ellipsoid_factory, left_out):
    mask, _ = ellipsoid_factory((20, 24, 24), (8.0, 7.0, 5.0), center_ijk=(9.0, 10.0, 13.0))
    kept = [3, 7, 11, 15]
    sparse = np.zeros_like(mask)
    sparse[kept] = mask[kept]
    full = SliceEvidence(sparse, {0: kept}, np.ones(3))
    fewer = [k for n, k in enumerate(kept) if n != left_out]
    reduced = sparse.copy()
    reduced[kept[left_out]] = False
    ijk = np.argwhere(np.ones(mask.shape, bool))
    np.testing.assert_allclose(full.without(0, left_out).features(ijk),
                               SliceEvidence(reduced, {0: fewer}, np.ones(3)).features(ijk), atol=1e-5)


def test_flow_is_the_same_motion_at_any_pixel_size():
    """The pyramid is set in mm: a finer grid of the same slices gives the same motion in mm."""
    moves_mm = []
    for pixel_mm in (1.0, 0.5):
        n = int(48 / pixel_mm)
        a = disk((n, n), (20 / pixel_mm, 18 / pixel_mm), 6 / pixel_mm)
        b = disk((n, n), (26 / pixel_mm, 28 / pixel_mm), 6 / pixel_mm)
        flow = slice_flow(_signed_distance(a, (pixel_mm,) * 2), _signed_distance(b, (pixel_mm,) * 2), np.zeros(2),
                          (pixel_mm, pixel_mm))
        moves_mm.append(flow.shift(np.array([[23.0, 23.0]]) / pixel_mm)[0] * pixel_mm)
    np.testing.assert_allclose(moves_mm[0], [6.0, 10.0], atol=1.5)
    np.testing.assert_allclose(moves_mm[1], moves_mm[0], atol=1.0)


def test_case_is_the_same_on_one_thread_and_on_several(ellipsoid_factory, tiny_cfg):
    import torch

    from inr_engine.shape.case import prepare_case

    mask, affine = ellipsoid_factory((24, 24, 24), (9.0, 7.0, 8.0))
    sparse = np.zeros_like(mask)
    sparse[4:21:4] = mask[4:21:4]
    threads = torch.get_num_threads()
    try:
        cases = []
        for n in (1, 2):
            torch.set_num_threads(n)
            cases.append(prepare_case(sparse, affine, tiny_cfg))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(cases[0].context, cases[1].context):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(4, 30, 40), (5, 1, 7), (3, 6, 1), (1, 1, 1)])
def test_bilinear_samples_are_map_coordinates(shape):
    """The evidence's sampler: SciPy's linear interpolation with edge values beyond the borders."""
    from scipy import ndimage

    from inr_engine.shape.slice_flow import bilinear

    rng = np.random.default_rng(0)
    images = rng.random(shape).astype(np.float32)
    which = rng.integers(0, shape[0], 500)
    rows, cols = rng.uniform(-3, shape[1] + 3, 500), rng.uniform(-3, shape[2] + 3, 500)
    expected = ndimage.map_coordinates(images, np.stack([which.astype(float), rows, cols]), order=1, mode="nearest")
    np.testing.assert_allclose(bilinear(images, which, rows, cols), expected, atol=1e-6)


def test_grid_features_are_the_features_of_the_grid_points(ellipsoid_factory):
    """The encoder grid's fast path: identical to the features of its points, on a fractional grid."""
    mask, _ = ellipsoid_factory((20, 24, 24), (8.0, 7.0, 5.0), center_ijk=(9.0, 10.0, 13.0))
    sparse = np.zeros_like(mask)
    sparse[[3, 8, 12]] = mask[[3, 8, 12]]
    sparse[:, :, 13] = mask[:, :, 13]  # and a slice across them
    evidence = SliceEvidence(sparse, {0: [3, 8, 12], 2: [13]}, np.array([2.5, 1.0, 1.0]))
    along = [np.linspace(-2.3, 21.0, 9), np.linspace(0.4, 23.2, 7), np.linspace(-1.0, 25.0, 8)]
    points = np.stack(np.meshgrid(*along, indexing="ij"), -1).reshape(-1, 3)
    np.testing.assert_array_equal(evidence.grid_features(along), evidence.features(points).reshape(9, 7, 8, -1))

"""Sparse slices (finding, simulating, evidence features) and shape completion with a prior."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from inr_engine.data import SAMPLES_DIR
from inr_engine.datasets import Shape
from inr_engine.frames import spacing
from inr_engine.inputs import input_labels
from inr_engine.io import read_volume
from inr_engine.metrics import dice
from inr_engine.priors import BUNDLED_DIR, MANIFEST, bundled_priors, load_prior
from inr_engine.runtime import seed_everything
from inr_engine.shape.case import foreground_span, prepare_case, region_of_interest
from inr_engine.shape.complete import complete_labelmap
from inr_engine.shape.completer import ShapeCompleter
from inr_engine.shape.model import OccupancyINR, occupancy_loss
from inr_engine.shape.slices import (
    FEATURES_PER_AXIS,
    NUM_FEATURES,
    SDF_SCALE_MM,
    SliceError,
    SliceEvidence,
    find_annotated_slices,
    sparsify,
)
from inr_engine.shape.tasks import collate, draw_meta_batch, sample_task, simulate_sparse
from inr_engine.shape.training import plane_axis, protocol_dice, setting_axis
from inr_engine.streams import EchoedBatches, TaskStream

ANISO = dict(spacing=(0.8, 1.2, 2.0), angles_deg=(20, -10, 30), origin=(-40.0, 15.0, 60.0))


@pytest.fixture(scope="module")
def completer(tiny_prior):
    return ShapeCompleter.from_prior(load_prior(tiny_prior, task="shape_completion"))


@pytest.fixture(scope="module")
def ellipsoid(ellipsoid_factory):
    return ellipsoid_factory((28, 28, 20), (9, 7, 12), **ANISO)


def _plane(mask, axis, index):
    cut = [slice(None)] * 3
    cut[axis] = index
    return mask[tuple(cut)]


# --------------------------------------------------------------------------- sparsify (evaluation protocol)
@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("every", [2, 3, 4, 5, 8])
def test_sparsify_protocol(ellipsoid_factory, axis, every):
    mask, _ = ellipsoid_factory((30, 26, 22), (10, 8, 7))
    occupied = np.flatnonzero(mask.any(axis=tuple(b for b in range(3) if b != axis)))
    first, last = occupied[0], occupied[-1]
    sparse, kept = sparsify(mask, axis, every)
    assert kept[0] == first + every // 2
    assert np.all(np.diff(kept) == every)
    assert kept[-1] <= last < kept[-1] + every
    for i in range(mask.shape[axis]):
        expected = _plane(mask, axis, i) if i in kept else np.zeros_like(_plane(mask, axis, i))
        np.testing.assert_array_equal(_plane(sparse, axis, i), expected)
    assert sparse.dtype == bool


def test_sparsify_offset_and_single_middle_slice(ellipsoid_factory):
    mask, _ = ellipsoid_factory((30, 26, 22), (10, 8, 7))
    occupied = np.flatnonzero(mask.any(axis=(1, 2)))
    first, last = int(occupied[0]), int(occupied[-1])
    _, kept = sparsify(mask, 0, 4, offset=0)
    assert kept[0] == first and kept == list(range(first, last + 1, 4))
    # A gap wider than the object: no slice at first + w//2 fits, so the middle slice is kept.
    sparse, kept = sparsify(mask, 0, 100)
    assert kept == [(first + last) // 2]
    assert sparse.sum() == _plane(mask, 0, kept[0]).sum()
    with pytest.raises(SliceError, match="empty"):
        sparsify(np.zeros((5, 5, 5), bool), 1, 2)


# --------------------------------------------------------------------------- finding annotated slices
@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("every", [3, 5])
def test_find_single_axis_slices(ellipsoid_factory, axis, every):
    mask, _ = ellipsoid_factory((28, 28, 24), (9, 7, 8))
    sparse, kept = sparsify(mask, axis, every)
    assert find_annotated_slices(sparse) == {axis: kept}
    assert find_annotated_slices(sparse.astype(np.uint8) * 3) == {axis: kept}




@pytest.mark.parametrize("axes, every", [((0, 2), (5, 4)), ((0, 1), (4, 6)), ((0, 1, 2), (5, 6, 4))])
def test_find_orthogonal_mixed_slices(ellipsoid_factory, axes, every):
    mask, _ = ellipsoid_factory((28, 28, 24), (9, 7, 8))
    sparse = np.zeros_like(mask)
    expected = {}
    for a, w in zip(axes, every):
        part, kept = sparsify(mask, a, w)
        sparse |= part
        expected[a] = kept
    assert find_annotated_slices(sparse) == expected


def test_find_two_orthogonal_single_slices(ellipsoid_factory):
    mask, _ = ellipsoid_factory((28, 28, 24), (9, 7, 8))
    sparse = np.zeros_like(mask)
    sparse[14] = mask[14]
    sparse[:, :, 11] = mask[:, :, 11]
    assert find_annotated_slices(sparse) == {0: [14], 2: [11]}


def test_find_slices_of_empty_input_refused():
    with pytest.raises(SliceError, match="no foreground"):
        find_annotated_slices(np.zeros((6, 6, 6), np.uint8))


# --------------------------------------------------------------------------- slice evidence
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_evidence_features_shape_and_sign_on_slices(ellipsoid, axis):
    mask, affine = ellipsoid
    sparse, kept = sparsify(mask, axis, 4)
    ev = SliceEvidence(sparse, {axis: kept}, spacing(affine))
    grid = np.argwhere(np.ones(mask.shape, bool)).astype(np.float64)
    feats = ev.features(grid)
    assert feats.shape == (len(grid), NUM_FEATURES) and feats.dtype == np.float32
    assert np.all(np.isfinite(feats))
    assert NUM_FEATURES == 3 * FEATURES_PER_AXIS + 1
    block = feats[:, axis * FEATURES_PER_AXIS:(axis + 1) * FEATURES_PER_AXIS]
    assert np.any(np.all(block == 1.0, axis=0))  # a flag: this axis is annotated
    for other in {0, 1, 2} - {axis}:
        assert np.all(feats[:, other * FEATURES_PER_AXIS:(other + 1) * FEATURES_PER_AXIS] == 0)
    # On annotated slices, the interpolated signed distance has the annotation's sign (negative inside).
    on_slices = ev.known_mask()[tuple(grid.astype(int).T)]
    assert on_slices.sum() == len(kept) * np.prod(mask.shape) // mask.shape[axis]
    inside = mask[tuple(grid.astype(int).T)]
    for col in (axis * FEATURES_PER_AXIS, NUM_FEATURES - 1):
        s = feats[on_slices, col]
        assert np.all((s < 0) == inside[on_slices]), col
    # Between slices the shape-based interpolation is mostly right as well.
    between = ~on_slices
    assert np.mean((feats[between, -1] < 0) == inside[between]) > 0.9


def test_evidence_fractional_positions_and_taper(ellipsoid):
    mask, affine = ellipsoid
    sparse, kept = sparsify(mask, 2, 4)
    ev = SliceEvidence(sparse, {2: kept}, spacing(affine))
    rng = np.random.default_rng(0)
    pts = rng.uniform(-2, np.array(mask.shape) + 2, size=(3000, 3))  # outside the grid too
    feats = ev.features(pts)
    assert feats.shape == (3000, NUM_FEATURES) and np.all(np.isfinite(feats))
    assert np.all(np.abs(feats[:, :-1]) <= 1.0) and np.all(np.abs(feats[:, -1]) <= 4.0)
    # Beyond the last slice the signed distance grows with the distance beyond it (a taper).
    centre = np.argwhere(_plane(sparse, 2, kept[-1])).mean(0)
    beyond = np.array([[centre[0], centre[1], kept[-1] + d] for d in (0.0, 1.0, 2.0, 4.0)])
    s = ev.features(beyond)[:, 2 * FEATURES_PER_AXIS]
    assert np.all(np.diff(s) > 0)
    s_mm = np.arctanh(np.clip(s, -0.999999, 0.999999)) * SDF_SCALE_MM
    np.testing.assert_allclose(np.diff(s_mm), np.diff([0.0, 1.0, 2.0, 4.0]) * spacing(affine)[2], rtol=1e-3)


def test_evidence_refusals():
    sparse = np.zeros((8, 8, 8), bool)
    sparse[3, 2:5, 2:5] = True
    with pytest.raises(SliceError, match="no annotated slices"):
        SliceEvidence(sparse, {}, np.ones(3))
    with pytest.raises(SliceError, match="out of range"):
        SliceEvidence(sparse, {0: [3, 9]}, np.ones(3))
    with pytest.raises(SliceError, match="3D"):
        SliceEvidence(sparse[0], {0: [3]}, np.ones(3))


def test_empty_annotated_slice_counts_as_outside(ellipsoid_factory):
    mask, affine = ellipsoid_factory((24, 24, 24), (6, 6, 6))
    sparse, kept = sparsify(mask, 0, 4)
    ev = SliceEvidence(sparse, {0: [kept[0] - 4, *kept]}, spacing(affine))  # one slice annotated as empty
    feats = ev.features(np.array([[kept[0] - 4, 12, 12]], float))
    assert feats[0, 0] > 0.99  # far outside


# --------------------------------------------------------------------------- cases and training tasks
def test_prepare_case_refusals(tiny_cfg, ellipsoid):
    mask, affine = ellipsoid
    with pytest.raises(SliceError, match="no foreground"):
        prepare_case(np.zeros(mask.shape, np.uint8), affine, tiny_cfg)
    single = np.zeros_like(mask)
    single[:, :, 10] = mask[:, :, 10]
    with pytest.raises(SliceError, match="only one annotated slice"):
        prepare_case(single, affine, tiny_cfg)
    with pytest.raises(SliceError, match="only one annotated slice"):
        prepare_case(single, affine, tiny_cfg, slices={2: [10]})
    with pytest.raises(SliceError, match="3D"):
        prepare_case(mask[:, :, 10], affine, tiny_cfg)


def test_prepare_case_region_frame_and_context(tiny_cfg, ellipsoid):
    mask, affine = ellipsoid
    sparse, kept = sparsify(mask, 1, 4)
    case = prepare_case(sparse, affine, tiny_cfg, {1: kept})
    coords, ev, labels = case.context
    n = tiny_cfg.context_points
    assert coords.shape == (n, 3) and ev.shape == (n, NUM_FEATURES) and labels.shape == (n,)
    assert coords.dtype == ev.dtype == labels.dtype == torch.float32
    assert set(labels.unique().tolist()) == {0.0, 1.0}
    # The region holds the whole object: the annotations plus the gap beyond the end slices.
    fg = np.argwhere(mask)
    assert np.all(case.lo <= fg.min(0)) and np.all(case.hi >= fg.max(0) + 1)
    assert np.all(case.lo >= 0) and np.all(case.hi <= np.array(mask.shape))
    lo, hi = region_of_interest(*foreground_span(sparse), case.slices, spacing(affine), tiny_cfg.margin_mm,
                                sparse.shape)
    np.testing.assert_array_equal(lo, case.lo)
    np.testing.assert_array_equal(hi, case.hi)
    # Context points lie on the annotated slices, inside the network frame's unit-ish ball.
    assert coords.abs().max() < 3.0
    # Same seed for the context sample: preparing twice gives the same context.
    again = prepare_case(sparse, affine, tiny_cfg, {1: kept})
    for a, b in zip(case.context, again.context):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_sample_task_and_collate(tiny_cfg, ellipsoid):
    mask, affine = ellipsoid
    rng = np.random.default_rng(0)
    tasks = []
    while len(tasks) < 3:
        task = sample_task(mask, affine, tiny_cfg, rng)
        if task is not None:
            tasks.append(task)
    (ctx_in, ctx_y), (tgt_in, tgt_y) = collate(tasks)
    assert ctx_in[0].shape == (3, tiny_cfg.context_points, 3)
    assert ctx_in[1].shape == (3, tiny_cfg.context_points, NUM_FEATURES)
    assert tgt_in[0].shape == (3, tiny_cfg.target_points, 3) and tgt_y.shape == (3, tiny_cfg.target_points)
    assert ctx_y.shape == (3, tiny_cfg.context_points)
    for t in (ctx_in[0], ctx_in[1], ctx_y, tgt_in[0], tgt_in[1], tgt_y):
        assert torch.isfinite(t).all()
    assert 0 < tgt_y.mean() < 1


def test_task_stream_with_several_workers_is_reproducible(tiny_cfg, ellipsoid):
    shapes = [Shape(*ellipsoid, "ellipsoid")]

    def first_labels(workers):
        with TaskStream(lambda rng: draw_meta_batch(shapes, tiny_cfg, rng, 2), seed=3, workers=workers) as stream:
            return [stream()[1][1] for _ in range(4)]

    for a, b in zip(first_labels(2), first_labels(2)):
        torch.testing.assert_close(a, b)


def _task_axes(mask, affine, cfg, n=60):
    rng = np.random.default_rng(0)
    tasks = (simulate_sparse(mask, affine, cfg, rng) for _ in range(n))
    return [tuple(slices) for _, slices in filter(None, tasks)]


def test_training_tasks_favour_the_acquisition_axis_of_anisotropic_grids(tiny_cfg, ellipsoid_factory):
    single = replace(tiny_cfg, mixed_orientation_prob=0.0)
    mask, thick_k = ellipsoid_factory((24, 24, 12), (7.0, 7.0, 12.0), spacing=(1.0, 1.0, 2.5))
    assert set(_task_axes(mask, thick_k, replace(single, acquisition_axis_prob=1.0))) == {(2,)}
    assert set(_task_axes(mask, thick_k, single)) == {(0,), (1,), (2,)}  # the default: uniform
    iso_mask, iso = ellipsoid_factory()
    assert set(_task_axes(iso_mask, iso, replace(single, acquisition_axis_prob=1.0))) == {(0,), (1,), (2,)}


def test_echoed_batches_use_each_example_about_echo_times():
    fresh = iter(range(10**6))

    def stream():
        return [next(fresh) for _ in range(4)]

    plain = EchoedBatches(stream, 4, 1, np.random.default_rng(0))
    assert [plain(), plain()] == [[0, 1, 2, 3], [4, 5, 6, 7]]  # echo 1: the stream's batches, unchanged
    echoed = EchoedBatches(stream, 4, 3, np.random.default_rng(0))
    uses: dict[int, int] = {}
    for _ in range(3000):
        batch = echoed()
        assert len(set(batch)) == 4
        for x in batch:
            uses[x] = uses.get(x, 0) + 1
    assert 2.7 < np.mean(list(uses.values())) < 3.3
    with pytest.raises(ValueError):
        EchoedBatches(stream, 4, 0, np.random.default_rng(0))


def test_occupancy_loss_per_task(tiny_cfg):
    torch.manual_seed(0)
    model = OccupancyINR(tiny_cfg)
    params = dict(model.named_parameters())
    logits = torch.randn(4, 100)
    labels = (torch.rand(4, 100) > 0.5).float()
    expanded = {k: v.unsqueeze(0).expand(4, *v.shape) for k, v in params.items()}
    batched = occupancy_loss(logits, labels, expanded, 100.0)
    assert batched.shape == (4,)
    single = torch.stack([occupancy_loss(logits[t], labels[t], params, 100.0) for t in range(4)])
    torch.testing.assert_close(batched, single)
    # A perfect, confident prediction costs only the weight decay.
    perfect = occupancy_loss((labels[0] * 2 - 1) * 50, labels[0], params, 0.0)
    assert perfect.item() < 1e-6


# --------------------------------------------------------------------------- completing with a prior
@pytest.mark.parametrize("axis", [0, 2])
def test_completion_quality_and_known_slices(completer, ellipsoid, axis):
    mask, affine = ellipsoid
    sparse, kept = sparsify(mask, axis, 4)
    case = completer.prepare(sparse, affine, {axis: kept})
    steps = list(completer.fit(case, 3))
    assert [s.step for s in steps] == [1, 2, 3]
    out = completer.labelmap(case, steps[-1].params)
    assert out.shape == mask.shape and out.dtype == bool
    assert dice(out, mask) > 0.8
    known = case.evidence.known_mask()
    assert np.mean(out[known] == mask[known]) > 0.97


def test_adaptive_decode_agrees_on_a_case(completer, ellipsoid):
    mask, affine = ellipsoid
    sparse, kept = sparsify(mask, 0, 3)
    case = completer.prepare(sparse, affine, {0: kept})
    a, lo_a = completer.decode(case, adaptive=True)
    b, lo_b = completer.decode(case, adaptive=False)
    np.testing.assert_array_equal(lo_a, lo_b)
    assert a.shape == b.shape == tuple(case.hi - case.lo)
    assert np.mean((a > 0) == (b > 0)) > 0.999
    fine, _ = completer.decode(case, step=0.5)
    assert fine.shape == tuple(2 * (case.hi - case.lo) - 1)


def test_completion_is_deterministic(completer, ellipsoid):
    mask, affine = ellipsoid
    sparse, _ = sparsify(mask, 2, 4)
    runs = []
    for _ in range(2):
        seed_everything(0)
        result = complete_labelmap(sparse.astype(np.uint8), affine, completer, steps=3)
        runs.append(result)
    np.testing.assert_array_equal(runs[0].labels, runs[1].labels)
    losses = [[s["loss"] for s in r.report["labels"]["1"]["fit_steps"]] for r in runs]
    assert losses[0] == losses[1]


def test_completion_does_not_modify_prior(completer, ellipsoid):
    mask, affine = ellipsoid
    before = {k: v.clone() for k, v in completer.init.items()}
    sparse, kept = sparsify(mask, 0, 4)
    for _ in completer.fit(completer.prepare(sparse, affine, {0: kept}), 3):
        pass
    for k, v in completer.init.items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_complete_multiple_labels(completer, ellipsoid_factory):
    shape = (36, 26, 20)
    affine = ellipsoid_factory(shape, (1, 1, 1), **ANISO)[1]
    a, _ = ellipsoid_factory(shape, (7, 6, 9), center_ijk=(9, 12, 9.5), **ANISO)
    b, _ = ellipsoid_factory(shape, (6, 7, 8), center_ijk=(26, 13, 9.5), **ANISO)
    full = np.where(a, 2, 0) + np.where(b, 5, 0)
    full = full.astype(np.int16)
    sparse = np.zeros_like(full)
    sparse[:, :, 3::4] = full[:, :, 3::4]
    seen = []
    result = complete_labelmap(sparse, affine, completer, steps=2, slices={2: list(range(3, 20, 4))},
                               mesh_step=1.0, on_step=lambda lab, st, _case: seen.append((lab, st.step)))
    assert result.labels.dtype == np.int16 and result.labels.shape == shape
    assert set(np.unique(result.labels)) == {0, 2, 5}
    assert dice(result.labels == 2, a) > 0.75 and dice(result.labels == 5, b) > 0.75
    assert seen == [(2, 1), (2, 2), (5, 1), (5, 2)]
    assert set(result.surfaces) == {2, 5}
    assert all(s.GetNumberOfPoints() > 0 for s in result.surfaces.values())
    report = result.report
    assert report["steps"] == 2 and set(report["labels"]) == {"2", "5"}
    for entry in report["labels"].values():
        assert [s["step"] for s in entry["fit_steps"]] == [1, 2]
        assert set(entry["phases"]) == {"prepare", "fit", "decode", "mesh", "total"}
        assert entry["voxels"] > 0
        assert "_case" not in entry and "_params" not in entry
    only = complete_labelmap(sparse, affine, completer, steps=1, label=5, slices={2: list(range(3, 20, 4))})
    assert set(np.unique(only.labels)) == {0, 5}
    np.testing.assert_array_equal(only.labels == 5, complete_labelmap(
        sparse, affine, completer, steps=1, slices={2: list(range(3, 20, 4))}).labels == 5)
    with pytest.raises(SliceError, match="label 7 is not in the input"):
        complete_labelmap(sparse, affine, completer, steps=1, label=7)


def test_complete_uses_a_case_the_caller_prepared(completer, ellipsoid_factory):
    mask, affine = ellipsoid_factory((24, 24, 24), (7, 6, 8))
    sparse = np.zeros(mask.shape, np.uint8)
    sparse[:, :, 4::4] = mask[:, :, 4::4]
    chosen = {2: [8, 12, 16]}  # fewer slices than the input holds: found automatically, all would be used
    case = completer.prepare(sparse > 0, affine, chosen)
    result = complete_labelmap(sparse, affine, completer, steps=1, prepared={1: case})
    assert result.report["labels"]["1"]["slices"] == {"2": [8, 12, 16]}
    assert complete_labelmap(sparse, affine, completer, steps=1).report["labels"]["1"]["slices"] != {"2": [8, 12, 16]}


def test_input_labels_refusals():
    assert input_labels(np.array([[[0, 3], [1, 3]]], np.uint8)) == [1, 3]
    assert input_labels(np.array([[[0.0, 2.0]]])) == [2]
    with pytest.raises(SliceError, match="fractional"):
        input_labels(np.array([[[0.0, 0.5]]]))
    with pytest.raises(SliceError, match="NaN"):
        input_labels(np.array([[[0.0, np.nan]]]))
    with pytest.raises(SliceError, match="negative"):
        input_labels(np.array([[[0, -1, 2]]]))
    with pytest.raises(SliceError, match="no foreground"):
        input_labels(np.zeros((2, 2, 2)))
    with pytest.raises(SliceError, match="3D"):
        input_labels(np.ones((2, 2)))


def test_plane_axes_follow_the_affine():
    # voxel axes: i runs inferior-superior, j right-left (LPS-like, negative), k posterior-anterior,
    # each tilted by a few degrees; spacings differ
    turn = np.deg2rad(8.0)
    directions = np.array([[0.1, np.sin(turn), np.cos(turn)],  # RAS direction of voxel axis i, j, k
                           [-np.cos(turn), 0.05, np.sin(turn)],
                           [0.0, np.cos(turn), 0.1]])
    affine = np.eye(4)
    affine[:3, :3] = directions.T * np.array([2.5, 0.8, 1.2])
    assert [plane_axis(affine, p) for p in ("axial", "sagittal", "coronal")] == [0, 1, 2]
    assert setting_axis(affine, "coronal") == 2 and setting_axis(affine, "1") == 1


def test_protocol_dice(completer, ellipsoid_factory):
    from inr_engine.datasets import Shape

    mask, affine = ellipsoid_factory((24, 24, 24), (7, 6, 8))
    scores = protocol_dice(completer, Shape(mask, affine, "e"), axis=0, every=4, steps=(0, 1, 3))
    assert set(scores) == {0, 1, 3}
    assert all(0.7 < v <= 1.0 for v in scores.values())


def test_float_label_values_above_255_are_kept(completer, ellipsoid):
    mask, affine = ellipsoid
    sparse, _ = sparsify(mask, 2, 4)
    result = complete_labelmap(sparse.astype(np.float32) * 300, affine, completer, steps=1)
    assert set(np.unique(result.labels)) == {0, 300}, f"{result.labels.dtype}: {np.unique(result.labels)}"


# --------------------------------------------------------------------------- shipped samples and bundled priors
HAS_SAMPLES = (SAMPLES_DIR / "samples.json").is_file()
HAS_BUNDLED = (BUNDLED_DIR / MANIFEST).is_file()


def _sparse_samples():
    if not HAS_SAMPLES:
        return []
    return [s for s in json.loads((SAMPLES_DIR / "samples.json").read_text())["samples"] if s["kind"] == "sparse"]


@pytest.mark.skipif(not HAS_SAMPLES, reason="no shipped samples")
@pytest.mark.parametrize("sample", _sparse_samples(), ids=lambda s: s["file"])
def test_shipped_sparse_samples_follow_the_protocol(sample):
    sparse = read_volume(SAMPLES_DIR / sample["file"])
    full = read_volume(SAMPLES_DIR / sample["ground_truth"])
    assert sparse.shape == full.shape == tuple(sample["shape"])
    np.testing.assert_array_equal(sparse.affine, full.affine)
    np.testing.assert_allclose(spacing(sparse.affine), sample["spacing_mm"], atol=0.01)
    expected, kept = sparsify(full.array > 0, sample["axis"], sample["every"])
    assert kept == sample["kept_slices"]
    np.testing.assert_array_equal(sparse.array > 0, expected)
    assert int((sparse.array > 0).sum()) == sample["foreground_voxels"]
    assert find_annotated_slices(sparse.array) == {sample["axis"]: kept}


def _bundled_samples():
    if not (HAS_SAMPLES and HAS_BUNDLED):
        return []
    names = set(bundled_priors())
    return [s for s in _sparse_samples() if s.get("prior") in names]


@pytest.mark.skipif(not HAS_BUNDLED, reason="no bundled priors yet (inr_engine/data/priors/manifest.json)")
@pytest.mark.parametrize("sample", _bundled_samples(), ids=lambda s: s["file"])
def test_bundled_prior_completes_shipped_sample(sample):
    completer = ShapeCompleter.from_prior(load_prior(sample["prior"], task="shape_completion"))
    sparse = read_volume(SAMPLES_DIR / sample["file"])
    full = read_volume(SAMPLES_DIR / sample["ground_truth"]).array > 0
    case = completer.prepare(sparse.array, sparse.affine)
    params = None
    for st in completer.fit(case):
        params = st.params
    exact, _ = completer.decode(case, params, adaptive=False)
    adaptive, _ = completer.decode(case, params, adaptive=True)
    assert np.mean((exact > 0) == (adaptive > 0)) > 0.999
    assert dice(completer.labelmap(case, params), full) > 0.70


@pytest.mark.parametrize("prior, sparse_file", [
    ("adrenal", "adrenal_val000_sparse_w8_axis0.nii.gz"),
    ("head-neck-organs", "hn_0522c0331_parotid_lt_sparse_axial_every4.nrrd"),
])
def test_a_structure_costs_its_own_size_not_its_scans(prior, sparse_file):
    """The work happens on a crop around the annotation: the same annotation in a scan five times
    larger completes to exactly the same labels, surface region and report."""
    volume = read_volume(SAMPLES_DIR / sparse_file)
    completer = ShapeCompleter.from_prior(load_prior(prior))

    def completed(pad: int):
        array = np.pad(volume.array, pad)
        affine = volume.affine.copy()
        affine[:3, 3] -= affine[:3, :3] @ np.full(3, pad)  # the structure stays where it was in RAS
        result = complete_labelmap(array, affine, completer)
        inner = tuple(slice(pad, pad + n) for n in volume.array.shape)
        return result.labels[inner], result.labels.sum(), result.report["labels"]["1"]

    roomy, roomy_total, roomy_report = completed(40)
    huge, huge_total, huge_report = completed(160)
    np.testing.assert_array_equal(roomy, huge)
    assert roomy_total == huge_total == roomy.sum()  # nothing outside the input's own extent either
    assert {a: [i - 40 for i in v] for a, v in roomy_report["slices"].items()} == \
           {a: [i - 160 for i in v] for a, v in huge_report["slices"].items()}


def test_a_geometry_rounded_elsewhere_completes_the_same():
    """Slicer's IJK-to-RAS matrix of a file differs from the file's affine by about 1e-16; grids sized
    from the spacing must not gain a row from it (the web page and the CLI gave different labels)."""
    volume = read_volume(SAMPLES_DIR / "hn_0522c0331_parotid_lt_sparse_axial_every4.nrrd")
    completer = ShapeCompleter.from_prior(load_prior("head-neck-organs"), torch.device("cpu"))
    noisy = volume.affine.copy()
    noisy[:3, :3] *= 1 + 4e-16
    assert not np.array_equal(spacing(volume.affine) * (1 + 4e-16), spacing(volume.affine))  # a real perturbation
    plain = complete_labelmap(volume.array, volume.affine, completer).labels
    assert np.array_equal(complete_labelmap(volume.array, noisy, completer).labels, plain)

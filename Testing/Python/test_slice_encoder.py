"""The shape-completion context encoder: its grid, its held-out context, training it from the
CLI, and refusing a prior whose encoder does not match."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from inr_engine.cli import main
from inr_engine.data import SAMPLES_DIR
from inr_engine.io import read_volume
from inr_engine.metrics import dice
from inr_engine.priors import PriorError, load_prior, save_prior, sha256
from inr_engine.shape.case import prepare_case
from inr_engine.shape.completer import ShapeCompleter
from inr_engine.shape.encoder import EncodedEvidence, EvidenceGrid, SliceEncoder, grid_multiple
from inr_engine.shape.model import ShapeConfig
from inr_engine.shape.slices import NUM_FEATURES, SliceEvidence, sparsify


@pytest.mark.parametrize("channels", [(16, 32, 64), (16, 32, 64, 64, 64)])
def test_grid_sits_on_voxels_at_the_volume_spacing_and_pads_to_a_multiple(channels):
    multiple = grid_multiple(channels)
    grid = EvidenceGrid(np.array([3, 5, 7]), np.array([13, 16, 22]), np.ones(3), 1.0, multiple)
    assert all(d % multiple == 0 and d >= n for d, n in zip(grid.dims, (10, 11, 15)))
    assert np.allclose(grid.lo, np.round(grid.lo)), "a 1 mm grid on a 1 mm volume must hit voxel centres"
    values = np.random.default_rng(0).random(grid.dims)
    idx = np.array([[0, 0, 0], [3, 5, 2], [grid.dims[0] - 1, 1, grid.dims[2] - 1]])
    assert np.allclose(grid.sample(values, grid.lo + idx * grid.step), values[tuple(idx.T)])


def test_grid_pitch_is_physical():
    fine = EvidenceGrid(np.zeros(3), np.array([64, 64, 64]), np.array([0.5, 0.5, 2.0]), 1.0, 4)
    assert np.allclose(fine.step, [2.0, 2.0, 0.5])
    assert fine.dims == (32, 32, 128)


@pytest.fixture(scope="module")
def ellipsoid(ellipsoid_factory):
    return ellipsoid_factory((28, 28, 20), (9, 7, 12), spacing=(0.8, 1.2, 2.0), angles_deg=(20, -10, 30))


@pytest.fixture(scope="module")
def encoded_case(ellipsoid):
    mask, affine = ellipsoid
    sparse, kept = sparsify(mask, 2, 4)
    torch.manual_seed(0)
    cfg = ShapeConfig(hidden_features=16, hidden_layers=1, context_points=256, encoder_channels=(4, 8))
    return prepare_case(sparse, affine, cfg, {2: kept}, encoder=SliceEncoder(cfg.encoder_channels).eval()), kept


def test_encoded_evidence_adds_one_column(encoded_case):
    case, _ = encoded_case
    assert isinstance(case.evidence, EncodedEvidence)
    ijk = np.argwhere(np.ones(case.evidence.shape, bool))[::97]
    feats = case.evidence.features(ijk)
    assert feats.shape == (len(ijk), NUM_FEATURES + 1) and np.all(np.isfinite(feats))
    assert np.allclose(feats[:, :NUM_FEATURES], case.evidence.base.features(ijk))
    assert case.context[1].shape[-1] == NUM_FEATURES + 1


def test_leaving_a_slice_out_runs_the_encoder_again(encoded_case):
    case, kept = encoded_case
    held = case.evidence.without(2, 1)
    offset = int(case.offset[2])  # the evidence is in the crop's indices
    assert held.base.slices[2] == [k - offset for k in kept if k != kept[1]]
    on_slice = np.argwhere(np.ones(case.evidence.shape, bool))
    on_slice = on_slice[on_slice[:, 2] == kept[1] - offset]
    assert not np.allclose(held.features(on_slice)[:, -1], case.evidence.features(on_slice)[:, -1])
    assert np.array_equal(held.logits.shape, case.evidence.logits.shape)


@pytest.fixture(scope="module")
def encoded_prior(tmp_path_factory):
    """A prior with a context encoder, trained from the CLI on the shipped adrenal label maps."""
    directory = tmp_path_factory.mktemp("encoded")
    data = directory / "labels"
    data.mkdir()
    for name in ("adrenal_val000_full.nii.gz", "adrenal_val001_full.nii.gz"):
        shutil.copy(SAMPLES_DIR / name, data / name)
    out = directory / "encoded.safetensors"
    code = main(["train", "shape", "--data", str(data), "--out", str(out), "--steps", "2",
                 "--meta-batch", "2", "--encoder-steps", "3", "--encoder-batch", "2", "--encoder-echo", "2",
                 "--max-val", "1",
                 "--config", "encoder_channels=4,8", "hidden_features=16", "hidden_layers=1", "context_points=256",
                 "target_points=512", "inner_steps=1"])
    assert code == 0 and out.exists()
    return out


def test_cli_trains_an_encoded_prior_that_completes(encoded_prior, tmp_path):
    prior = load_prior(encoded_prior, task="shape_completion")
    assert prior.metadata["config"]["encoder_channels"] == [4, 8]
    assert "context_encoder" in prior.metadata["architecture"]
    assert any(k.startswith("encoder.") for k in prior.tensors) and "init.gamma" in prior.tensors
    completer = ShapeCompleter.from_prior(prior)
    assert completer.encoder is not None and not completer.encoder.training
    out = tmp_path / "dense.nii.gz"
    sparse = SAMPLES_DIR / "adrenal_val000_sparse_w8_axis0.nii.gz"
    assert main(["complete", str(sparse), "--output", str(out), "--prior", str(encoded_prior), "--steps", "2"]) == 0
    dense, truth = read_volume(out), read_volume(SAMPLES_DIR / "adrenal_val000_full.nii.gz")
    assert dense.array.shape == truth.array.shape and np.allclose(dense.affine, truth.affine)
    assert dice(dense.array > 0, truth.array > 0) > 0.3  # barely trained: the evidence carries it


def test_prior_with_a_mismatched_encoder_is_refused(encoded_prior, tmp_path):
    prior = load_prior(encoded_prior, task="shape_completion")
    tensors = {k: v for k, v in prior.tensors.items() if not k.endswith(".bias") or not k.startswith("encoder.")}
    broken = save_prior(tmp_path / "broken.safetensors", tensors, prior.metadata)
    with pytest.raises(PriorError, match="context encoder"):
        ShapeCompleter.from_prior(load_prior(broken))
    metadata = dict(prior.metadata, config=dict(prior.metadata["config"], encoder_channels=[8, 16]))
    wider = save_prior(tmp_path / "wider.safetensors", prior.tensors, metadata)
    with pytest.raises(PriorError, match="context encoder"):
        ShapeCompleter.from_prior(load_prior(wider))


def test_evidence_without_encoder_is_unchanged(ellipsoid):
    mask, affine = ellipsoid
    sparse, kept = sparsify(mask, 0, 4)
    case = prepare_case(sparse, affine, ShapeConfig(context_points=256), {0: kept})
    assert isinstance(case.evidence, SliceEvidence) and case.context[1].shape[-1] == NUM_FEATURES


def test_encoder_training_example_is_aligned_and_physical(ellipsoid):
    from inr_engine.datasets import Shape
    from inr_engine.shape.tasks import encoder_task

    mask, affine = ellipsoid  # 0.8 x 1.2 x 2.0 mm voxels, oblique
    cfg = ShapeConfig(encoder_channels=(4, 8, 8, 8), mixed_orientation_prob=0.0)
    features, target = encoder_task(Shape(mask, affine, "ellipsoid"), cfg, np.random.default_rng(0))
    logits = SliceEncoder(cfg.encoder_channels)(features[None])
    assert logits.shape[1:] == features.shape[1:], "the U-Net keeps the grid"
    assert features.shape == (NUM_FEATURES, *target.shape)
    assert all(d % grid_multiple(cfg.encoder_channels) == 0 for d in target.shape)
    assert dice(features[-1].numpy() < 0, target.numpy() > 0.5) > 0.8, "target and evidence must share the grid"
    voxel_mm3 = float(np.prod(np.linalg.norm(affine[:3, :3], axis=0)))
    assert float(target.sum()) == pytest.approx(mask.sum() * voxel_mm3, rel=0.05), "1 mm grid: volume in mm^3"


def test_training_windows_stay_on_the_grid():
    grid = EvidenceGrid(np.zeros(3), np.array([100, 30, 70]), np.ones(3), 1.0, 4)
    window = grid.window(64, np.random.default_rng(0))
    assert window.dims == (64, 32, 64)
    offset = (window.lo - grid.lo) / grid.step
    assert np.allclose(offset, np.round(offset)) and np.all(offset >= 0)
    assert np.all(offset + window.dims <= grid.dims)
    assert grid.window(128, np.random.default_rng(0)) is grid


def test_cli_continues_training_a_prior(encoded_prior, tmp_path):
    data = tmp_path / "labels"
    data.mkdir()
    shutil.copy(SAMPLES_DIR / "adrenal_val000_full.nii.gz", data / "a.nii.gz")
    shutil.copy(SAMPLES_DIR / "adrenal_val001_full.nii.gz", data / "b.nii.gz")
    common = ["train", "shape", "--data", str(data), "--init", str(encoded_prior),
              "--steps", "1", "--meta-batch", "2", "--max-val", "1"]
    out = tmp_path / "continued.safetensors"
    assert main([*common, "--out", str(out), "--encoder-steps", "0", "--config", "every_max=6"]) == 0
    start, continued = load_prior(encoded_prior), load_prior(out)
    encoder = [k for k in start.tensors if k.startswith("encoder.")]
    assert encoder and all(torch.equal(start.tensors[k], continued.tensors[k]) for k in encoder), \
        "--encoder-steps 0 keeps the encoder"
    assert continued.metadata["config"]["every_max"] == 6
    assert continued.metadata["config"]["hidden_features"] == start.metadata["config"]["hidden_features"]
    assert continued.metadata["training"]["continued_from"]["sha256"] == sha256(encoded_prior)

    wider = tmp_path / "wider.safetensors"
    assert main([*common, "--out", str(wider), "--config", "hidden_features=32"]) != 0
    assert not wider.exists(), "an architecture change is refused before anything is written"

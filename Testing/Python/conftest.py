"""Shared fixtures: synthetic ellipsoid label maps with (oblique, anisotropic) affines and a tiny prior.

Everything here is real data made with NumPy and real files written with the engine; nothing is
mocked. The suite runs on two CPU cores, so networks and grids are kept small.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(2)

# Slicer puts the repository's module folders on sys.path; do the same for their Lib packages.
REPOSITORY = Path(__file__).resolve().parents[2]
for folder in ("", "INRSegmentation", "MetaShapeReconstruction", "SegmentEditorSparseCompletion"):
    if str(REPOSITORY / folder) not in sys.path:
        sys.path.insert(0, str(REPOSITORY / folder))


def rotation(angles_deg) -> np.ndarray:
    """Rotation matrix from x, y, z Euler angles in degrees."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_affine(spacing=(1.0, 1.0, 1.0), angles_deg=(0.0, 0.0, 0.0), origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    """IJK -> RAS affine with the given voxel spacing, orientation and origin."""
    affine = np.eye(4)
    affine[:3, :3] = rotation(angles_deg) @ np.diag(np.asarray(spacing, np.float64))
    affine[:3, 3] = origin
    return affine


def ellipsoid_mask(shape=(24, 24, 24), radii_mm=(7.0, 5.0, 6.0), affine=None, center_ijk=None) -> np.ndarray:
    """Boolean mask of an axis-aligned (in voxel space) ellipsoid; radii in mm along i, j, k."""
    affine = np.eye(4) if affine is None else np.asarray(affine, np.float64)
    spc = np.linalg.norm(affine[:3, :3], axis=0)
    center = (np.asarray(shape, np.float64) - 1) / 2 if center_ijk is None else np.asarray(center_ijk, np.float64)
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), -1)
    r = ((ijk - center) * spc / np.asarray(radii_mm, np.float64)) ** 2
    return r.sum(-1) <= 1.0


@pytest.fixture(scope="session")
def affine_factory():
    """``affine_factory(spacing, angles_deg, origin)`` -> 4x4 IJK->RAS affine."""
    return make_affine


@pytest.fixture(scope="session")
def ellipsoid_factory():
    """``ellipsoid_factory(shape, radii_mm, spacing, angles_deg, origin, center_ijk)`` -> (mask, affine)."""

    def make(shape=(24, 24, 24), radii_mm=(7.0, 5.0, 6.0), spacing=(1.0, 1.0, 1.0), angles_deg=(0.0, 0.0, 0.0),
             origin=(0.0, 0.0, 0.0), center_ijk=None):
        affine = make_affine(spacing, angles_deg, origin)
        return ellipsoid_mask(shape, radii_mm, affine, center_ijk), affine

    return make


@pytest.fixture(scope="session")
def tiny_cfg():
    """A shape-completion configuration small enough for two shared CPU cores."""
    from inr_engine.shape.model import ShapeConfig

    return ShapeConfig(hidden_features=16, hidden_layers=1, context_points=256, target_points=512, inner_steps=2,
                       default_steps=3, every_min=3, every_max=5, margin_mm=4.0, scale_mm=16.0)


@pytest.fixture(scope="session")
def tiny_prior(tmp_path_factory, tiny_cfg):
    """A shape-completion prior file (with a manifest) meta-trained for a few steps on synthetic ellipsoids."""
    from inr_engine.datasets import Shape
    from inr_engine.meta import MetaLearner
    from inr_engine.priors import save_prior, write_manifest
    from inr_engine.runtime import seed_everything
    from inr_engine.settings import TrainingSettings
    from inr_engine.shape.model import OccupancyINR, occupancy_loss, prior_metadata, prior_tensors
    from inr_engine.shape.tasks import draw_meta_batch
    from inr_engine.training import train_meta

    cfg = tiny_cfg
    rng = seed_everything(0)
    shapes = [(ellipsoid_mask((24, 24, 24), radii, np.eye(4)), np.eye(4))
              for radii in [(7, 5, 6), (5, 8, 6), (6, 6, 9), (8, 4, 5)]]

    pool = [Shape(mask, affine, f"ellipsoid-{n}") for n, (mask, affine) in enumerate(shapes)]

    def next_batch():
        return draw_meta_batch(pool, cfg, rng, 2)

    learner = MetaLearner(OccupancyINR(cfg), cfg.algorithm, cfg.inner_steps, cfg.inner_lr)
    train_meta(learner, next_batch, lambda lo, la, p: occupancy_loss(lo, la, p, cfg.weight_decay),
               TrainingSettings(4, 1e-3, clip_grad_norm=1.0), torch.device("cpu"))
    directory = tmp_path_factory.mktemp("priors")
    path = save_prior(directory / "tiny.safetensors", prior_tensors(learner),
                      prior_metadata(cfg, name="tiny", description="test prior"))
    write_manifest(directory)
    return path

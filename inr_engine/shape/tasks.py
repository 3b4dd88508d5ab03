"""Training tasks for shape priors: sparse slices simulated from full shapes (random spacing,
offset and orientation), the meta-learning tasks made of them, and the background stream that
draws them while the model trains."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy import ndimage

from ..datasets import Shape
from ..frames import spacing
from .case import balanced_sample, box_voxels, foreground_span, prepare_case, region_of_interest
from .encoder import EvidenceGrid, SliceEncoder, grid_multiple
from .model import ShapeConfig
from .slices import SliceError, SliceEvidence, sparsify

ANISOTROPIC = 1.2  # a grid whose coarsest spacing is this much above its finest has an acquisition axis


def _single_axis(spc: np.ndarray, acquisition_prob: float, rng: np.random.Generator) -> int:
    """Axis of a single-orientation training task: the acquisition (coarsest-spaced) axis with
    ``acquisition_prob`` on anisotropic grids, else uniform."""
    if acquisition_prob > 0 and spc.max() > ANISOTROPIC * spc.min() and rng.random() < acquisition_prob:
        return int(np.argmax(spc))
    return int(rng.integers(3))


def simulate_sparse(mask: np.ndarray, affine: np.ndarray, cfg: ShapeConfig, rng: np.random.Generator):
    """Simulated annotation of a full mask: every w-th slice (random w, offset and axes, as the
    config's training ranges say); returns ``(sparse, slices)``, or None when too few slices."""
    mask = np.asarray(mask) > 0
    spc = spacing(affine)
    axes = [_single_axis(spc, cfg.acquisition_axis_prob, rng)]
    if rng.random() < cfg.mixed_orientation_prob:
        axes = sorted(rng.choice(3, int(rng.integers(2, 4)), replace=False).tolist())
    sparse = np.zeros_like(mask)
    slices = {}
    for a in axes:
        # spacing-aware w: the same physical gap range on anisotropic grids
        w_mm = rng.uniform(cfg.every_min, cfg.every_max + 1) * float(spc.min())
        every = max(2, int(round(w_mm / spc[a])))
        part, kept = sparsify(mask, a, every, offset=int(rng.integers(every)))
        sparse |= part
        slices[a] = kept
    if not sparse.any() or sum(len(v) for v in slices.values()) < 2:
        return None
    return sparse, slices


def sample_task(mask: np.ndarray, affine: np.ndarray, cfg: ShapeConfig, rng: np.random.Generator,
                encoder: SliceEncoder | None = None):
    """One meta-training task from a full mask: simulated sparse slices -> (context, target)."""
    simulated = simulate_sparse(mask, affine, cfg, rng)
    if simulated is None:
        return None
    mask = np.asarray(mask) > 0
    sparse, slices = simulated
    case = prepare_case(sparse, affine, cfg, slices, rng, encoder)
    voxels = box_voxels(case.lo, case.hi)
    labels = mask[tuple(voxels.T)].astype(np.float32)
    band = ndimage.binary_dilation(mask, iterations=2) & ~ndimage.binary_erosion(mask, iterations=2)
    pick = balanced_sample(rng, len(voxels), cfg.target_points, band[tuple(voxels.T)])
    target = case.inputs(voxels[pick]) + (torch.from_numpy(labels[pick]),)
    return case.context, target


def collate(tasks) -> tuple:
    """Stack tasks into (context, target) batches of ``((coords, evidence), labels)``."""

    def stack(part):
        coords, ev, labels = (torch.stack(t) for t in zip(*part))
        return (coords, ev), labels

    return stack([t[0] for t in tasks]), stack([t[1] for t in tasks])


def draw_meta_batch(shapes: list[Shape], cfg: ShapeConfig, rng: np.random.Generator, size: int,
                    encoder: SliceEncoder | None = None) -> tuple:
    """``size`` tasks from randomly chosen shapes, collated into (context, target)."""
    return collate(draw_tasks(shapes, rng, size,
                              lambda shape: sample_task(shape.mask, shape.affine, cfg, rng, encoder)))


MAX_FAILED_DRAWS = 1000  # tries in a row without a usable task before the shapes are declared unusable


def draw_tasks(shapes: list[Shape], rng: np.random.Generator, size: int, make: Callable[[Shape], object]) -> list:
    """``size`` non-None results of ``make`` on randomly chosen shapes; raises SliceError when
    there are no shapes or none gives a task in ``MAX_FAILED_DRAWS`` tries (no endless loop)."""
    if not shapes:
        raise SliceError("no training shapes: the data left none to train on")
    out, failed = [], 0
    while len(out) < size:
        item = make(shapes[int(rng.integers(len(shapes)))])
        if item is not None:
            out.append(item)
            failed = 0
            continue
        failed += 1
        if failed >= MAX_FAILED_DRAWS:
            raise SliceError(f"no training task could be made from the {len(shapes)} training shape(s) in "
                             f"{failed} tries: they are too small for the simulated slices; train on larger shapes")
    return out


ENCODER_TRAINING_SIDE = 64  # grid points per side of an encoder training example, at most


def encoder_task(shape: Shape, cfg: ShapeConfig, rng: np.random.Generator):
    """One training example for the context encoder: the evidence of simulated sparse slices on
    the encoder's grid over the decoded region, and the shape's occupancy there (linear samples)."""
    simulated = simulate_sparse(shape.mask, shape.affine, cfg, rng)
    if simulated is None:
        return None
    sparse, slices = simulated
    evidence = SliceEvidence(sparse, slices, spacing(shape.affine))
    roi = region_of_interest(*foreground_span(sparse), evidence.slices, evidence.spacing, cfg.margin_mm, sparse.shape)
    grid = EvidenceGrid(*roi, evidence.spacing, cfg.encoder_pitch_mm, grid_multiple(cfg.encoder_channels))
    grid = grid.window(ENCODER_TRAINING_SIDE, rng)  # large organs (the brain) train on windows: the U-Net is local
    occupancy = ndimage.map_coordinates(np.asarray(shape.mask, np.float32), grid.points().T, order=1, mode="constant")
    features = torch.from_numpy(grid.features(evidence)).permute(3, 0, 1, 2)  # (C, D, H, W), stored channels last
    return features, torch.from_numpy(occupancy.reshape(grid.dims).astype(np.float32))

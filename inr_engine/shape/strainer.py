"""STRAINER shape-completion priors: an :class:`~.model.OccupancyINR` whose encoder is fitted over
the K shapes' occupancy (with simulated sparse-slice evidence), no meta-learned steps (see
:mod:`inr_engine.strainer`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import strainer
from ..meta import STRAINER
from ..priors import initialisation_tensors, save_prior
from .model import OccupancyINR, ShapeConfig, occupancy_loss, prior_metadata
from .tasks import sample_task


def shape_config(**overrides) -> ShapeConfig:
    """A shape-completion configuration for STRAINER priors: Adam only, no meta-learned steps."""
    return ShapeConfig(**{"algorithm": STRAINER, "inner_steps": 0, "adam_lr": 1e-4, "default_steps": 20,
                          **overrides})


def shape_task_pool(shapes, cfg: ShapeConfig, tasks_per_shape: int, rng: np.random.Generator):
    """Per shape, ``tasks_per_shape`` simulated sparse-slice tasks' targets (inputs, labels)."""
    pool = []
    for shape in shapes:
        targets = []
        while len(targets) < tasks_per_shape:
            task = sample_task(shape.mask, shape.affine, cfg, rng)
            if task is not None:
                targets.append(task[1])
        pool.append(targets)
    return pool


def train_shape_encoder(shapes, cfg: ShapeConfig, settings: strainer.StrainerSettings, tasks_per_shape: int = 8,
                        device="cpu") -> tuple[dict[str, torch.Tensor], strainer.EncoderFit]:
    """The STRAINER initialisation of an occupancy INR from ``shapes``: (init, encoder fit)."""
    pool = shape_task_pool(shapes, cfg, tasks_per_shape, np.random.default_rng(settings.seed))

    def draw(rng):
        picked = [targets[int(rng.integers(len(targets)))] for targets in pool]
        coords, evidence, labels = (torch.stack(t) for t in zip(*picked))
        return (coords, evidence), labels

    def loss(out, labels, params):
        return occupancy_loss(out, labels, params, cfg.weight_decay)

    factory = lambda: OccupancyINR(cfg)  # noqa: E731
    decoder = [f"siren.{k}" for k in strainer.DECODER]
    return strainer.initialisation(factory, decoder, len(shapes), draw, loss, settings, device)


def build_shape_prior(shapes, out: str | Path, cfg: ShapeConfig | None = None,
                      settings: strainer.StrainerSettings | None = None, device="cpu", **metadata) -> dict:
    """Fit a STRAINER shape-completion prior on ``shapes`` and write it to ``out``; returns its metadata."""
    cfg = cfg or shape_config()
    settings = settings or strainer.StrainerSettings()
    init, fit = train_shape_encoder(shapes, cfg, settings, device=device)
    meta = prior_metadata(cfg, name=Path(out).stem, **metadata,
                                           **strainer.strainer_metadata(settings, fit, [s.name for s in shapes]))
    save_prior(out, initialisation_tensors(init, strainer.zero_step_sizes(init)), meta)
    return meta

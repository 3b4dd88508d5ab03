"""Training segmentation priors (MetaSeg, NISF) on labelled images, and scoring them.

Checkpoints are chosen on an inner validation split carved from the training images, so the
held-out subjects that benchmarks report on never steer training.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..datasets import LabelledImage
from ..metrics import dice
from ..priors import load_prior, save_prior
from ..runtime import seed_everything
from ..settings import PAPER_STEP_GRID, MetaSegTrainingSettings, NISFTrainingSettings
from ..training import (
    Log,
    distributed_context,
    json_logger,
    run_training,
    train_meta,
)
from . import metaseg, nisf
from .segment import segment_image
from .volume import Segmenter, TrainingVolumes


def foreground_dice(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> list[float]:
    return [dice(pred == c, truth == c) for c in range(1, num_classes)]


def segmentation_validation(segmenter: Segmenter, images: list[LabelledImage], num_classes: int,
                       steps: int | None = None) -> dict:
    """Mean foreground Dice per class (and their mean, ``score``) after ``steps`` fitting steps."""
    scores = np.array([foreground_dice(segment_image(im.image, im.affine, segmenter, steps).labels, im.labels,
                                       num_classes) for im in images])
    per_class = scores.mean(0)
    return {"score": float(per_class.mean()), "dice_per_class": [float(d) for d in per_class]}


def train_metaseg_prior(train: list[LabelledImage], val: list[LabelledImage], cfg: metaseg.MetaSegConfig,
                        out: str | Path, settings: MetaSegTrainingSettings, *, device: torch.device,
                        description: str, training_data: dict, class_names,
                        log_path: str | Path | None = None) -> dict:
    """Meta-train MetaSeg and write the best validated state to ``out``."""
    rng = seed_everything(settings.seed + distributed_context()[0])
    data = TrainingVolumes.from_images(train, cfg.scale_mm, cfg.num_classes)
    reference = data.reference()
    learner = metaseg.new_learner(cfg)

    def validate(lrn) -> dict:
        segmenter = metaseg.MetaSegSegmenter.from_learner(lrn, cfg, device=device)
        return segmentation_validation(segmenter, val, cfg.num_classes)

    def checkpoint(lrn, entry: dict) -> None:
        meta = metaseg.prior_metadata(cfg, reference, class_names, name=Path(out).stem, description=description,
                                      training=training_data, validation=entry, training_steps=entry["step"],
                                      seed=settings.seed, meta_batch=settings.meta_batch, outer_lr=settings.lr)
        save_prior(out, metaseg.prior_tensors(lrn), meta)

    def next_batch():
        return data.meta_batch(rng, settings.meta_batch, cfg.context_points, cfg.target_points)

    result = train_meta(learner, next_batch, metaseg.make_outer_loss(cfg), settings.stage(), device,
                        inner_loss_fn=metaseg.intensity_loss, validate=validate, checkpoint=checkpoint,
                        log=json_logger(log_path))
    if distributed_context()[0] == 0:
        curve = choose_default_steps(out, val)
        json_logger(log_path)({"stage": "default steps", "dice_against_steps": curve})
    return {"best": result.best, "seconds": result.seconds, "steps": result.steps, "config": asdict(cfg)}


DEFAULT_STEP_GRID = (1, 2, 3, 5, 10, 20)


def choose_default_steps(path: str | Path, val: list[LabelledImage], grid=DEFAULT_STEP_GRID) -> dict[int, float]:
    """Set a MetaSeg or NISF prior's default (fast) step count to the best on ``val`` over ``grid``.

    Beyond the meta-learned steps the fit goes on with Adam; whether that helps is a question for
    validation data, as the paper procedure's step count is. The grid ends at 20 to keep a fit
    within seconds. Rewrites the prior file (atomically) with the choice and the curve.
    """
    prior = load_prior(path)
    if prior.task == metaseg.TASK:
        segmenter = metaseg.MetaSegSegmenter.from_prior(prior)
    elif prior.task == nisf.TASK:
        segmenter = nisf.NISFSegmenter.from_prior(prior, "fast")
    else:
        raise ValueError(f"{path}: not a segmentation prior ({prior.task})")
    curve = dice_against_steps(segmenter, val, segmenter.cfg.num_classes, grid)
    meta = dict(prior.metadata)
    meta["config"] = {**meta["config"], "default_steps": max(curve, key=curve.get)}
    validation = dict(meta.get("validation", {}))
    if prior.task == nisf.TASK:
        validation["fast"] = {**validation.get("fast", {}), "dice_against_steps": curve}
    else:
        validation["dice_against_steps"] = curve
    meta["validation"] = validation
    save_prior(path, prior.tensors, meta)
    return curve


# --------------------------------------------------------------------------- NISF


def dice_against_steps(segmenter: Segmenter, images: list[LabelledImage], num_classes: int,
                       checkpoints=PAPER_STEP_GRID) -> dict[int, float]:
    """Mean foreground Dice after each step count in ``checkpoints`` (one fit per image)."""
    wanted = set(checkpoints)
    scores: dict[int, list[float]] = {s: [] for s in checkpoints}
    for im in images:
        volume = segmenter.prepare(im.image, im.affine)
        if 0 in wanted:
            scores[0].append(float(np.mean(foreground_dice(segmenter.labels(volume), im.labels, num_classes))))
        for st in segmenter.fit(volume, max(checkpoints)):
            if st.step in wanted:
                pred = segmenter.labels(volume, st.params)
                scores[st.step].append(float(np.mean(foreground_dice(pred, im.labels, num_classes))))
    return {s: float(np.mean(v)) for s, v in scores.items()}


def train_nisf_prior(train: list[LabelledImage], val: list[LabelledImage], cfg: nisf.NISFConfig, out: str | Path,
                     settings: NISFTrainingSettings, *, device: torch.device, description: str, training_data: dict,
                     class_names, log_path: str | Path | None = None) -> dict:
    """Auto-decoder training, the paper procedure's step count, then the fast procedure's stage.

    1. weights and one latent per training subject, jointly (Adam);
    2. the paper procedure's step count: the best mean Dice on ``val`` over ``settings.paper_step_grid``;
    3. the fast procedure's initialisation and step sizes meta-learned (``settings.latent_steps``)
       from the auto-decoder; the prior keeps the auto-decoder as well, for the paper procedure.
    """
    log = json_logger(log_path)
    rng = seed_everything(settings.seed + distributed_context()[0])  # each rank draws its own subjects
    data = TrainingVolumes.from_images(train, cfg.scale_mm, cfg.num_classes)
    reference = data.reference()
    net = nisf.NISFNetwork(cfg).to(device)
    start = time.perf_counter()
    latents = _fit_auto_decoder(net, data, cfg, rng, settings, device, log)
    trained_s = time.perf_counter() - start

    rank = distributed_context()[0]
    curve: dict[int, float] = {}
    if rank == 0:  # only rank 0 validates and writes
        paper = nisf.NISFSegmenter(cfg, dict(net.named_parameters()), None, "paper", device=device)
        curve = dice_against_steps(paper, val, cfg.num_classes, settings.paper_step_grid)
        cfg.paper_steps = max(curve, key=curve.get)
        log({"stage": "paper procedure", "dice_against_steps": curve, "paper_steps": cfg.paper_steps})

    with torch.no_grad():  # the fast procedure starts from the training latents' mean
        net.latent.copy_(latents.mean(0))
    paper_weights = {k: v.detach().clone() for k, v in net.named_parameters()}
    learner = nisf.fast_learner(net, cfg)

    def validate(lrn) -> dict:
        fast = nisf.NISFSegmenter(cfg, dict(lrn.model.named_parameters()), lrn.step_sizes(), "fast",
                                  device=device)
        return segmentation_validation(fast, val, cfg.num_classes)

    def checkpoint(lrn, entry: dict) -> None:
        meta = nisf.prior_metadata(
            cfg, reference, class_names, name=Path(out).stem, description=description, training=training_data,
            validation={"fast": entry, "paper": {"dice_against_steps": curve, "steps": cfg.paper_steps,
                                                 "score": curve[cfg.paper_steps]}},
            training_steps={"auto_decoder": settings.steps, "latent_meta": entry["step"]}, seed=settings.seed,
            batch=settings.batch, outer_lr=settings.lr, training_seconds=trained_s)
        save_prior(out, nisf.prior_tensors(paper_weights, lrn), meta)

    result = train_meta(learner, lambda: data.meta_batch(rng, settings.batch, cfg.points, cfg.points),
                        nisf.outer_loss, settings.meta_stage(), device, inner_loss_fn=nisf.inner_loss,
                        validate=validate, checkpoint=checkpoint, log=log, stage="fast procedure")
    if rank == 0:
        log({"stage": "default steps", "dice_against_steps": choose_default_steps(out, val)})
    return {"best": result.best, "paper": curve, "paper_steps": cfg.paper_steps, "config": asdict(cfg)}


class _AutoDecoder(torch.nn.Module):
    """The network and one latent per training subject."""

    def __init__(self, net: nisf.NISFNetwork, subjects: int, cfg: nisf.NISFConfig):
        super().__init__()
        self.net = net
        self.cfg = cfg
        self.latents = torch.nn.Parameter(torch.randn(subjects, cfg.latent_size) * nisf.LATENT_INIT_STD)

    def forward(self, index, coords, intensity, labels) -> torch.Tensor:
        return nisf.auto_decoder_loss(self.net, self.latents[index], coords, intensity, labels, self.cfg)


def _fit_auto_decoder(net: nisf.NISFNetwork, data: TrainingVolumes, cfg: nisf.NISFConfig, rng: np.random.Generator,
                      settings: NISFTrainingSettings, device: torch.device, log: Log) -> torch.Tensor:
    """Train the weights and one latent per subject together; returns the training latents."""
    decoder = _AutoDecoder(net, len(data.volumes), cfg).to(device)
    net.latent.requires_grad_(False)  # the per-subject latents stand in for it

    def step_loss() -> torch.Tensor:
        return decoder(*(t.to(device) for t in nisf.sample_batch(data, cfg, rng, settings.batch)))

    groups = [{"params": [p for p in net.parameters() if p.requires_grad], "lr": settings.lr},
              {"params": [decoder.latents], "lr": cfg.latent_lr}]
    run_training(decoder, step_loss, settings.auto_decoder_stage(), stage="auto-decoder", param_groups=groups,
                 log=log)
    net.latent.requires_grad_(True)
    return decoder.latents.detach()

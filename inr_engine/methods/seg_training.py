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
from torch.nn.parallel import DistributedDataParallel

from ..datasets import LabelledImage
from ..metrics import dice
from ..priors import load_prior, save_prior
from ..runtime import seed_everything
from ..segment import segment_image
from ..train import TrainingBudget, distributed_context, json_logger, train_meta
from . import metaseg, nisf
from .segmentation import Segmenter, TrainingVolumes


def foreground_dice(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> list[float]:
    return [dice(pred == c, truth == c) for c in range(1, num_classes)]


def validation_metrics(segmenter: Segmenter, images: list[LabelledImage], num_classes: int,
                       steps: int | None = None) -> dict:
    """Mean foreground Dice per class (and their mean, ``score``) after ``steps`` fitting steps."""
    scores = np.array([foreground_dice(segment_image(im.image, im.affine, segmenter, steps).labels, im.labels,
                                       num_classes) for im in images])
    per_class = scores.mean(0)
    return {"score": float(per_class.mean()), "dice_per_class": [float(d) for d in per_class]}


def train_metaseg_prior(train: list[LabelledImage], val: list[LabelledImage], cfg: metaseg.MetaSegConfig,
                        out: str | Path, *, steps: int, meta_batch: int, lr: float, seed: int, device: torch.device,
                        description: str, training_data: dict, class_names=metaseg.CLASS_NAMES,
                        log_path: str | Path | None = None, time_limit_s: float | None = None,
                        validate_every: int = 100) -> dict:
    """Meta-train MetaSeg and write the best validated state to ``out``."""
    rng = seed_everything(seed + distributed_context()[0])
    data = TrainingVolumes.from_images(train, cfg.scale_mm, cfg.num_classes)
    reference = data.reference()
    learner = metaseg.new_learner(cfg)

    def validate(lrn) -> dict:
        segmenter = metaseg.MetaSegSegmenter.from_learner(lrn, cfg, device=device)
        return validation_metrics(segmenter, val, cfg.num_classes)

    def checkpoint(lrn, entry: dict) -> None:
        meta = metaseg.prior_metadata(cfg, reference, class_names, name=Path(out).stem, description=description,
                                      training=training_data, validation=entry, training_steps=entry["step"],
                                      seed=seed, meta_batch=meta_batch, outer_lr=lr)
        save_prior(out, metaseg.prior_tensors(lrn), meta)

    result = train_meta(learner, lambda: data.meta_batch(rng, meta_batch, cfg.context_points, cfg.target_points),
                        metaseg.make_outer_loss(cfg), steps, lr, device, validate, validate_every=validate_every,
                        log=json_logger(log_path), checkpoint=checkpoint, time_limit_s=time_limit_s,
                        inner_loss_fn=metaseg.intensity_loss)
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
PAPER_STEP_GRID = (0, 10, 25, 50, 100, 150, 200, 300, 400)


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
                     *, steps: int, latent_steps: int, batch: int, lr: float, seed: int, device: torch.device,
                     description: str, training_data: dict, class_names, log_path: str | Path | None = None,
                     time_limit_s: float | None = None, paper_step_grid=PAPER_STEP_GRID, meta_lr: float = 1e-3) -> dict:
    """Auto-decoder training, the paper procedure's step count, then the fast procedure's stage.

    1. weights and one latent per training subject, jointly (Adam);
    2. the paper procedure's step count: the best mean Dice on ``val`` over ``paper_step_grid``;
    3. the fast procedure's initialisation and step sizes meta-learned (``latent_steps``) from the
       auto-decoder; the prior keeps the auto-decoder as well, for the paper procedure.
    """
    log = json_logger(log_path)
    rng = seed_everything(seed)
    data = TrainingVolumes.from_images(train, cfg.scale_mm, cfg.num_classes)
    reference = data.reference()
    net = nisf.NISFNetwork(cfg).to(device)
    start = time.perf_counter()
    latents = _fit_auto_decoder(net, data, cfg, rng, steps, batch, lr, device, log, time_limit_s)
    trained_s = time.perf_counter() - start

    rank = distributed_context()[0]
    curve: dict[int, float] = {}
    if rank == 0:  # only rank 0 validates and writes
        paper = nisf.NISFSegmenter(cfg, dict(net.named_parameters()), None, "paper", device=device)
        curve = dice_against_steps(paper, val, cfg.num_classes, paper_step_grid)
        cfg.paper_steps = max(curve, key=curve.get)
        log({"stage": "paper procedure", "dice_against_steps": curve, "paper_steps": cfg.paper_steps})

    with torch.no_grad():  # the fast procedure starts from the training latents' mean
        net.latent.copy_(latents.mean(0))
    paper_weights = {k: v.detach().clone() for k, v in net.named_parameters()}
    learner = nisf.fast_learner(net, cfg)

    def validate(lrn) -> dict:
        fast = nisf.NISFSegmenter(cfg, dict(lrn.model.named_parameters()), lrn.step_sizes(), "fast",
                                  device=device)
        return validation_metrics(fast, val, cfg.num_classes)

    best: dict = {}

    def checkpoint(lrn, entry: dict) -> None:
        best.update(entry)
        meta = nisf.prior_metadata(
            cfg, reference, class_names, name=Path(out).stem, description=description, training=training_data,
            validation={"fast": entry, "paper": {"dice_against_steps": curve, "steps": cfg.paper_steps,
                                                 "score": curve[cfg.paper_steps]}},
            training_steps={"auto_decoder": steps, "latent_meta": entry["step"]}, seed=seed, batch=batch,
            outer_lr=lr, training_seconds=trained_s)
        save_prior(out, nisf.prior_tensors(paper_weights, lrn), meta)

    result = train_meta(learner, lambda: data.meta_batch(rng, batch, cfg.points, cfg.points), nisf.outer_loss,
                        latent_steps, meta_lr, device, validate, validate_every=max(latent_steps // 4, 25), log=log,
                        checkpoint=checkpoint, inner_loss_fn=nisf.inner_loss)
    if rank == 0:
        log({"stage": "default steps", "dice_against_steps": choose_default_steps(out, val)})
    return {"best": result.best, "paper": curve, "paper_steps": cfg.paper_steps, "config": asdict(cfg)}


class _AutoDecoder(torch.nn.Module):
    """The network and one latent per training subject, so DDP averages the gradients of both."""

    def __init__(self, net: nisf.NISFNetwork, subjects: int, cfg: nisf.NISFConfig):
        super().__init__()
        self.net = net
        self.cfg = cfg
        self.latents = torch.nn.Parameter(torch.randn(subjects, cfg.latent_size) * nisf.LATENT_INIT_STD)

    def forward(self, index, coords, intensity, labels) -> torch.Tensor:
        return nisf.auto_decoder_loss(self.net, self.latents[index], coords, intensity, labels, self.cfg)


def _fit_auto_decoder(net, data, cfg, rng, steps, batch, lr, device, log, time_limit_s) -> torch.Tensor:
    """Train the weights and one latent per subject together; returns the training latents."""
    decoder = _AutoDecoder(net, len(data.volumes), cfg).to(device)
    net.latent.requires_grad_(False)  # the per-subject latents stand in for it (DDP must see no unused parameter)
    rank, world = distributed_context()
    model = DistributedDataParallel(decoder) if world > 1 else decoder
    opt = torch.optim.Adam([{"params": net.parameters(), "lr": lr},
                            {"params": [decoder.latents], "lr": cfg.latent_lr}])
    budget = TrainingBudget(steps, time_limit_s)
    running, progress = 0.0, 0.0
    for step in range(1, steps + 1):
        budget.set_lr(opt, progress)
        loss = model(*(t.to(device) for t in nisf.sample_batch(data, cfg, rng, batch)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running += float(loss.detach())
        progress = budget.progress(step)
        if rank == 0 and (step % 100 == 0 or progress >= 1):
            log({"stage": "auto-decoder", "step": step, "loss": running / (step % 100 or 100),
                 "seconds": budget.seconds()})
            running = 0.0
        if progress >= 1:
            break
    net.latent.requires_grad_(True)
    return decoder.latents.detach()

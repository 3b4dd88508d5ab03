"""STRAINER (Vyas et al., NeurIPS 2024): an INR initialisation learned from a handful of signals.

K copies of one INR share their encoder (every sine layer) and keep one decoder each (the last
linear layer, as in the reference configuration of 6 layers with 5 shared); all are fitted
jointly, the loss summed over the K signals. A new signal's INR starts from the shared encoder
with a fresh decoder, and every weight is then fitted with Adam. This is not meta-learning:
no inner loop is differentiated, so a prior comes from 5-10 cases in a minute on a CPU.

Priors come out in the formats the engine already runs, so every command and Slicer module
takes them like any other prior:

* shape completion: an :class:`~.shape_completion.OccupancyINR` prior, encoder fitted over the
  K shapes' occupancy (with simulated sparse-slice evidence), no meta-learned steps;
* segmentation (MetaSeg's "fit pixels, get labels"): a :class:`~.metaseg.MetaSegINR` prior whose
  SIREN encoder is fitted over the K images' intensities; its class head is then trained on
  the features that the test-time fit (from this encoder) produces on the K images.

One departure from the reference, measured in ``benchmarks/strainer.py``: for intensities the
fresh decoder is solved by least squares on the new image's voxels before the first step
(``MetaSegConfig.decoder_init``). With a random decoder, Adam at 1e-4 needs hundreds of steps
merely to find the linear read-out of the transferred features; solved, they pay off at once.
Without meta-learning the features drift from image to image as the fit goes on, so the class
head reads short fits best: segmentation priors default to 10 steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from ..meta import expand_params, sub_params
from ..priors import initialisation_tensors, save_prior
from . import metaseg, shape_completion
from .metaseg import MetaSegConfig, MetaSegINR, MetaSegSegmenter
from .segmentation import TrainingVolumes, segmentation_loss
from .shape_completion import OccupancyINR, ShapeConfig, occupancy_loss, sample_task

DECODER = ("out.weight", "out.bias")  # the decoder of a Siren: its final linear layer
MIN_SIGNALS = 2


@dataclass
class StrainerSettings:
    """How the shared encoder is fitted (stored in the prior's metadata)."""

    steps: int = 1000  # joint fitting steps (fewer if time_limit_s runs out first)
    lr: float = 1e-3  # Adam (the reference's 1e-4 needs its 5000 steps; 1e-3 plateaus within 1000)
    points_per_signal: int = 1024
    time_limit_s: float = 75.0
    seed: int = 0


@dataclass
class EncoderFit:
    shared: dict[str, torch.Tensor]  # the fitted shared parameters (encoder and anything not a decoder)
    steps: int
    seconds: float
    loss: list[float] = field(default_factory=list)  # mean per-signal loss, every 50 steps


def fit_shared_encoder(factory: Callable[[], nn.Module], decoder: Sequence[str], signals: int,
                       draw: Callable[[np.random.Generator], tuple[tuple[torch.Tensor, ...], torch.Tensor]],
                       loss_fn: Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor],
                       settings: StrainerSettings, device: torch.device | str = "cpu") -> EncoderFit:
    """Fit ``signals`` copies of ``factory()`` that share all parameters but ``decoder`` (names).

    ``draw(rng)`` returns ``(inputs, labels)`` with a leading signal dimension;
    ``loss_fn(output, labels, params)`` returns one loss per signal.
    """
    if signals < MIN_SIGNALS:
        raise ValueError(f"STRAINER needs at least {MIN_SIGNALS} training cases, got {signals}")
    rng = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)
    model = factory().to(device)
    own = {k: torch.stack([dict(factory().named_parameters())[k].detach() for _ in range(signals)]).to(device)
           for k in decoder}  # an independent fresh decoder per signal
    shared = {k: p.detach().clone() for k, p in model.named_parameters() if k not in decoder}
    trainable = {**shared, **own}
    for p in trainable.values():
        p.requires_grad_(True)
    opt = torch.optim.Adam(trainable.values(), lr=settings.lr)
    # one encoder pass over every signal's points: shared parameters are not batched
    dims = {k: (0 if k in own else None) for k in trainable}

    def forward(params, *inputs):
        return vmap(lambda p, *x: functional_call(model, p, x), in_dims=(dims, *[0] * len(inputs)))(params, *inputs)

    start, losses, running, step = time.perf_counter(), [], 0.0, 0
    while step < settings.steps and time.perf_counter() - start < settings.time_limit_s:
        inputs, labels = draw(rng)
        out = forward({**shared, **own}, *(t.to(device) for t in inputs))
        loss = loss_fn(out, labels.to(device), {**expand_params(shared, signals), **own}).sum()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the joint fit diverged (loss {float(loss)}) at step {step + 1}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        running += float(loss.detach()) / signals
        if step % 50 == 0:
            losses.append(running / 50)
            running = 0.0
    return EncoderFit({k: v.detach() for k, v in shared.items()}, step, time.perf_counter() - start, losses)


def fresh_init(factory: Callable[[], nn.Module], shared: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """A new INR's initialisation: the shared parameters, and a freshly initialised decoder."""
    torch.manual_seed(seed)
    params = {k: p.detach().clone() for k, p in factory().named_parameters()}
    params.update({k: v.detach().cpu().clone() for k, v in shared.items()})
    return params


def zero_step_sizes(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """No meta-learned steps: a STRAINER prior's fit is Adam from the first step."""
    return {k: torch.zeros_like(v) for k, v in params.items()}


def strainer_metadata(settings: StrainerSettings, fit: EncoderFit, cases: list[str]) -> dict:
    return {"method": "strainer", "strainer": {**asdict(settings), "steps_done": fit.steps,
                                               "encoder_seconds": round(fit.seconds, 1), "loss": fit.loss,
                                               "cases": cases}}


# --------------------------------------------------------------------------- shape completion
def shape_config(**overrides) -> ShapeConfig:
    """A shape-completion configuration for STRAINER priors: Adam only, no meta-learned steps."""
    return ShapeConfig(**{"algorithm": "strainer", "inner_steps": 0, "adam_lr": 1e-4, "default_steps": 20,
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


def train_shape_encoder(shapes, cfg: ShapeConfig, settings: StrainerSettings, tasks_per_shape: int = 8,
                        device="cpu") -> tuple[dict[str, torch.Tensor], EncoderFit]:
    """The STRAINER initialisation of an occupancy INR from ``shapes``: (init, encoder fit)."""
    pool = shape_task_pool(shapes, cfg, tasks_per_shape, np.random.default_rng(settings.seed))

    def draw(rng):
        picked = [targets[int(rng.integers(len(targets)))] for targets in pool]
        coords, evidence, labels = (torch.stack(t) for t in zip(*picked))
        return (coords, evidence), labels

    def loss(out, labels, params):
        return occupancy_loss(out, labels, params, cfg.weight_decay)

    factory = lambda: OccupancyINR(cfg)  # noqa: E731
    fit = fit_shared_encoder(factory, [f"siren.{k}" for k in DECODER], len(shapes), draw, loss, settings, device)
    return fresh_init(factory, fit.shared, settings.seed + 1), fit


# --------------------------------------------------------------------------- segmentation (MetaSeg)
def segmentation_config(**overrides) -> MetaSegConfig:
    """A MetaSeg configuration for STRAINER priors: the fresh decoder solved by least squares on the
    image, then Adam on 4096 voxels per step; no meta-learned steps."""
    return MetaSegConfig(**{"algorithm": "strainer", "inner_steps": 0, "adam_lr": 1e-4, "default_steps": 10,
                            "fit_points": 4096, "decoder_init": "least_squares", **overrides})


def random_segmenter(cfg: MetaSegConfig, seed: int = 0, device="cpu") -> MetaSegSegmenter:
    """MetaSeg's network freshly initialised and fitted like a STRAINER prior (the baseline STRAINER
    is measured against)."""
    torch.manual_seed(seed)
    init = {k: v.detach() for k, v in MetaSegINR(cfg).named_parameters()}
    return MetaSegSegmenter(cfg, init, zero_step_sizes({k: v for k, v in init.items() if k.startswith("siren.")}),
                            device=device)


def train_intensity_encoder(data: TrainingVolumes, cfg: MetaSegConfig, settings: StrainerSettings,
                            device="cpu") -> tuple[dict[str, torch.Tensor], EncoderFit]:
    """The STRAINER initialisation of MetaSeg's SIREN from the images' intensities: (init, fit)."""
    signals = len(data.volumes)

    def draw(rng):
        coords, intensity = zip(*(data.sample(rng, k, settings.points_per_signal)[:2] for k in range(signals)))
        return (torch.stack(coords),), torch.stack(intensity)[..., None]

    def loss(out, labels, params):
        return (out - labels).pow(2).mean((-1, -2))

    factory = lambda: MetaSegINR(cfg).siren  # noqa: E731
    fit = fit_shared_encoder(factory, DECODER, signals, draw, loss, settings, device)
    return fresh_init(factory, fit.shared, settings.seed + 1), fit


def train_class_head(segmenter: MetaSegSegmenter, data: TrainingVolumes, steps: int, head_steps: int = 2000,
                     points: int = 8192, seed: int = 0) -> dict[str, torch.Tensor]:
    """Train the class head on the SIREN features that fitting each training image produces.

    Each image is fitted on its intensities exactly as at test time (from the shared encoder,
    ``steps`` steps); features are gathered after the first step, half-way and at the last step,
    so the head also reads a fit stopped early. Returns the head's parameters (``head.*``).
    """
    rng = np.random.default_rng(seed)
    feats, labels = [], []
    for index, volume in enumerate(data.volumes):
        checkpoints = {1, max(steps // 2, 1), steps}
        for st in segmenter.fit(volume, steps, seed=seed + index):
            if st.step in checkpoints:
                pick = torch.from_numpy(rng.integers(0, len(volume.coords), points))
                with torch.no_grad():
                    feats.append(functional_call(segmenter.model.siren.body, sub_params(st.params, "siren.body."),
                                                 (volume.coords[pick].to(segmenter.device),)))
                labels.append(data.labels[index][pick])
    feats, labels = torch.cat(feats), torch.cat(labels).to(segmenter.device)
    torch.manual_seed(seed)
    head = MetaSegINR(segmenter.cfg).head.to(segmenter.device)
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    for _ in range(head_steps):
        batch = torch.randint(len(feats), (4096,))
        loss = segmentation_loss(head(feats[batch]), labels[batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {f"head.{k}": v.detach().cpu() for k, v in head.named_parameters()}


# --------------------------------------------------------------------------- prior files
def build_shape_prior(shapes, out: str | Path, cfg: ShapeConfig | None = None,
                      settings: StrainerSettings | None = None, device="cpu", **metadata) -> dict:
    """Fit a STRAINER shape-completion prior on ``shapes`` and write it to ``out``; returns its metadata."""
    cfg = cfg or shape_config()
    settings = settings or StrainerSettings()
    init, fit = train_shape_encoder(shapes, cfg, settings, device=device)
    meta = shape_completion.prior_metadata(cfg, name=Path(out).stem, **metadata,
                                           **strainer_metadata(settings, fit, [s.name for s in shapes]))
    save_prior(out, initialisation_tensors(init, zero_step_sizes(init)), meta)
    return meta


def build_segmentation_prior(images, out: str | Path, settings: StrainerSettings | None = None,
                             class_names: Sequence[str] | None = None, device="cpu", config: dict | None = None,
                             **metadata) -> dict:
    """Fit a STRAINER MetaSeg prior on labelled ``images`` and write it to ``out``; returns its metadata.

    ``config`` overrides :func:`segmentation_config`; the classes are ``class_names``' (background
    first) or, without names, those the label maps hold.
    """
    settings = settings or StrainerSettings()
    cfg = segmentation_config(**(config or {}))
    data = TrainingVolumes.from_images(images, cfg.scale_mm, len(class_names) if class_names else None)
    cfg.num_classes = data.num_classes
    class_names = list(class_names or ["background"] + [f"class {c}" for c in range(1, cfg.num_classes)])
    siren_init, fit = train_intensity_encoder(data, cfg, settings, device)
    torch.manual_seed(settings.seed + 2)
    init = {k: v.detach() for k, v in MetaSegINR(cfg).named_parameters()}
    init.update({f"siren.{k}": v for k, v in siren_init.items()})
    sizes = zero_step_sizes({k: v for k, v in init.items() if k.startswith("siren.")})
    reference = data.reference()
    segmenter = MetaSegSegmenter(cfg, init, sizes, reference, device)
    start = time.perf_counter()
    init.update(train_class_head(segmenter, data, cfg.default_steps, seed=settings.seed))
    head_seconds = time.perf_counter() - start
    meta = metaseg.prior_metadata(cfg, reference, class_names, name=Path(out).stem, **metadata,
                                  **strainer_metadata(settings, fit, data.names))
    meta["strainer"]["head_seconds"] = round(head_seconds, 1)
    save_prior(out, initialisation_tensors(init, sizes), meta)
    return meta

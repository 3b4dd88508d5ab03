"""STRAINER segmentation priors (MetaSeg's "fit pixels, get labels"): a :class:`~.metaseg.MetaSegINR`
whose SIREN encoder is fitted over the K images' intensities; its class head is then trained on
the features that the test-time fit (from this encoder) produces on the K images (see
:mod:`inr_engine.strainer`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call

from .. import strainer
from ..meta import STRAINER, sub_params
from ..priors import initialisation_tensors, save_prior
from ..settings import TrainingSettings
from ..training import run_training
from . import metaseg
from .metaseg import MetaSegConfig, MetaSegINR, MetaSegSegmenter
from .volume import TrainingVolumes, default_class_names, segmentation_loss

HEAD_BATCH = 4096  # feature vectors per training step of the class head


def segmentation_config(**overrides) -> MetaSegConfig:
    """A MetaSeg configuration for STRAINER priors: the fresh decoder solved by least squares on the
    image, then Adam on 4096 voxels per step; no meta-learned steps."""
    return MetaSegConfig(**{"algorithm": STRAINER, "inner_steps": 0, "adam_lr": 1e-4, "default_steps": 10,
                            "fit_points": 4096, "decoder_init": "least_squares", **overrides})


def random_segmenter(cfg: MetaSegConfig, seed: int = 0, device="cpu") -> MetaSegSegmenter:
    """MetaSeg's network freshly initialised and fitted like a STRAINER prior (the baseline STRAINER
    is measured against)."""
    torch.manual_seed(seed)
    init = {k: v.detach() for k, v in MetaSegINR(cfg).named_parameters()}
    return MetaSegSegmenter(cfg, init, _siren_step_sizes(init), device=device)


def train_intensity_encoder(data: TrainingVolumes, cfg: MetaSegConfig, settings: strainer.StrainerSettings,
                            device="cpu") -> tuple[dict[str, torch.Tensor], strainer.EncoderFit]:
    """The STRAINER initialisation of MetaSeg's SIREN from the images' intensities: (init, fit)."""
    signals = len(data.volumes)

    def draw(rng):
        coords, intensity = zip(*(data.sample(rng, k, settings.points_per_signal)[:2] for k in range(signals)))
        return (torch.stack(coords),), torch.stack(intensity)[..., None]

    def loss(out, labels, params):
        return (out - labels).pow(2).mean((-1, -2))

    factory = lambda: MetaSegINR(cfg).siren  # noqa: E731
    return strainer.initialisation(factory, strainer.DECODER, signals, draw, loss, settings, device)


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

    def step_loss() -> torch.Tensor:
        batch = torch.randint(len(feats), (HEAD_BATCH,))
        return segmentation_loss(head(feats[batch]), labels[batch])

    run_training(head, step_loss, TrainingSettings(head_steps, 1e-3, lr_floor=1.0, log_every=head_steps),
                 stage="class head")
    return {f"head.{k}": v.detach().cpu() for k, v in head.named_parameters()}


def build_segmentation_prior(images, out: str | Path, settings: strainer.StrainerSettings | None = None,
                             class_names: Sequence[str] | None = None, device="cpu", config: dict | None = None,
                             **metadata) -> dict:
    """Fit a STRAINER MetaSeg prior on labelled ``images`` and write it to ``out``; returns its metadata.

    ``config`` overrides :func:`segmentation_config`; the classes are ``class_names``' (background
    first) or, without names, those the label maps hold.
    """
    settings = settings or strainer.StrainerSettings()
    cfg = segmentation_config(**(config or {}))
    data = TrainingVolumes.from_images(images, cfg.scale_mm, len(class_names) if class_names else None)
    cfg.num_classes = data.num_classes
    class_names = list(class_names or default_class_names(cfg.num_classes))
    siren_init, fit = train_intensity_encoder(data, cfg, settings, device)
    torch.manual_seed(settings.seed + 2)
    init = {k: v.detach() for k, v in MetaSegINR(cfg).named_parameters()}
    init.update({f"siren.{k}": v for k, v in siren_init.items()})
    sizes = _siren_step_sizes(init)
    reference = data.reference()
    segmenter = MetaSegSegmenter(cfg, init, sizes, reference, device)
    start = time.perf_counter()
    init.update(train_class_head(segmenter, data, cfg.default_steps, seed=settings.seed))
    head_seconds = time.perf_counter() - start
    meta = metaseg.prior_metadata(cfg, reference, class_names, name=Path(out).stem, **metadata,
                                  **strainer.strainer_metadata(settings, fit, data.names))
    meta["strainer"]["head_seconds"] = round(head_seconds, 1)
    save_prior(out, initialisation_tensors(init, sizes), meta)
    return meta


def _siren_step_sizes(init: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Zero step sizes for the SIREN, which the test-time fit changes (the class head stays)."""
    return strainer.zero_step_sizes({k: v for k, v in init.items() if k.startswith("siren.")})

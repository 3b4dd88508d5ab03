"""STRAINER (Vyas et al., NeurIPS 2024): an INR initialisation learned from a handful of signals.

K copies of one INR share their encoder (every sine layer) and keep one decoder each (the last
linear layer, as in the reference configuration of 6 layers with 5 shared); all are fitted
jointly, the loss summed over the K signals. A new signal's INR starts from the shared encoder
with a fresh decoder, and every weight is then fitted with Adam. This is not meta-learning:
no inner loop is differentiated, so a prior comes from 5-10 cases in a minute on a CPU.

Priors come out in the formats the engine already runs, so every command and Slicer module
takes them like any other prior:

* shape completion (:mod:`inr_engine.shape.strainer`): an occupancy INR prior, encoder fitted
  over the K shapes' occupancy (with simulated sparse-slice evidence), no meta-learned steps;
* segmentation (:mod:`inr_engine.segmentation.strainer`, MetaSeg's "fit pixels, get labels"): a
  MetaSeg prior whose SIREN encoder is fitted over the K images' intensities; its class head is
  then trained on the features that the test-time fit (from this encoder) produces on the K images.

This module fits the shared encoder; the task packages build the priors. One departure from
the reference, measured by ``python -m benchmarks.strainer``: for intensities the
fresh decoder is solved by least squares on the new image's voxels before the first step
(``MetaSegConfig.decoder_init``). With a random decoder, Adam at 1e-4 needs hundreds of steps
merely to find the linear read-out of the transferred features; solved, they pay off at once.
Without meta-learning the features drift from image to image as the fit goes on, so the class
head reads short fits best: segmentation priors default to 10 steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from .meta import expand_params
from .settings import StrainerSettings, TrainingSettings
from .training import run_training

DECODER = ("out.weight", "out.bias")  # the decoder of a Siren: its final linear layer
MIN_SIGNALS = 2


@dataclass
class EncoderFit:
    shared: dict[str, torch.Tensor]  # the fitted shared parameters (encoder and anything not a decoder)
    steps: int
    seconds: float
    loss: list[float] = field(default_factory=list)  # mean per-signal loss, every 50 steps


LOSS_EVERY = 50  # steps between the recorded losses (EncoderFit.loss)


class _SharedEncoderSignals(nn.Module):
    """K copies of one INR that share every parameter but the decoder's: the shared ones once,
    the decoder's stacked along a leading signal dimension."""

    def __init__(self, factory: Callable[[], nn.Module], decoder: Sequence[str], signals: int):
        super().__init__()
        model = factory()
        own = {k: torch.stack([dict(factory().named_parameters())[k].detach() for _ in range(signals)])
               for k in decoder}  # an independent fresh decoder per signal
        shared = {k: p.detach().clone() for k, p in model.named_parameters() if k not in decoder}
        self.template = model.requires_grad_(False)
        self.names = [*shared, *own]
        self.values = nn.ParameterList([nn.Parameter(t) for t in [*shared.values(), *own.values()]])
        self.decoder, self.signals = set(decoder), signals

    def params(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.values))

    def shared(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.params().items() if k not in self.decoder}

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """One encoder pass over every signal's points: shared parameters are not batched."""
        dims = {k: (0 if k in self.decoder else None) for k in self.names}
        return vmap(lambda p, *x: functional_call(self.template, p, x),
                    in_dims=(dims, *[0] * len(inputs)))(self.params(), *inputs)

    def loss_params(self) -> dict[str, torch.Tensor]:
        """Every parameter with a leading signal dimension (the losses' weight penalties are per signal)."""
        own = {k: v for k, v in self.params().items() if k in self.decoder}
        return {**expand_params(self.shared(), self.signals), **own}


def fit_shared_encoder(factory: Callable[[], nn.Module], decoder: Sequence[str], signals: int,
                       draw: Callable[[np.random.Generator], tuple[tuple[torch.Tensor, ...], torch.Tensor]],
                       loss_fn: Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor],
                       settings: StrainerSettings, device: torch.device | str = "cpu") -> EncoderFit:
    """Fit ``signals`` copies of ``factory()`` that share all parameters but ``decoder`` (names).

    ``draw(rng)`` returns ``(inputs, labels)`` with a leading signal dimension;
    ``loss_fn(output, labels, params)`` returns one loss per signal; the step's loss is their sum.
    """
    if signals < MIN_SIGNALS:
        raise ValueError(f"STRAINER needs at least {MIN_SIGNALS} training cases, got {signals}")
    rng = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)
    model = _SharedEncoderSignals(factory, decoder, signals).to(device)

    def step_loss() -> torch.Tensor:
        inputs, labels = draw(rng)
        return loss_fn(model(*(t.to(device) for t in inputs)), labels.to(device), model.loss_params()).sum()

    stage = TrainingSettings(settings.steps, settings.lr, settings.time_limit_s, lr_floor=1.0, log_every=LOSS_EVERY)
    result = run_training(model, step_loss, stage, stage="STRAINER shared encoder")
    losses = [entry["train_loss"] / signals for entry in result.history if entry["step"] % LOSS_EVERY == 0]
    return EncoderFit({k: v.detach() for k, v in model.shared().items()}, result.steps, result.seconds, losses)


def initialisation(factory: Callable[[], nn.Module], decoder: Sequence[str], signals: int,
                   draw: Callable[[np.random.Generator], tuple[tuple[torch.Tensor, ...], torch.Tensor]],
                   loss_fn: Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor], settings: StrainerSettings,
                   device: torch.device | str = "cpu") -> tuple[dict[str, torch.Tensor], EncoderFit]:
    """A new INR's STRAINER initialisation: the encoder :func:`fit_shared_encoder` fits, and a fresh
    decoder; returned with the fit."""
    fit = fit_shared_encoder(factory, decoder, signals, draw, loss_fn, settings, device)
    return fresh_init(factory, fit.shared, settings.seed + 1), fit


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

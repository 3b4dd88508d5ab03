"""The occupancy INR of shape completion: its configuration, network, losses and prior file contents."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..frames import FRAME_CONVENTION
from ..meta import MetaLearner, sub_params
from ..networks import Siren, dense, folded_sine_layers, sine_stack_inference
from ..priors import SHAPE_COMPLETION_TASK, Prior, PriorError, error_summary, initialisation_tensors
from .encoder import ENCODER_LOGIT_SCALE, SliceEncoder
from .slices import EVIDENCE_VERSION, NUM_FEATURES

TASK = SHAPE_COMPLETION_TASK

@dataclass
class ShapeConfig:
    """Everything that defines a shape-completion prior (stored in its metadata)."""

    hidden_features: int = 64
    hidden_layers: int = 3
    omega_0: float = 30.0
    first_omega_0: float = 30.0
    scale_mm: float = 32.0  # network frame: u = (ras - centre) / scale_mm
    margin_mm: float = 6.0  # in-plane margin of the decoded region around the annotations
    context_points: int = 2048
    target_points: int = 4096
    every_min: int = 3  # training: keep every w-th slice, w in [every_min, every_max]
    every_max: int = 10
    mixed_orientation_prob: float = 0.2
    acquisition_axis_prob: float = 0.0  # training, anisotropic grids: share of single-axis tasks sliced along the
    # coarsest-spaced axis (the acquisition plane, where users draw); the rest pick an axis uniformly
    algorithm: str = "metasgd"
    inner_steps: int = 5
    inner_lr: float = 1e-3
    weight_decay: float = 100.0  # lambda of lambda/q * ||theta||^2 (q = number of weights)
    adam_lr: float = 3e-6  # test-time steps beyond the meta-learned ones (larger rates overfit the slices)
    default_steps: int = 5
    encoder_channels: tuple[int, ...] = ()  # U-Net channels of the context encoder; () = none
    encoder_pitch_mm: float = 1.0  # grid pitch the encoder runs at, whatever the input's spacing
    held_out_slices: int = 0  # held-out context from at most this many annotated slices (0: all); each costs
    # a new slice evidence (and an encoder pass) without that slice

    def __post_init__(self):
        self.encoder_channels = tuple(int(c) for c in self.encoder_channels)  # JSON metadata gives a list

    @property
    def evidence_features(self) -> int:
        return NUM_FEATURES + (1 if self.encoder_channels else 0)


class OccupancyINR(nn.Module):
    """SIREN on (normalized coordinates, slice evidence) -> occupancy logit.

    The logit is ``siren(u, e) - alpha * s + beta`` with ``s`` the evidence's interpolated
    signed distance: the SIREN learns the correction of shape-based interpolation. With a
    context encoder, the evidence ends with the encoder's (scaled) logit ``c`` and the logit is
    ``siren(u, e) - alpha * s + gamma * c + beta``, starting from the encoder's answer.
    """

    def __init__(self, cfg: ShapeConfig):
        super().__init__()
        self.in_features = 3 + cfg.evidence_features
        self.siren = Siren(self.in_features, cfg.hidden_features, cfg.hidden_layers, 1, cfg.omega_0,
                           cfg.first_omega_0)
        encoded = bool(cfg.encoder_channels)
        self.alpha = nn.Parameter(torch.tensor(0.0 if encoded else 4.0))
        self.beta = nn.Parameter(torch.tensor(0.0))
        self.gamma = nn.Parameter(torch.tensor(ENCODER_LOGIT_SCALE)) if encoded else None

    def forward(self, coords: torch.Tensor, evidence: torch.Tensor) -> torch.Tensor:
        x = torch.cat([coords, evidence], dim=-1)
        return _with_evidence(self.siren(x).squeeze(-1), evidence, self.alpha, self.beta, self.gamma)


def _with_evidence(siren: torch.Tensor, evidence: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
                   gamma: torch.Tensor | None) -> torch.Tensor:
    """The occupancy logit from the SIREN's output (see :class:`OccupancyINR`)."""
    logit = siren - alpha * evidence[..., NUM_FEATURES - 1] + beta
    return logit if gamma is None else logit + gamma * evidence[..., -1]


def occupancy_inference(model: OccupancyINR, params: dict[str, torch.Tensor]
                        ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``model``'s forward with ``params``, for ``torch.no_grad`` only: folded sine layers evaluated
    in place (see :mod:`~inr_engine.networks`); equal to the module's to float32 rounding."""
    layers = folded_sine_layers(model.siren, params, "siren.")
    out_w, out_b = params["siren.out.weight"], params["siren.out.bias"]
    alpha, beta, gamma = params["alpha"], params["beta"], params.get("gamma")

    def forward(coords: torch.Tensor, evidence: torch.Tensor) -> torch.Tensor:
        h = sine_stack_inference(torch.cat([coords, evidence], dim=-1), layers)
        logit = dense(h, out_w, out_b)[:, 0].sub_(alpha * evidence[:, NUM_FEATURES - 1]).add_(beta)
        return logit if gamma is None else logit.add_(gamma * evidence[:, -1])

    return forward


def occupancy_logits(model: OccupancyINR, params: dict[str, torch.Tensor], coords: torch.Tensor,
                     evidence: torch.Tensor) -> torch.Tensor:
    """``model``'s forward on points (n, ...) with ``params``, differentiable, its sine layers folded
    (see :mod:`~inr_engine.networks`): the test-time fit's forward, 7% faster than the module's."""
    x = torch.cat([coords, evidence], dim=-1)
    for weight, bias in folded_sine_layers(model.siren, params, "siren."):
        x = torch.sin(torch.addmm(bias, x, weight.t()))
    siren = torch.addmm(params["siren.out.bias"], x, params["siren.out.weight"].t())[:, 0]
    return _with_evidence(siren, evidence, params["alpha"], params["beta"], params.get("gamma"))


def bce_dice_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice; one value per task (last dim = points)."""
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(-1)
    prob = torch.sigmoid(logits)
    return bce + 1 - (2 * (prob * labels).sum(-1) + 1) / (prob.sum(-1) + labels.sum(-1) + 1)


def occupancy_loss(logits: torch.Tensor, labels: torch.Tensor, params: dict[str, torch.Tensor],
                   weight_decay: float) -> torch.Tensor:
    """BCE + soft Dice + ``weight_decay`` * mean squared weight; one value per task (last dim = points)."""
    weights = [p for k, p in params.items() if k.endswith("weight")]
    lead = logits.shape[:-1]
    sq = sum(p.pow(2).reshape(*lead, -1).sum(-1) for p in weights)
    count = sum(p[(0,) * len(lead)].numel() if lead else p.numel() for p in weights)
    return bce_dice_loss(logits, labels) + weight_decay * sq / count


def split_tensors(tensors: dict[str, torch.Tensor], model: nn.Module):
    names = [k for k, _ in model.named_parameters()]
    return {k: tensors[f"init.{k}"] for k in names}, {k: tensors[f"step_size.{k}"] for k in names}


ENCODER_PREFIX = "encoder."  # the context encoder's weights in a prior file


def load_encoder(prior: Prior, cfg: ShapeConfig) -> SliceEncoder | None:
    if not cfg.encoder_channels:
        return None
    try:
        encoder = SliceEncoder(cfg.encoder_channels)
    except (ValueError, TypeError, AssertionError) as exc:  # MONAI's UNet refuses e.g. a single level
        raise PriorError(f"{prior.path}: config.encoder_channels {list(cfg.encoder_channels)} does not make a "
                         f"context encoder ({error_summary(exc)}): use a prior trained with this engine") from exc
    try:
        encoder.load_state_dict(sub_params(prior.tensors, ENCODER_PREFIX))
    except RuntimeError as exc:
        raise PriorError(f"{prior.path}: its context encoder does not match its configuration "
                         f"(channels {list(cfg.encoder_channels)}): {error_summary(exc)}") from exc
    return encoder


def prior_tensors(learner: MetaLearner, encoder: SliceEncoder | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a shape prior: the initialisation, the inner step sizes and the context
    encoder's weights (``encoder.*``), if any."""
    tensors = initialisation_tensors(dict(learner.model.named_parameters()), learner.step_sizes())
    if encoder is not None:
        tensors.update({ENCODER_PREFIX + k: v.detach() for k, v in encoder.state_dict().items()})
    return tensors


def prior_metadata(cfg: ShapeConfig, **extra) -> dict:
    return {"task": TASK, "config": asdict(cfg), "frame": {"convention": FRAME_CONVENTION, "scale_mm": cfg.scale_mm},
            "architecture": {"network": "OccupancyINR(SIREN on coords + slice evidence)",
                             "in_features": 3 + cfg.evidence_features, "hidden_features": cfg.hidden_features,
                             "hidden_layers": cfg.hidden_layers, "omega_0": cfg.omega_0,
                             "evidence": EVIDENCE_VERSION, **_encoder_architecture(cfg)}, **extra}


def _encoder_architecture(cfg: ShapeConfig) -> dict:
    if not cfg.encoder_channels:
        return {}
    return {"context_encoder": f"MONAI UNet over the slice evidence, channels {list(cfg.encoder_channels)}, "
                               f"on a {cfg.encoder_pitch_mm} mm grid"}

"""MetaSeg ("Fit pixels, get labels", Vyas et al. 2025): an INR fitted to an image's
intensities whose penultimate features a class head decodes into labels.

A SIREN maps coordinates to intensity; a head (Linear, LeakyReLU, Linear) reads its last sine
layer's features. Both are meta-learned over (image, label map) pairs.

Training and test time are consistent here, unlike the reference code (which adapts on the
label loss during meta-training but on intensities at test time, and trains the head in a
separate second stage). The inner loop is exactly the test-time fit: Meta-SGD steps on the
intensity MSE that change only the SIREN; the outer loss scores the adapted SIREN's intensity
and the frozen head's labels (cross-entropy + soft Dice) after every inner step. So the head
learns to read features that a few intensity-only steps produce, which is what users run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from ..fit import FitStep, fit
from ..frames import FRAME_CONVENTION
from ..intensity import IntensityReference
from ..meta import ALGORITHMS, STRAINER, MetaLearner, sub_params
from ..networks import Siren, SirenFitGradient, dense, folded_sine_layers, sine_stack_inference
from ..priors import (
    SEGMENTATION_TASKS,
    Prior,
    PriorError,
    build_network,
    initialisation_tensors,
    prior_config,
)
from .volume import SegVolume, predict_labels, prepare_volume, segmentation_loss

TASK = SEGMENTATION_TASKS["metaseg"]

DECODER_INITS = ("prior", "least_squares")  # the class head from the prior, or by least squares at test time


@dataclass
class MetaSegConfig:
    """Everything that defines a MetaSeg prior (stored in its metadata)."""

    hidden_features: int = 128
    hidden_layers: int = 4
    num_classes: int = 3
    omega_0: float = 30.0
    scale_mm: float = 32.0  # network frame: u = (ras - volume centre) / scale_mm
    context_points: int = 2048  # voxels per inner (intensity) step in training
    target_points: int = 2048  # voxels scored by the outer loss
    fit_points: int = 16384  # voxels per test-time step (all voxels if the image has fewer)
    algorithm: str = "metasgd"
    inner_steps: int = 3
    inner_lr: float = 1e-4
    intensity_weight: float = 1.0
    adam_lr: float = 1e-4  # test-time steps beyond the meta-learned ones
    default_steps: int = 3
    # "prior": the intensity decoder (the SIREN's output layer) starts as stored; "least_squares":
    # it is solved for the image (ridge regression on the SIREN's features) before the first step,
    # for priors whose decoder is fresh (STRAINER)
    decoder_init: str = "prior"


class MetaSegINR(nn.Module):
    """Coordinates -> (intensity, class logits): ``forward`` returns them concatenated."""

    def __init__(self, cfg: MetaSegConfig):
        super().__init__()
        self.siren = Siren(3, cfg.hidden_features, cfg.hidden_layers, 1, cfg.omega_0, cfg.omega_0)
        self.head = nn.Sequential(nn.Linear(cfg.hidden_features, cfg.hidden_features), nn.LeakyReLU(),
                                  nn.Linear(cfg.hidden_features, cfg.num_classes))

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        features = self.siren.features(coords)
        return torch.cat([self.siren.out(features), self.head(features)], dim=-1)


def adapted_names(model: MetaSegINR) -> list[str]:
    """The SIREN is fitted to the image; the head stays as meta-learned."""
    return [k for k, _ in model.named_parameters() if k.startswith("siren.")]


def intensity_loss(output: torch.Tensor, intensity: torch.Tensor, params=None) -> torch.Tensor:
    """Mean squared intensity error per task; ``intensity`` may carry labels after it (ignored)."""
    return (output[..., 0] - intensity[..., 0]).pow(2).mean(-1)


def make_outer_loss(cfg: MetaSegConfig):
    def loss(output: torch.Tensor, target: torch.Tensor, params=None) -> torch.Tensor:
        return (cfg.intensity_weight * intensity_loss(output, target)
                + segmentation_loss(output[..., 1:], target[..., 1].long()))

    return loss


def new_learner(cfg: MetaSegConfig) -> MetaLearner:
    model = MetaSegINR(cfg)
    return MetaLearner(model, cfg.algorithm, cfg.inner_steps, cfg.inner_lr, adapted=adapted_names(model))


class MetaSegSegmenter:
    """A loaded MetaSeg prior: fit an image's intensities, read its labels."""

    def __init__(self, cfg: MetaSegConfig, init: dict[str, torch.Tensor], step_sizes: dict[str, torch.Tensor],
                 reference: IntensityReference | None = None, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        self.model = MetaSegINR(cfg).to(self.device).requires_grad_(False)
        self.init = {k: v.detach().to(self.device) for k, v in init.items()}
        self.step_sizes = {k: v.detach().to(self.device) for k, v in step_sizes.items()}
        self.reference = reference
        self.prior: Prior | None = None

    @property
    def default_steps(self) -> int:
        return self.cfg.default_steps

    @classmethod
    def from_learner(cls, learner: MetaLearner, cfg: MetaSegConfig, reference=None, device="cpu"):
        tensors = prior_tensors(learner)
        return cls(cfg, *_split(tensors, learner.model), reference, device)

    @classmethod
    def from_prior(cls, prior: Prior, device: torch.device | str = "cpu") -> MetaSegSegmenter:
        """The segmenter a prior describes; :class:`PriorError` (one line) for any prior it cannot build."""
        cfg = prior_config(prior, TASK, MetaSegConfig, "MetaSeg")
        if cfg.algorithm not in (*ALGORITHMS, STRAINER):
            raise PriorError(f"{prior.path}: config.algorithm {cfg.algorithm!r} is none of this engine's "
                             f"({', '.join(ALGORITHMS)}, strainer): use a prior trained with this engine version")
        if cfg.decoder_init not in DECODER_INITS:
            raise PriorError(f"{prior.path}: config.decoder_init {cfg.decoder_init!r} is neither 'prior' nor "
                             "'least_squares': use a prior trained with this engine version")
        model = build_network(prior, MetaSegINR, cfg)
        try:
            init, sizes = _split(prior.tensors, model)
        except KeyError as exc:
            raise PriorError(f"{prior.path} lacks tensor {exc}: not a prior of this architecture") from exc
        _check_shapes(prior, model, init, sizes)
        meta = prior.metadata  # its intensity statistics were checked by prior_config
        reference = IntensityReference.from_metadata(meta["intensity"]) if "intensity" in meta else None
        seg = cls(cfg, init, sizes, reference, device)
        seg.prior = prior
        return seg

    def prepare(self, image: np.ndarray, affine: np.ndarray) -> SegVolume:
        return prepare_volume(image, affine, self.cfg.scale_mm, self.reference)

    def fit(self, volume: SegVolume, steps: int | None = None, seed: int = 0) -> Iterator[FitStep]:
        """Fit the SIREN to the image's intensities (labels are never used); yields after each step."""
        steps = self.cfg.default_steps if steps is None else steps
        coords, intensity = volume.coords.to(self.device), volume.intensity.to(self.device)
        head = {k: v for k, v in self.init.items() if k not in self.step_sizes}
        generator = torch.Generator().manual_seed(seed)
        use_all = len(coords) <= self.cfg.fit_points

        gradient = SirenFitGradient(self.model.siren, "siren.")

        def loss(params):  # the intensity MSE and its gradient, computed by hand (networks.SirenFitGradient)
            pick = (slice(None) if use_all
                    else torch.randint(len(coords), (self.cfg.fit_points,), generator=generator).to(self.device))
            return gradient(params, coords[pick], intensity[pick])

        siren_init = {k: v for k, v in self.init.items() if k in self.step_sizes}
        if self.cfg.decoder_init == "least_squares":
            siren_init.update(self._least_squares_decoder(siren_init, coords, intensity, generator))
        for st in fit(siren_init, loss, steps, self.step_sizes, self.cfg.inner_steps, self.cfg.adam_lr):
            yield FitStep(st.step, st.loss, {**head, **st.params}, st.seconds)

    def _least_squares_decoder(self, siren: dict[str, torch.Tensor], coords: torch.Tensor, intensity: torch.Tensor,
                               generator: torch.Generator, ridge: float = 1e-3) -> dict[str, torch.Tensor]:
        """The output layer that best maps the SIREN's features to the image (ridge regression on
        up to ``fit_points`` voxels): the transferred features are useful from the first step."""
        if len(coords) > self.cfg.fit_points:
            pick = torch.randint(len(coords), (self.cfg.fit_points,), generator=generator).to(self.device)
            coords, intensity = coords[pick], intensity[pick]
        with torch.no_grad():
            features = functional_call(self.model.siren.body, sub_params(siren, "siren.body."), (coords,))
            design = torch.cat([features, torch.ones_like(features[:, :1])], 1).double()
            gram = design.T @ design + ridge * len(design) * torch.eye(design.shape[1], dtype=design.dtype,
                                                                           device=design.device)
            solution = torch.linalg.solve(gram, design.T @ intensity.double()[:, None])[:, 0].float()
        return {"siren.out.weight": solution[None, :-1], "siren.out.bias": solution[-1:]}

    def labels(self, volume: SegVolume, params: dict[str, torch.Tensor] | None = None) -> np.ndarray:
        """The label map on the volume's grid (uint8 class indices)."""
        return predict_labels(self.logit_function(self.init if params is None else params), volume,
                              self.cfg.hidden_features)

    def logit_function(self, params: dict[str, torch.Tensor]):
        """Points (n, 3) -> class logits (n, classes), without autograd: the SIREN's features (omega_0
        folded into its weights, activations in place) read by the class head."""
        with torch.no_grad():
            layers = [(w.contiguous(), b) for w, b in folded_sine_layers(self.model.siren, params, "siren.")]
        first, first_bias, second, second_bias = (params[k] for k in ("head.0.weight", "head.0.bias",
                                                                      "head.2.weight", "head.2.bias"))
        slope = self.model.head[1].negative_slope

        def logits(coords: torch.Tensor) -> torch.Tensor:
            features = sine_stack_inference(coords.to(self.device), layers)
            hidden = torch.nn.functional.leaky_relu_(dense(features, first, first_bias), slope)
            return dense(hidden, second, second_bias)

        return logits


def _check_shapes(prior: Prior, model: nn.Module, init, sizes) -> None:
    for k, p in model.named_parameters():
        for name, tensor in ((f"init.{k}", init[k]), (f"step_size.{k}", sizes.get(k))):
            if tensor is not None and tensor.shape != p.shape:
                raise PriorError(f"{prior.path}: tensor {name} has shape {tuple(tensor.shape)}, expected "
                                 f"{tuple(p.shape)}: prior and engine architectures differ")


def _split(tensors: dict[str, torch.Tensor], model: MetaSegINR):
    init = {k: tensors[f"init.{k}"] for k, _ in model.named_parameters()}
    sizes = {k: tensors[f"step_size.{k}"] for k in adapted_names(model)}
    return init, sizes


def prior_tensors(learner: MetaLearner) -> dict[str, torch.Tensor]:
    """The initialisation of every parameter and the inner step sizes of the adapted ones."""
    return initialisation_tensors(dict(learner.model.named_parameters()), learner.step_sizes())


def prior_metadata(cfg: MetaSegConfig, reference: IntensityReference, class_names, **extra) -> dict:
    return {"task": TASK, "config": asdict(cfg), "frame": {"convention": FRAME_CONVENTION, "scale_mm": cfg.scale_mm,
                                                           "centre": "centre of the volume's grid"},
            "architecture": {"network": "SIREN (intensity) + class head on its last sine features",
                             "hidden_features": cfg.hidden_features, "hidden_layers": cfg.hidden_layers,
                             "omega_0": cfg.omega_0, "num_classes": cfg.num_classes},
            "classes": list(class_names), "intensity": reference.to_metadata(), **extra}

"""NISF (Neural Implicit Segmentation Functions, Stolt-Ansó et al. 2023): an auto-decoder.

A latent code per subject (128 values) is concatenated to the coordinates and passed through
a residual MLP of real Gabor layers, with an intensity head (sigmoid) and a segmentation head.
The prior trains every training subject's latent together with the weights (BCE on intensity,
cross-entropy + soft Dice on labels, L2 on latents and weights). At test time only the latent
is fitted, on the intensities (option: all weights too).

Two test-time procedures share the same network:

* ``paper``: the latent starts at N(0, 1e-4) and Adam fits it for the number of steps that
  maximised the Dice on validation images during training (stored in the prior);
* ``fast``: a second training stage starts from the auto-decoder (latent = the mean training
  latent) and meta-learns the initialisation and per-parameter step sizes (Meta-SGD) of a few
  inner steps on the intensities, scored on labels and intensities after each step. The inner
  loop adapts the latent only, or (default) the latent and every weight, the option the
  paper's code takes at test time. So a few steps reach what the paper procedure needs
  hundreds for.

A prior holds both networks: ``paper.*`` (the auto-decoder as trained) and ``fast.*``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..fit import FitStep, fit
from ..frames import FRAME_CONVENTION
from ..intensity import IntensityReference
from ..meta import MetaLearner
from ..networks import GaborFolded, GaborResMLP, dense, folded_gabor_trunk, gabor_trunk, gabor_trunk_inference
from ..priors import SEGMENTATION_TASKS, Prior, PriorError, build_network, prior_config
from .volume import SegVolume, TrainingVolumes, predict_labels, prepare_volume, segmentation_loss

TASK = SEGMENTATION_TASKS["nisf"]
PROCEDURES = ("fast", "paper")
FAST_ADAPTS = ("latent", "all")
WEIGHTS_FIT_LR = 1e-4  # paper procedure with every weight fitted, as in the NISF code
LATENT_INIT_STD = 1e-4


@dataclass
class NISFConfig:
    """Everything that defines a NISF prior (stored in its metadata)."""

    latent_size: int = 128
    hidden_features: int = 128
    hidden_layers: int = 4
    num_classes: int = 3
    omega_0: float = 10.0
    sigma_0: float = 10.0
    scale_mm: float = 32.0
    points: int = 2048  # voxels per subject per training step
    latent_decay: float = 1e-4  # times mean(latent^2)
    weight_decay: float = 1e-4  # times sum of squared weights
    latent_lr: float = 1e-3  # auto-decoder training: Adam on the training latents
    fit_lr: float = 1e-2  # paper procedure: Adam on the test latent
    paper_steps: int = 300  # paper procedure: chosen on validation during training
    fit_points: int = 4096  # voxels per test-time step: 128 latent values need few
    inner_steps: int = 5  # fast procedure: meta-learned steps
    inner_lr: float = 1e-1  # fast procedure: initial step size of the latent
    weights_inner_lr: float = 1e-4  # ... and of the weights, when they are adapted too
    fast_adapts: str = "all"  # "latent" (the paper's test time) or "all" (its code's: every weight too)
    adam_lr: float = 1e-4  # fast procedure: Adam beyond the meta-learned steps
    default_steps: int = 5


class NISFNetwork(nn.Module):
    """(coordinates, latent) -> (intensity logit, class logits), concatenated.

    ``latent`` is the module's own latent (the fast procedure's meta-learned initialisation)
    unless one is passed explicitly (auto-decoder training, one latent per subject).
    """

    def __init__(self, cfg: NISFConfig):
        super().__init__()
        self.latent = nn.Parameter(torch.zeros(cfg.latent_size))
        self.backbone = GaborResMLP(3 + cfg.latent_size, cfg.hidden_features, cfg.hidden_layers, cfg.omega_0,
                                    cfg.sigma_0)
        self.intensity = nn.Linear(cfg.hidden_features, 1)
        self.segmentation = nn.Linear(cfg.hidden_features, cfg.num_classes)

    def forward(self, coords: torch.Tensor, latent: torch.Tensor | None = None) -> torch.Tensor:
        latent = self.latent if latent is None else latent
        latent = latent.unsqueeze(-2).expand(*coords.shape[:-1], latent.shape[-1])
        features = self.backbone(torch.cat([coords, latent], dim=-1))
        return torch.cat([self.intensity(features), self.segmentation(features)], dim=-1)

    def weight_penalty(self) -> torch.Tensor:
        return sum(p.pow(2).sum() for k, p in self.named_parameters() if k.endswith("weight"))


def reconstruction_loss(output: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
    """BCE between the sigmoid intensity and the [0, 1] image, per leading index."""
    return F.binary_cross_entropy_with_logits(output[..., 0], intensity, reduction="none").mean(-1)


def auto_decoder_loss(net: NISFNetwork, latents: torch.Tensor, coords, intensity, labels, cfg: NISFConfig):
    out = net(coords, latents)
    loss = reconstruction_loss(out, intensity) + segmentation_loss(out[..., 1:], labels)
    return loss.mean() + cfg.latent_decay * latents.pow(2).mean() + cfg.weight_decay * net.weight_penalty()


def sample_batch(data: TrainingVolumes, cfg: NISFConfig, rng: np.random.Generator, subjects: int):
    """``subjects`` random training subjects: (indices, coords, intensity, labels)."""
    index = rng.choice(len(data.volumes), subjects, replace=len(data.volumes) < subjects)
    parts = [data.sample(rng, int(i), cfg.points) for i in index]
    return (torch.from_numpy(index), *(torch.stack(p) for p in zip(*parts)))


# --------------------------------------------------------------------------- fast procedure (stage 2)
def fast_learner(net: NISFNetwork, cfg: NISFConfig) -> MetaLearner:
    """Meta-SGD adapting the latent (``fast_adapts="latent"``) or every parameter (``"all"``).

    The initialisation of every parameter is meta-learned; a latent-only inner loop has the
    latent's step sizes, an all-parameter one a step size per weight as well.
    """
    if cfg.fast_adapts not in FAST_ADAPTS:
        raise ValueError(f"fast_adapts must be one of {FAST_ADAPTS}, not {cfg.fast_adapts!r}")
    adapted = None if cfg.fast_adapts == "all" else ["latent"]
    learner = MetaLearner(net, "metasgd", cfg.inner_steps, cfg.weights_inner_lr, adapted=adapted)
    with torch.no_grad():
        learner.step_sizes()["latent"].fill_(cfg.inner_lr)
    return learner


def inner_loss(output: torch.Tensor, target: torch.Tensor, params=None) -> torch.Tensor:
    return reconstruction_loss(output, target[..., 0])


def outer_loss(output: torch.Tensor, target: torch.Tensor, params=None) -> torch.Tensor:
    return reconstruction_loss(output, target[..., 0]) + segmentation_loss(output[..., 1:], target[..., 1].long())


class NISFSegmenter:
    """A loaded NISF prior: fit a latent (or all weights) to an image's intensities, read its labels.

    ``paper``: Adam on the latent from N(0, 1e-4) (on every weight with ``fit_weights``, at the
    paper code's 1e-4). ``fast``: the meta-learned start and step sizes for the parameters the
    prior adapts (``cfg.fast_adapts``), then Adam; ``fit_weights`` adds the remaining weights.
    """

    def __init__(self, cfg: NISFConfig, weights: dict[str, torch.Tensor],
                 step_sizes: dict[str, torch.Tensor] | None, procedure: str = "fast", fit_weights: bool = False,
                 reference: IntensityReference | None = None, device: torch.device | str = "cpu"):
        if procedure not in PROCEDURES:
            raise ValueError(f"unknown NISF procedure {procedure!r}; choose from {PROCEDURES}")
        if procedure == "fast" and not step_sizes:
            raise PriorError("this NISF prior has no meta-learned step sizes; use procedure 'paper'")
        self.cfg = cfg
        self.device = torch.device(device)
        self.procedure = procedure
        self.fit_weights = fit_weights
        self.model = NISFNetwork(cfg).to(self.device).requires_grad_(False)
        self.weights = {k: v.detach().to(self.device) for k, v in weights.items()}
        self.step_sizes = {k: v.detach().to(self.device) for k, v in (step_sizes or {}).items()}
        self.reference = reference
        self.prior: Prior | None = None

    @property
    def default_steps(self) -> int:
        return self.cfg.default_steps if self.procedure == "fast" else self.cfg.paper_steps

    @classmethod
    def from_prior(cls, prior: Prior, procedure: str = "fast", fit_weights: bool = False,
                   device: torch.device | str = "cpu") -> NISFSegmenter:
        """The segmenter a prior describes, for ``procedure``; :class:`PriorError` (one line) for any
        prior it cannot build."""
        if procedure not in PROCEDURES:
            raise ValueError(f"unknown NISF procedure {procedure!r}; choose from {PROCEDURES}")
        cfg = prior_config(prior, TASK, NISFConfig, "NISF")
        if cfg.fast_adapts not in FAST_ADAPTS:
            raise PriorError(f"{prior.path}: config.fast_adapts {cfg.fast_adapts!r} is none of {FAST_ADAPTS}: "
                             "use a prior trained with this engine version")
        network = build_network(prior, NISFNetwork, cfg)
        weights, sizes = {}, {}
        for k, p in network.named_parameters():
            for name in (f"{procedure}.{k}", f"step_size.{k}"):
                if name in prior.tensors and prior.tensors[name].shape != p.shape:
                    raise PriorError(f"{prior.path}: tensor {name} has shape {tuple(prior.tensors[name].shape)}, "
                                     f"expected {tuple(p.shape)}: prior and engine architectures differ")
            if f"{procedure}.{k}" not in prior.tensors:
                raise PriorError(f"{prior.path}: tensor {procedure}.{k} is missing: not a NISF prior of this engine")
            weights[k] = prior.tensors[f"{procedure}.{k}"]
            if f"step_size.{k}" in prior.tensors:
                sizes[k] = prior.tensors[f"step_size.{k}"]
        if procedure == "fast" and not sizes:
            raise PriorError(f"{prior.path} has no meta-learned step sizes (step_size.*) for the fast procedure; "
                             "use procedure 'paper'")
        meta = prior.metadata  # its intensity statistics were checked by prior_config
        reference = IntensityReference.from_metadata(meta["intensity"]) if "intensity" in meta else None
        seg = cls(cfg, weights, sizes, procedure, fit_weights, reference, device)
        seg.prior = prior
        return seg

    def prepare(self, image: np.ndarray, affine: np.ndarray) -> SegVolume:
        return prepare_volume(image, affine, self.cfg.scale_mm, self.reference)

    def initial_latent(self, seed: int = 0) -> torch.Tensor:
        if self.procedure == "fast":
            return self.weights["latent"]
        generator = torch.Generator().manual_seed(seed)
        return (torch.randn(self.cfg.latent_size, generator=generator) * LATENT_INIT_STD).to(self.device)

    def fit(self, volume: SegVolume, steps: int | None = None, seed: int = 0) -> Iterator[FitStep]:
        """Fit to the image's intensities (the labels are never used); yields after each step."""
        steps = self.default_steps if steps is None else steps
        coords, intensity = volume.coords.to(self.device), volume.intensity.to(self.device)
        generator = torch.Generator().manual_seed(seed)
        use_all = len(coords) <= self.cfg.fit_points
        start = {**self.weights, "latent": self.initial_latent(seed)}
        adapted = set(self.step_sizes) if self.procedure == "fast" else {"latent"}
        # the segmentation head gets no gradient from the intensities: it is never fitted
        fitted = {k: v for k, v in start.items()
                  if (k in adapted or self.fit_weights) and not k.startswith("segmentation.")}
        fixed = {k: v for k, v in start.items() if k not in fitted}

        def loss(params):
            pick = (slice(None) if use_all
                    else torch.randint(len(coords), (self.cfg.fit_points,), generator=generator).to(self.device))
            if self.procedure == "fast":  # the folded network (intensity_logit): the same function, faster
                return F.binary_cross_entropy_with_logits(self.intensity_logit(coords[pick], {**fixed, **params}),
                                                          intensity[pick])
            # the paper's hundreds of Adam steps keep the module's own arithmetic, so that float32
            # rounding differences cannot grow over them
            return reconstruction_loss(functional_call(self.model, {**fixed, **params}, (coords[pick],)),
                                       intensity[pick])

        if self.procedure == "fast":
            sizes, meta_steps, lr = self.step_sizes, self.cfg.inner_steps, self.cfg.adam_lr
        else:
            sizes, meta_steps, lr = None, 0, WEIGHTS_FIT_LR if self.fit_weights else self.cfg.fit_lr
        for st in fit(fitted, loss, steps, sizes, meta_steps, lr):
            yield FitStep(st.step, st.loss, {**fixed, **st.params}, st.seconds)

    def labels(self, volume: SegVolume, params: dict[str, torch.Tensor] | None = None) -> np.ndarray:
        params = {**self.weights, "latent": self.initial_latent()} if params is None else params
        return predict_labels(self.logit_function(params), volume, self.cfg.hidden_features)

    def folded_trunk(self, params: dict[str, torch.Tensor]) -> list[GaborFolded]:
        """The Gabor trunk's layers with omega_0 and sigma_0 folded in (``networks.folded_gabor_trunk``)
        and the latent folded into the input layer's biases: it is the same at every point, so its
        part of the input layer is a constant. The input layer then reads the 3 coordinates only."""
        layers = folded_gabor_trunk(self.model.backbone, params, "backbone.")
        freq_w, freq_b, scale_w, scale_b = layers[0]
        latent = params["latent"]
        layers[0] = (freq_w[:, :3], freq_b + freq_w[:, 3:] @ latent, scale_w[:, :3], scale_b + scale_w[:, 3:] @ latent)
        return layers

    def intensity_logit(self, coords: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The network's intensity logit at ``coords`` (n, 3) (differentiable): ``model``, evaluated
        through :meth:`folded_trunk`, the same function."""
        features = gabor_trunk(coords, self.folded_trunk(params))
        return torch.addmm(params["intensity.bias"], features, params["intensity.weight"].t())[:, 0]

    def logit_function(self, params: dict[str, torch.Tensor]):
        """Points (n, 3) -> class logits (n, classes), without autograd (:meth:`folded_trunk`, in place)."""
        with torch.no_grad():
            layers = [tuple(t.contiguous() for t in layer) for layer in self.folded_trunk(params)]
        weight, bias = params["segmentation.weight"], params["segmentation.bias"]

        def logits(coords: torch.Tensor) -> torch.Tensor:
            return dense(gabor_trunk_inference(coords.to(self.device), layers), weight, bias)

        return logits


def prior_tensors(paper: dict[str, torch.Tensor], learner: MetaLearner) -> dict[str, torch.Tensor]:
    """Both networks (``paper.*``: the auto-decoder; ``fast.*``) and the fast procedure's step sizes."""
    params = dict(learner.model.named_parameters())
    out = {f"paper.{k}": p.detach() for k, p in paper.items()}
    out.update({f"fast.{k}": p.detach() for k, p in params.items()})
    out.update({f"step_size.{k}": s.detach().expand_as(params[k]).clone() for k, s in learner.step_sizes().items()})
    return out


def prior_metadata(cfg: NISFConfig, reference: IntensityReference, class_names, **extra) -> dict:
    return {"task": TASK, "config": asdict(cfg), "frame": {"convention": FRAME_CONVENTION, "scale_mm": cfg.scale_mm,
                                                           "centre": "centre of the volume's grid"},
            "architecture": {"network": "auto-decoder: latent + residual real-Gabor MLP, intensity and "
                                        "segmentation heads", "latent_size": cfg.latent_size,
                             "hidden_features": cfg.hidden_features, "hidden_layers": cfg.hidden_layers,
                             "omega_0": cfg.omega_0, "sigma_0": cfg.sigma_0, "num_classes": cfg.num_classes},
            "classes": list(class_names), "intensity": reference.to_metadata(), **extra}

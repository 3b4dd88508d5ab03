"""A loaded shape-completion prior, ready to fit and decode cases."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from ..decode import decode_box, decode_chunk, labels_on_grid
from ..fit import FitStep, fit
from ..meta import ALGORITHMS, STRAINER, MetaLearner
from ..priors import Prior, PriorError, build_network, prior_config
from .case import Case, prepare_case
from .encoder import SliceEncoder
from .model import (
    TASK,
    OccupancyINR,
    ShapeConfig,
    load_encoder,
    occupancy_inference,
    occupancy_logits,
    occupancy_loss,
    prior_tensors,
    split_tensors,
)
from .slices import EVIDENCE_VERSION


class ShapeCompleter:
    """A loaded shape-completion prior, ready to fit and decode cases."""

    def __init__(self, cfg: ShapeConfig, init: dict[str, torch.Tensor], step_sizes: dict[str, torch.Tensor],
                 device: torch.device | str = "cpu", encoder: SliceEncoder | None = None):
        self.cfg = cfg
        self.prior: Prior | None = None  # set by from_prior
        self.device = torch.device(device)
        self.model = OccupancyINR(cfg).to(self.device).requires_grad_(False)
        self.init = {k: v.detach().to(self.device) for k, v in init.items()}
        self.step_sizes = {k: v.detach().to(self.device) for k, v in step_sizes.items()}
        if bool(cfg.encoder_channels) != (encoder is not None):
            raise ValueError("a context encoder is needed exactly when the configuration names its channels")
        self.encoder = None if encoder is None else encoder.to(self.device).eval().requires_grad_(False)

    @classmethod
    def from_learner(cls, learner: MetaLearner, cfg: ShapeConfig, device="cpu",
                     encoder: SliceEncoder | None = None) -> ShapeCompleter:
        tensors = prior_tensors(learner)
        return cls(cfg, *split_tensors(tensors, learner.model), device=device, encoder=encoder)

    @classmethod
    def from_prior(cls, prior: Prior, device: torch.device | str = "cpu") -> ShapeCompleter:
        """The completer a prior describes; :class:`PriorError` (one line) for any prior it cannot build."""
        cfg = prior_config(prior, TASK, ShapeConfig, "shape completion")
        meta = prior.metadata
        evidence = meta.get("architecture", {}).get("evidence")
        if evidence != EVIDENCE_VERSION:
            raise PriorError(f"{prior.path} was trained on {evidence or 'an earlier slice evidence'!r}; this engine "
                             f"computes {EVIDENCE_VERSION!r}: use a prior trained with this engine version")
        if cfg.algorithm not in (*ALGORITHMS, STRAINER):
            raise PriorError(f"{prior.path}: config.algorithm {cfg.algorithm!r} is none of this engine's "
                             f"({', '.join(ALGORITHMS)}, strainer): use a prior trained with this engine version")
        model = build_network(prior, OccupancyINR, cfg)
        try:
            init, sizes = split_tensors(prior.tensors, model)
        except KeyError as exc:
            raise PriorError(f"{prior.path} lacks tensor {exc}: not a prior of this architecture") from exc
        for k, p in model.named_parameters():
            for name, tensor in ((f"init.{k}", init[k]), (f"step_size.{k}", sizes[k])):
                if tensor.shape != p.shape:
                    raise PriorError(f"{prior.path}: tensor {name} has shape {tuple(tensor.shape)}, "
                                     f"expected {tuple(p.shape)}: prior and engine architectures differ")
        completer = cls(cfg, init, sizes, device, load_encoder(prior, cfg))
        completer.prior = prior
        return completer

    def prepare(self, sparse: np.ndarray, affine: np.ndarray, slices: dict[int, list[int]] | None = None,
                check: Callable[[], None] | None = None, within: tuple[slice, ...] | None = None) -> Case:
        return prepare_case(sparse, affine, self.cfg, slices, encoder=self.encoder, check=check, within=within)

    def fit(self, case: Case, steps: int | None = None) -> Iterator[FitStep]:
        """Fit to the annotated slices; yields after each step (``steps=0`` yields nothing)."""
        steps = self.cfg.default_steps if steps is None else steps
        coords, ev, labels = (t.to(self.device) for t in case.context)

        def loss(params):
            logits = occupancy_logits(self.model, params, coords, ev)
            return occupancy_loss(logits, labels, params, self.cfg.weight_decay)

        yield from fit(self.init, loss, steps, self.step_sizes, self.cfg.inner_steps, self.cfg.adam_lr)

    def point_function(self, case: Case, params: dict[str, torch.Tensor] | None = None):
        with torch.no_grad():
            forward = occupancy_inference(self.model, self.init if params is None else params)

        def logits(ijk: np.ndarray) -> np.ndarray:
            coords, ev = (t.to(self.device) for t in case.inputs(ijk))
            with torch.no_grad():
                return forward(coords, ev).float().cpu().numpy()

        return logits

    def decode(self, case: Case, params=None, step: float = 1.0, adaptive: bool = True):
        """Logits over the case's region, sampled every ``step`` voxels; returns (logits, lo)."""
        chunk = decode_chunk(self.cfg.hidden_features)
        lo = case.lo.astype(np.float64)
        hi = case.hi.astype(np.float64) - 1 + step
        return decode_box(self.point_function(case, params), lo, hi, step, chunk, adaptive,
                          knots=case.slices), lo

    def labelmap(self, case: Case, params=None, adaptive: bool = True) -> np.ndarray:
        """Binary completion on the input's full grid (outside the region: background)."""
        logits, lo = self.decode(case, params, 1.0, adaptive)
        return labels_on_grid(case.grid_shape, lo, logits)

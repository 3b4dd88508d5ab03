"""Sparse-slice shape completion with a meta-learned occupancy INR.

After De Paolis et al. (ShapeMI 2024): a SIREN maps a point to the probability that it lies
inside the shape; its initialisation is meta-learned over training shapes (context: voxels of
a few slices; target: the whole shape) so that a few gradient steps on the annotated slices
of a new case complete it. What this implementation adds, because a coordinate-only SIREN
only ties with morphological interpolation on small structures (see README, benchmark):

* the network also sees what the annotated slices say about each point
  (:class:`~inr_engine.methods.slices.SliceEvidence`: shape-based interpolation along the
  registered correspondence between neighbouring slices, distances to the slices), and its
  logit is a learned correction of the interpolated signed distance (``alpha`` and ``beta``);
* optionally, non-local context: a 3D U-Net over the evidence of the whole region
  (:mod:`~inr_engine.methods.slice_encoder`), trained before the meta-learning and frozen in
  it, whose logit the INR also sees and corrects;
* Meta-SGD (learned per-parameter inner step sizes) instead of a fixed inner rate;
* training tasks with random spacing, offset and orientation (single and mixed axes).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn
from torch.func import functional_call

from ..decode import chunk_size, decode_box, labels_on_grid
from ..fit import FitStep, fit
from ..frames import FRAME_CONVENTION, NormalizedFrame, ijk_to_ras, spacing
from ..meta import ALGORITHMS, MetaLearner, sub_params
from ..networks import Siren
from ..priors import (
    SHAPE_COMPLETION_TASK,
    Prior,
    PriorError,
    build_network,
    error_summary,
    initialisation_tensors,
    prior_config,
)
from ..runtime import thread_map
from .slice_encoder import ENCODER_LOGIT_SCALE, EncodedEvidence, SliceEncoder
from .slices import EVIDENCE_VERSION, NUM_FEATURES, SliceError, SliceEvidence, find_annotated_slices, sparsify

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
        logit = self.siren(x).squeeze(-1) - self.alpha * evidence[..., NUM_FEATURES - 1] + self.beta
        return logit if self.gamma is None else logit + self.gamma * evidence[..., -1]


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


# --------------------------------------------------------------------------- a case to complete
@dataclass
class Case:
    """A sparse input prepared for fitting: evidence, decoded region, frame, context points."""

    evidence: SliceEvidence | EncodedEvidence
    affine: np.ndarray
    frame: NormalizedFrame
    lo: np.ndarray  # decoded region [lo, hi) in voxel indices
    hi: np.ndarray
    context: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # coords, evidence, labels (see prepare_case)
    timings: dict[str, float] = field(default_factory=dict)


def region_of_interest(sparse: np.ndarray, evidence: SliceEvidence, margin_mm: float):
    """Box ``[lo, hi)`` in voxel indices where the shape can be: the annotated foreground's
    box, grown by the largest slice gap along annotated axes and by ``margin_mm`` everywhere."""
    fg = np.argwhere(sparse)
    lo = fg.min(0).astype(np.float64)
    hi = fg.max(0).astype(np.float64) + 1
    grow = margin_mm / evidence.spacing
    for a, idx in evidence.slices.items():
        gaps = np.diff(idx)
        grow[a] = max(grow[a], float(gaps.max()) if len(gaps) else margin_mm / evidence.spacing[a])
    lo = np.maximum(np.floor(lo - grow), 0).astype(int)
    hi = np.minimum(np.ceil(hi + grow), np.asarray(sparse.shape)).astype(int)
    return lo, hi


def _box_voxels(lo, hi) -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1).reshape(-1, 3)


@dataclass
class _SliceVoxels:
    """Every annotated voxel inside the decoded box, with the slice it lies on."""

    ijk: np.ndarray  # (n, 3)
    labels: np.ndarray  # (n,) float32
    distance: np.ndarray  # (n,) |signed distance| to the slice's contour, mm
    axis: np.ndarray  # (n,) axis of the slice
    slice_number: np.ndarray  # (n,) index of the slice among that axis' annotated slices


def _slice_voxels(sparse: np.ndarray, evidence: SliceEvidence, lo, hi) -> _SliceVoxels:
    ijks, labels, dists, axes, numbers = [], [], [], [], []
    for a, ax in evidence.axes.items():
        plane = [b for b in range(3) if b != a]
        uv = np.stack(np.meshgrid(np.arange(lo[plane[0]], hi[plane[0]]),
                                  np.arange(lo[plane[1]], hi[plane[1]]), indexing="ij"), -1).reshape(-1, 2)
        for n, pos in enumerate(ax.positions.astype(int)):
            if not lo[a] <= pos < hi[a]:
                continue
            ijk = np.empty((len(uv), 3), int)
            ijk[:, a] = pos
            ijk[:, plane] = uv
            ijks.append(ijk)
            labels.append(sparse[tuple(ijk.T)])
            dists.append(np.abs(ax.sdf[n][tuple(uv.T)]))
            axes.append(np.full(len(uv), a))
            numbers.append(np.full(len(uv), n))
    return _SliceVoxels(np.concatenate(ijks), np.concatenate(labels).astype(np.float32), np.concatenate(dists),
                        np.concatenate(axes), np.concatenate(numbers))


def _held_out_features(evidence: SliceEvidence | EncodedEvidence, voxels: _SliceVoxels,
                       pick: np.ndarray) -> np.ndarray:
    """Features of the picked annotated voxels, each described by the evidence of the *other*
    slices (leave one slice out): on an annotated slice the full evidence already states the
    label, so fitting to it alone would teach nothing, whereas predicting each slice from its
    neighbours is the case's own interpolation problem and gives the test-time fit its signal."""
    out = np.empty((len(pick), evidence.num_features), np.float32)
    groups = voxels.axis[pick] * 10**6 + voxels.slice_number[pick]

    def fill_without(group: int) -> None:
        a, n = divmod(int(group), 10**6)
        rows = groups == group
        out[rows] = evidence.without(a, n).features(voxels.ijk[pick[rows]])

    thread_map(fill_without, np.unique(groups))  # each group writes its own rows
    return out


def _held_out_candidates(voxels: _SliceVoxels, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the annotated voxels on at most ``limit`` randomly chosen slices (0: all slices)."""
    groups = voxels.axis * 10**6 + voxels.slice_number
    chosen = np.unique(groups)
    if not limit or len(chosen) <= limit:
        return np.arange(len(groups))
    return np.flatnonzero(np.isin(groups, rng.choice(chosen, limit, replace=False)))


def _balanced_sample(rng: np.random.Generator, count: int, n: int, near: np.ndarray) -> np.ndarray:
    """Half uniform, half from the ``near`` (boundary) subset; with replacement if needed."""
    n_near = n // 2 if near.any() else 0
    uniform = rng.choice(count, n - n_near, replace=count < n - n_near)
    if not n_near:
        return uniform
    near_idx = np.flatnonzero(near)
    return np.concatenate([uniform, near_idx[rng.choice(len(near_idx), n_near, replace=len(near_idx) < n_near)]])


def _check_given_slices(sparse: np.ndarray, slices: dict[int, list[int]]) -> dict[int, list[int]]:
    """Slices the user named: in range, and holding some of the annotation."""
    for axis, idx in slices.items():
        bad = [i for i in idx if not 0 <= i < sparse.shape[axis]]
        if bad:
            raise SliceError(f"slice index {bad[0]} is out of range along axis {axis} (0 to {sparse.shape[axis] - 1})")
    if not any(np.moveaxis(sparse, axis, 0)[list(idx)].any() for axis, idx in slices.items() if idx):
        raise SliceError("the slices given hold no annotation: name the slices that were annotated")
    return slices


def prepare_case(sparse: np.ndarray, affine: np.ndarray, cfg: ShapeConfig, slices: dict[int, list[int]] | None = None,
                 rng: np.random.Generator | None = None, encoder: SliceEncoder | None = None) -> Case:
    """Find the annotated slices (unless given), build the evidence (with ``encoder``'s context
    when the prior has one), region, frame and context.

    The context the fit sees is half annotated voxels with the full evidence (the annotations
    must be honoured) and half with each slice held out (see :func:`_held_out_features`).
    """
    t0 = time.perf_counter()
    sparse = np.asarray(sparse) > 0
    if sparse.ndim != 3:
        raise SliceError(f"expected a 3D label map, got {sparse.ndim}D")
    if not sparse.any():
        raise SliceError("the input has no foreground: annotate at least two slices of the structure")
    slices = find_annotated_slices(sparse) if slices is None else _check_given_slices(sparse, slices)
    if sum(len(v) for v in slices.values()) < 2:
        raise SliceError("only one annotated slice: annotate at least two slices (or slices along two axes) "
                         "so that the shape's extent can be inferred")
    evidence = SliceEvidence(sparse, slices, spacing(affine))
    lo, hi = region_of_interest(sparse, evidence, cfg.margin_mm)
    if encoder is not None:
        evidence = EncodedEvidence(evidence, encoder, lo, hi, cfg.encoder_pitch_mm)
    fg = np.argwhere(sparse)
    centre = ijk_to_ras((fg.min(0) + fg.max(0)) / 2.0, affine)
    frame = NormalizedFrame(tuple(float(c) for c in centre), cfg.scale_mm)
    rng = np.random.default_rng(0) if rng is None else rng
    band = 2.0 * float(evidence.spacing.max())
    voxels = _slice_voxels(sparse, evidence, lo, hi)
    near = voxels.distance <= band
    exact = _balanced_sample(rng, len(near), cfg.context_points // 2, near)
    eligible = _held_out_candidates(voxels, cfg.held_out_slices, rng)
    held = eligible[_balanced_sample(rng, len(eligible), cfg.context_points - cfg.context_points // 2, near[eligible])]
    pick = np.concatenate([exact, held])
    feats = np.concatenate([evidence.features(voxels.ijk[exact]), _held_out_features(evidence, voxels, held)])
    context = (torch.from_numpy(frame.ijk_to_network(voxels.ijk[pick], affine)), torch.from_numpy(feats),
               torch.from_numpy(voxels.labels[pick]))
    return Case(evidence, np.asarray(affine, np.float64), frame, lo, hi, context,
                {"prepare": time.perf_counter() - t0})


def _inputs(evidence: SliceEvidence | EncodedEvidence, frame: NormalizedFrame, affine, ijk: np.ndarray):
    coords = torch.from_numpy(frame.ijk_to_network(ijk, affine))
    return coords, torch.from_numpy(evidence.features(ijk))


# --------------------------------------------------------------------------- training tasks
ANISOTROPIC = 1.2  # a grid whose coarsest spacing is this much above its finest has an acquisition axis


def _single_axis(spc: np.ndarray, acquisition_prob: float, rng: np.random.Generator) -> int:
    """Axis of a single-orientation training task: the acquisition (coarsest-spaced) axis with
    ``acquisition_prob`` on anisotropic grids, else uniform."""
    if acquisition_prob > 0 and spc.max() > ANISOTROPIC * spc.min() and rng.random() < acquisition_prob:
        return int(np.argmax(spc))
    return int(rng.integers(3))


def simulate_sparse(mask: np.ndarray, affine: np.ndarray, cfg: ShapeConfig, rng: np.random.Generator):
    """Simulated annotation of a full mask: every w-th slice (random w, offset and axes, as the
    config's training ranges say); returns ``(sparse, slices)``, or None when too few slices."""
    mask = np.asarray(mask) > 0
    spc = spacing(affine)
    axes = [_single_axis(spc, cfg.acquisition_axis_prob, rng)]
    if rng.random() < cfg.mixed_orientation_prob:
        axes = sorted(rng.choice(3, int(rng.integers(2, 4)), replace=False).tolist())
    sparse = np.zeros_like(mask)
    slices = {}
    for a in axes:
        # spacing-aware w: the same physical gap range on anisotropic grids
        w_mm = rng.uniform(cfg.every_min, cfg.every_max + 1) * float(spc.min())
        every = max(2, int(round(w_mm / spc[a])))
        part, kept = sparsify(mask, a, every, offset=int(rng.integers(every)))
        sparse |= part
        slices[a] = kept
    if not sparse.any() or sum(len(v) for v in slices.values()) < 2:
        return None
    return sparse, slices


def sample_task(mask: np.ndarray, affine: np.ndarray, cfg: ShapeConfig, rng: np.random.Generator,
                encoder: SliceEncoder | None = None):
    """One meta-training task from a full mask: simulated sparse slices -> (context, target)."""
    simulated = simulate_sparse(mask, affine, cfg, rng)
    if simulated is None:
        return None
    mask = np.asarray(mask) > 0
    sparse, slices = simulated
    case = prepare_case(sparse, affine, cfg, slices, rng, encoder)
    voxels = _box_voxels(case.lo, case.hi)
    labels = mask[tuple(voxels.T)].astype(np.float32)
    band = ndimage.binary_dilation(mask, iterations=2) & ~ndimage.binary_erosion(mask, iterations=2)
    pick = _balanced_sample(rng, len(voxels), cfg.target_points, band[tuple(voxels.T)])
    target = _inputs(case.evidence, case.frame, affine, voxels[pick]) + (torch.from_numpy(labels[pick]),)
    return case.context, target


def collate(tasks) -> tuple:
    """Stack tasks into (context, target) batches of ``((coords, evidence), labels)``."""

    def stack(part):
        coords, ev, labels = (torch.stack(t) for t in zip(*part))
        return (coords, ev), labels

    return stack([t[0] for t in tasks]), stack([t[1] for t in tasks])


# --------------------------------------------------------------------------- the prior at test time
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
        return cls(cfg, *_split(tensors, learner.model), device=device, encoder=encoder)

    @classmethod
    def from_prior(cls, prior: Prior, device: torch.device | str = "cpu") -> ShapeCompleter:
        """The completer a prior describes; :class:`PriorError` (one line) for any prior it cannot build."""
        cfg = prior_config(prior, TASK, ShapeConfig, "shape completion")
        meta = prior.metadata
        evidence = meta.get("architecture", {}).get("evidence")
        if evidence != EVIDENCE_VERSION:
            raise PriorError(f"{prior.path} was trained on {evidence or 'an earlier slice evidence'!r}; this engine "
                             f"computes {EVIDENCE_VERSION!r}: use a prior trained with this engine version")
        if cfg.algorithm not in (*ALGORITHMS, "strainer"):
            raise PriorError(f"{prior.path}: config.algorithm {cfg.algorithm!r} is none of this engine's "
                             f"({', '.join(ALGORITHMS)}, strainer): use a prior trained with this engine version")
        model = build_network(prior, OccupancyINR, cfg)
        try:
            init, sizes = _split(prior.tensors, model)
        except KeyError as exc:
            raise PriorError(f"{prior.path} lacks tensor {exc}: not a prior of this architecture") from exc
        for k, p in model.named_parameters():
            for name, tensor in ((f"init.{k}", init[k]), (f"step_size.{k}", sizes[k])):
                if tensor.shape != p.shape:
                    raise PriorError(f"{prior.path}: tensor {name} has shape {tuple(tensor.shape)}, "
                                     f"expected {tuple(p.shape)}: prior and engine architectures differ")
        completer = cls(cfg, init, sizes, device, _load_encoder(prior, cfg))
        completer.prior = prior
        return completer

    def prepare(self, sparse: np.ndarray, affine: np.ndarray, slices: dict[int, list[int]] | None = None) -> Case:
        return prepare_case(sparse, affine, self.cfg, slices, encoder=self.encoder)

    def fit(self, case: Case, steps: int | None = None) -> Iterator[FitStep]:
        """Fit to the annotated slices; yields after each step (``steps=0`` yields nothing)."""
        steps = self.cfg.default_steps if steps is None else steps
        coords, ev, labels = (t.to(self.device) for t in case.context)

        def loss(params):
            logits = functional_call(self.model, params, (coords, ev))
            return occupancy_loss(logits, labels, params, self.cfg.weight_decay)

        yield from fit(self.init, loss, steps, self.step_sizes, self.cfg.inner_steps, self.cfg.adam_lr)

    def point_function(self, case: Case, params: dict[str, torch.Tensor] | None = None):
        params = self.init if params is None else params

        def logits(ijk: np.ndarray) -> np.ndarray:
            coords, ev = (t.to(self.device) for t in _inputs(case.evidence, case.frame, case.affine, ijk))
            with torch.no_grad():
                return functional_call(self.model, params, (coords, ev)).float().cpu().numpy()

        return logits

    def decode(self, case: Case, params=None, step: float = 1.0, adaptive: bool = True):
        """Logits over the case's region, sampled every ``step`` voxels; returns (logits, lo)."""
        chunk = chunk_size(bytes_per_point=4 * (self.model.in_features + 6 * self.cfg.hidden_features) * 4)
        lo = case.lo.astype(np.float64)
        hi = case.hi.astype(np.float64) - 1 + step
        return decode_box(self.point_function(case, params), lo, hi, step, chunk, adaptive), lo

    def labelmap(self, case: Case, params=None, adaptive: bool = True) -> np.ndarray:
        """Binary completion on the input's full grid (outside the region: background)."""
        logits, lo = self.decode(case, params, 1.0, adaptive)
        return labels_on_grid(case.evidence.shape, lo, logits)


def _split(tensors: dict[str, torch.Tensor], model: nn.Module):
    names = [k for k, _ in model.named_parameters()]
    return {k: tensors[f"init.{k}"] for k in names}, {k: tensors[f"step_size.{k}"] for k in names}


ENCODER_PREFIX = "encoder."  # the context encoder's weights in a prior file


def _load_encoder(prior: Prior, cfg: ShapeConfig) -> SliceEncoder | None:
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

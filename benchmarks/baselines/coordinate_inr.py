"""Coordinate-only occupancy networks for sparse-slice shape completion (the paper's baselines).

All three see only a point's position in the engine's normalized frame (``case.frame``: the
centre of the annotated foreground, ``scale_mm``), never the slice evidence our method adds:

* **random SIREN**: ``Siren(3, 64, 3, 1)`` with the SIREN initialisation, fitted to the
  annotated slices' context points with Adam;
* **B.(ii) pretrained SIREN** (NeRP-inspired): the same network first trained with plain Adam
  on all training shapes together (one network, no meta-learning), then fitted the same way;
* **B.(i) auto-decoder** (Amiranashvili et al., MIDL 2022): a latent code (128) and an MLP
  (8 linear layers of width 128, ReLU, coordinates concatenated at layers 0 and 4, residual
  skips elsewhere) trained jointly over the training shapes (per-shape latents); at test time
  a new latent is optimised alone.

Every baseline offers ``fit_and_decode(case, steps)``: the binary completion on the case's full
grid after each requested number of steps, with the time it took (fit steps + decode).
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.func import functional_call

from inr_engine.datasets import Shape
from inr_engine.decode import chunk_size, decode_box, labels_on_grid
from inr_engine.fit import FitStep, Params, fit
from inr_engine.networks import Siren
from inr_engine.shape.case import Case
from inr_engine.shape.model import ShapeConfig, bce_dice_loss
from inr_engine.shape.tasks import sample_task
from inr_engine.streams import TaskStream

SIREN_HIDDEN, SIREN_LAYERS = 64, 3
# Test-time Adam rate of both SIREN baselines: the SIREN paper's 1e-4. Checked against 1e-3 on 6 adrenal
# validation shapes (w = 8, axes 0 and 2), random SIREN, mean Dice after 5 / 50 / 200 steps:
# 1e-4: 0.004 / 0.685 / 0.497; 1e-3: 0.639 / 0.573 / 0.518 (faster, but a lower best).
SIREN_LR = 1e-4
LATENT_DIM, AD_LAYERS, AD_COORD_LAYERS = 128, 8, (0, 4)
AD_NET_LR, AD_LATENT_LR, AD_TEST_LR = 1e-4, 1e-3, 1e-2
AD_LATENT_REG = 1e-4
AD_TEST_INIT_STD = 1e-4
# Training of B.(i) and B.(ii): shapes per step and target points per shape. Fewer points than the
# original (64^3 per shape) so that a CPU time budget sees many more shapes (half of the points
# are drawn near the surface by sample_task).
TRAIN_BATCH, TRAIN_POINTS = 16, 1024


# --------------------------------------------------------------------------- shared pieces
def bce_dice(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The engine's occupancy loss (BCE + soft Dice) without weight decay, averaged over tasks."""
    return bce_dice_loss(logits, labels).mean()


def timed_checkpoints(steps: Iterable[FitStep], wanted: Iterable[int]) -> Iterator[tuple[FitStep, float]]:
    """``(step, fit seconds so far)`` at the ``wanted`` steps; time the caller spends between
    steps (decoding a checkpoint) is not counted."""
    wanted = set(wanted)
    spent = 0.0
    start = time.perf_counter()
    for st in steps:
        spent += time.perf_counter() - start
        if st.step in wanted:
            yield st, spent
        start = time.perf_counter()


def completions(fit: Callable[[int], Iterable[FitStep]], labelmap: Callable[[Params | None], np.ndarray],
                steps: Iterable[int], setup_seconds: float = 0.0) -> dict[int, tuple[np.ndarray, float]]:
    """``{step: (labelmap, seconds)}`` after each of ``steps`` fitting steps (0: no fitting).

    ``fit(n)`` runs ``n`` steps; ``labelmap(params)`` decodes (``None``: the initial state).
    Seconds: ``setup_seconds`` + fitting up to the step + decoding that step.
    """
    wanted = sorted(set(steps))
    out = {}
    if 0 in wanted:
        start = time.perf_counter()
        out[0] = (labelmap(None), setup_seconds + time.perf_counter() - start)
    for st, fit_s in timed_checkpoints(fit(max(wanted)), wanted):
        start = time.perf_counter()
        out[st.step] = (labelmap(st.params), setup_seconds + fit_s + time.perf_counter() - start)
    return out


def case_labelmap(case: Case, logits_fn: Callable[[torch.Tensor], torch.Tensor], bytes_per_point: int) -> np.ndarray:
    """Binary completion on the case's full grid from a network-frame logit function, decoded
    over ``case.lo .. case.hi`` at the voxel centres (as :meth:`ShapeCompleter.labelmap`)."""

    def point_function(ijk: np.ndarray) -> np.ndarray:
        coords = torch.from_numpy(case.frame.ijk_to_network(ijk, case.affine))
        with torch.no_grad():
            return logits_fn(coords).float().numpy()

    logits = decode_box(point_function, case.lo, case.hi, 1.0, chunk_size(bytes_per_point))
    return labels_on_grid(case.grid_shape, case.lo, logits)


class CoordinateBaseline:
    """A coordinate network fitted with Adam to a case's context points (subclasses: what is fitted)."""

    name: str
    lr: float
    scale_mm: float | None = None  # the frame scale the weights were trained in (None: any)
    training: dict | None = None  # metadata of the training of its weights (None: not trained)
    bytes_per_point: int
    net: nn.Module

    def initial(self) -> Params:
        raise NotImplementedError

    def logits(self, params: Params, coords: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, params: Params, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def parameter_counts(self) -> dict[str, int]:
        """Parameters fitted at test time, and those of the trained network kept on disk (0: untrained)."""
        stored = sum(p.numel() for p in self.net.parameters()) if self.training is not None else 0
        return {"fitted": sum(v.numel() for v in self.initial().values()), "stored": stored}

    def fit(self, case: Case, steps: int) -> Iterator[FitStep]:
        if self.scale_mm is not None and not math.isclose(case.frame.scale, self.scale_mm):
            raise ValueError(f"{self.name} was trained in a {self.scale_mm} mm frame, the case uses "
                             f"{case.frame.scale} mm: prepare the case with the same ShapeConfig.scale_mm")
        coords, _, labels = case.context
        return fit(self.initial(), lambda p: self.loss(p, coords, labels), steps, adam_lr=self.lr)

    def labelmap(self, case: Case, params: Params | None = None) -> np.ndarray:
        params = self.initial() if params is None else params
        return case_labelmap(case, lambda coords: self.logits(params, coords), self.bytes_per_point)

    def fit_and_decode(self, case: Case, steps: Iterable[int]) -> dict[int, tuple[np.ndarray, float]]:
        """Completion after each of ``steps`` fitting steps (0: the initialisation), with seconds
        spent on fitting up to that step plus decoding it."""
        return completions(lambda n: self.fit(case, n), lambda params: self.labelmap(case, params), steps)


# --------------------------------------------------------------------------- SIREN (random, B.(ii))
def coordinate_siren() -> Siren:
    return Siren(3, SIREN_HIDDEN, SIREN_LAYERS, 1)


class SirenBaseline(CoordinateBaseline):
    """A coordinate SIREN fitted with Adam: random (``weights=None``) or pretrained (B.(ii))."""

    bytes_per_point = 4 * (3 + 6 * SIREN_HIDDEN) * 4

    def __init__(self, weights: Params | None = None, lr: float = SIREN_LR, seed: int = 0,
                 scale_mm: float | None = None, name: str | None = None):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = coordinate_siren().requires_grad_(False)
        if weights is not None:
            self.net.load_state_dict(weights)
        self.params = {k: v.detach() for k, v in self.net.named_parameters()}
        self.lr = lr
        self.scale_mm = scale_mm
        self.name = name or ("random SIREN" if weights is None else "B.(ii) pretrained SIREN")

    def initial(self) -> Params:
        return self.params

    def logits(self, params: Params, coords: torch.Tensor) -> torch.Tensor:
        return functional_call(self.net, params, (coords,)).squeeze(-1)

    def loss(self, params: Params, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return bce_dice(self.logits(params, coords), labels)


# --------------------------------------------------------------------------- auto-decoder (B.(i))
class OccupancyDecoder(nn.Module):
    """Amiranashvili et al.'s occupancy MLP: ``(latent, coords) -> logit``.

    ``layers - 1`` blocks ``Linear(width) + ReLU`` on the latent; the coordinates are
    concatenated to the features before the blocks in ``coord_layers``, the other blocks are
    residual; a last linear layer gives one logit.
    """

    def __init__(self, latent_dim: int = LATENT_DIM, layers: int = AD_LAYERS,
                 coord_layers: tuple[int, ...] = AD_COORD_LAYERS):
        super().__init__()
        self.coord_layers = set(coord_layers)
        width = [latent_dim + 3 if i in self.coord_layers else latent_dim for i in range(layers)]
        self.blocks = nn.ModuleList(nn.Linear(width[i], latent_dim) for i in range(layers - 1))
        self.out = nn.Linear(width[-1], 1)

    def forward(self, latent: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """``latent`` (..., L) broadcast over the points of ``coords`` (..., N, 3) -> (..., N) logits."""
        h = latent.unsqueeze(-2).expand(*coords.shape[:-1], latent.shape[-1])
        for i, block in enumerate(self.blocks):
            if i in self.coord_layers:
                h = torch.relu(block(torch.cat([h, coords], -1)))
            else:
                h = h + torch.relu(block(h))
        if len(self.blocks) in self.coord_layers:
            h = torch.cat([h, coords], -1)
        return self.out(h).squeeze(-1)


def latent_penalty(latents: torch.Tensor) -> torch.Tensor:
    """Mean squared latent norm (DeepSDF's code regulariser)."""
    return latents.pow(2).sum(-1).mean()


class AutoDecoderBaseline(CoordinateBaseline):
    """B.(i): the trained decoder frozen, a new latent (N(0, 1e-4)) optimised alone with Adam."""

    name = "B.(i) auto-decoder"
    bytes_per_point = 4 * (3 + 8 * LATENT_DIM) * 4

    def __init__(self, weights: Params, lr: float = AD_TEST_LR, seed: int = 0, scale_mm: float | None = None):
        self.net = OccupancyDecoder().requires_grad_(False)
        self.net.load_state_dict(weights)
        generator = torch.Generator().manual_seed(seed)
        self.latent = torch.randn(LATENT_DIM, generator=generator) * AD_TEST_INIT_STD
        self.lr = lr
        self.scale_mm = scale_mm

    def initial(self) -> Params:
        return {"latent": self.latent}

    def logits(self, params: Params, coords: torch.Tensor) -> torch.Tensor:
        return self.net(params["latent"], coords)

    def loss(self, params: Params, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return bce_dice(self.logits(params, coords), labels) + AD_LATENT_REG * latent_penalty(params["latent"])


# --------------------------------------------------------------------------- training B.(i), B.(ii)
def target_batches(shapes: list[Shape], cfg: ShapeConfig, batch: int) -> Callable[[np.random.Generator], tuple]:
    """``draw(rng)`` for a :class:`TaskStream`: ``(shape indices, target coords, target labels)`` of
    ``batch`` training shapes, in the frame :func:`sample_task` places them in (centred on simulated
    sparse annotations)."""

    def draw(rng: np.random.Generator) -> tuple:
        index, coords, labels = [], [], []
        while len(index) < batch:
            n = int(rng.integers(len(shapes)))
            task = sample_task(shapes[n].mask, shapes[n].affine, cfg, rng)
            if task is None:
                continue
            target_coords, _, target_labels = task[1]
            index.append(n)
            coords.append(target_coords)
            labels.append(target_labels)
        return torch.tensor(index), torch.stack(coords), torch.stack(labels)

    return draw


def _train_loop(step: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], float], shapes: list[Shape],
                cfg: ShapeConfig, batch: int, seed: int, seconds: float, log: Callable[[str], None] | None) -> dict:
    """Run ``step(index, coords, labels, progress)`` on batches of ``shapes`` for ``seconds``."""
    start = time.perf_counter()
    steps, losses = 0, []
    with TaskStream(target_batches(shapes, cfg, batch), seed) as stream:
        while (elapsed := time.perf_counter() - start) < seconds:
            losses.append(step(*stream(), elapsed / seconds))
            steps += 1
            if log is not None and steps % 200 == 0:
                log(f"step {steps}, {elapsed:.0f} s, loss {np.mean(losses[-200:]):.4f}")
    return {"steps": steps, "seconds": time.perf_counter() - start,
            "final_loss": float(np.mean(losses[-100:])) if losses else float("nan")}


def train_pretrained_siren(shapes: list[Shape], seconds: float, cfg: ShapeConfig | None = None, *,
                           batch: int = TRAIN_BATCH, points: int = TRAIN_POINTS, lr: float = 1e-4, seed: int = 0,
                           log: Callable[[str], None] | None = None) -> tuple[Params, dict]:
    """B.(ii): one coordinate SIREN trained with Adam on all training shapes (``batch`` shapes of
    ``points`` target points a step); (weights, metadata)."""
    cfg = replace(cfg or ShapeConfig(), target_points=points)
    torch.manual_seed(seed)
    net = coordinate_siren()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)

    def step(_index, coords, labels, _progress) -> float:
        loss = bce_dice(net(coords).squeeze(-1), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    info = _train_loop(step, shapes, cfg, batch, seed, seconds, log)
    meta = {"baseline": "pretrained_siren", "shapes": len(shapes), "batch": batch, "lr": lr, "seed": seed,
            "scale_mm": cfg.scale_mm, "target_points": cfg.target_points, **info}
    return {k: v.detach().clone() for k, v in net.state_dict().items()}, meta


def train_auto_decoder(shapes: list[Shape], seconds: float, cfg: ShapeConfig | None = None, *,
                       batch: int = TRAIN_BATCH, points: int = TRAIN_POINTS, warmup: float = 0.05, seed: int = 0,
                       log: Callable[[str], None] | None = None) -> tuple[Params, dict]:
    """B.(i): decoder and per-shape latents trained jointly (Adam: net 1e-4, latents 1e-3; latent
    L2 1e-4 warmed up linearly over the first ``warmup`` of the budget); (decoder weights, metadata)."""
    cfg = replace(cfg or ShapeConfig(), target_points=points)
    torch.manual_seed(seed)
    net = OccupancyDecoder()
    latents = nn.Parameter(torch.randn(len(shapes), LATENT_DIM) / math.sqrt(LATENT_DIM))
    optimizer = torch.optim.Adam([{"params": net.parameters(), "lr": AD_NET_LR},
                                  {"params": [latents], "lr": AD_LATENT_LR}])

    def step(index, coords, labels, progress) -> float:
        z = latents[index]
        reg = AD_LATENT_REG * min(1.0, progress / warmup) * latent_penalty(z)
        loss = bce_dice(net(z, coords), labels) + reg
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    info = _train_loop(step, shapes, cfg, batch, seed, seconds, log)
    meta = {"baseline": "auto_decoder", "shapes": len(shapes), "batch": batch, "seed": seed,
            "scale_mm": cfg.scale_mm, "target_points": cfg.target_points, "latent_dim": LATENT_DIM,
            "train_latent_norm": float(latents.detach().norm(dim=1).mean()), **info}
    return {k: v.detach().clone() for k, v in net.state_dict().items()}, meta


TRAINERS = {"pretrained_siren": train_pretrained_siren, "auto_decoder": train_auto_decoder}


# --------------------------------------------------------------------------- weights on disk
def save_weights(path: str | Path, weights: Params, metadata: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in weights.items()}
    save_file(tensors, str(path), metadata={"baseline": json.dumps(metadata, sort_keys=True)})
    return path


def load_weights(path: str | Path) -> tuple[Params, dict]:
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("baseline", "{}"))
        return {k: f.get_tensor(k) for k in f.keys()}, meta


def cached_weights(kind: str, dataset: str, shapes: Callable[[], list[Shape]], seconds: float,
                   cache_dir: str | Path, cfg: ShapeConfig | None = None, seed: int = 0,
                   log: Callable[[str], None] | None = None) -> tuple[Params, dict]:
    """Trained weights of baseline ``kind`` (``pretrained_siren`` or ``auto_decoder``) for
    ``dataset``: loaded from ``cache_dir`` if trained before with the same budget and seed, else
    trained on ``shapes()`` (called only then) and saved there."""
    cfg = cfg or ShapeConfig()
    path = Path(cache_dir) / f"{kind}-{dataset}-{int(seconds)}s-scale{cfg.scale_mm:g}-seed{seed}.safetensors"
    if path.is_file():
        return load_weights(path)
    weights, meta = TRAINERS[kind](shapes(), seconds, cfg, seed=seed, log=log)
    save_weights(path, weights, {**meta, "dataset": dataset})
    return weights, meta


def baselines(dataset: str, train_shapes: Callable[[], list[Shape]], seconds: float, cfg: ShapeConfig,
              cache_dir: str | Path, seed: int = 0,
              log: Callable[[str], None] | None = None) -> dict[str, CoordinateBaseline]:
    """The three coordinate baselines for ``dataset``, B.(i) and B.(ii) trained first (or loaded from
    ``cache_dir``)."""
    train_shapes = functools.cache(train_shapes)
    siren_w, siren_meta = cached_weights("pretrained_siren", dataset, train_shapes, seconds, cache_dir, cfg, seed,
                                         log)
    ad_w, ad_meta = cached_weights("auto_decoder", dataset, train_shapes, seconds, cache_dir, cfg, seed, log)
    pretrained, auto_decoder = SirenBaseline(siren_w, scale_mm=cfg.scale_mm), AutoDecoderBaseline(
        ad_w, seed=seed, scale_mm=cfg.scale_mm)
    pretrained.training, auto_decoder.training = siren_meta, ad_meta
    return {b.name: b for b in (SirenBaseline(seed=seed), pretrained, auto_decoder)}

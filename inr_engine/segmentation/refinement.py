"""MORSE-style boundary refinement of MetaSeg's and NISF's labels ("refine boundaries").

After the fit, the voxels where the class head's top-two margin is smallest are labelled again by
a :class:`~.morse.BoundaryRenderer` whose experts are the fitted network's layers (MetaSeg: the
SIREN's sine layers; NISF: the Gabor trunk's input layer and residual blocks), from the one
closest to the coordinates to the one the head reads, with the head's logits and the image
intensity at the voxel. The renderer is trained on training subjects fitted
exactly as at test time, on points chosen by MORSE's rule (3x oversampled voxels, 75 % the most
uncertain); the prior's network is frozen, so there is no loss ramp to schedule.

The renderer's tensors are stored in the prior file under ``refine.`` with a ``refinement``
metadata entry; priors without them segment as before. A NISF refiner is trained on, and only
used with, the fast procedure's features.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..meta import sub_params
from ..priors import Prior, PriorError, error_summary, load_prior, save_prior
from ..settings import REFINER_ITERATIONS, TrainingSettings
from ..training import run_training
from . import morse
from .metaseg import MetaSegSegmenter
from .nisf import TASK as NISF_TASK
from .nisf import NISFSegmenter
from .volume import SegVolume

RefinableSegmenter = MetaSegSegmenter | NISFSegmenter

PREFIX = "refine."
ROUNDS_PER_SUBJECT = 2  # point selections per training subject
REFINED_VOXELS = 2048  # voxels re-rendered per volume (MORSE's 8192 points are for 2D slices at 4x upsampling)
RENDERER_BATCH = 4096  # points per training step of the renderer


def refiner_for(segmenter: RefinableSegmenter) -> morse.BoundaryRenderer:
    cfg = segmenter.cfg
    return morse.BoundaryRenderer([cfg.hidden_features] * (cfg.hidden_layers + 1), cfg.num_classes,
                                  extra_features=1).to(segmenter.device)


def _metaseg_layers(model, params, x):
    layers = []
    for n, layer in enumerate(model.siren.body):
        x = functional_call(layer, sub_params(params, f"siren.body.{n}."), (x,))
        layers.append(x)
    return layers, functional_call(model.head, sub_params(params, "head."), (x,))


def _nisf_layers(model, params, coords):
    latent = params["latent"].expand(len(coords), -1)
    h = functional_call(model.backbone.inp, sub_params(params, "backbone.inp."), (torch.cat([coords, latent], -1),))
    layers = [h]
    for n, block in enumerate(model.backbone.blocks):
        h = h + functional_call(block, sub_params(params, f"backbone.blocks.{n}."), (h,))
        layers.append(h)
    return layers, functional_call(model.segmentation, sub_params(params, "segmentation."), (h,))


def point_inputs(segmenter: RefinableSegmenter, params: dict[str, torch.Tensor], coords: torch.Tensor,
                 intensity: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """(each layer's features, the class head's logits, the intensity) at ``coords``."""
    layers_of = _nisf_layers if isinstance(segmenter, NISFSegmenter) else _metaseg_layers
    layers, logits = layers_of(segmenter.model, params, coords.to(segmenter.device))
    return layers, logits, intensity.to(segmenter.device)[:, None]


def render(segmenter: RefinableSegmenter, renderer: morse.BoundaryRenderer, params, volume: SegVolume,
           flat: torch.Tensor) -> torch.Tensor:
    """Refined logits at the voxels of flat (C-order) indices ``flat``."""
    layers, logits, intensity = point_inputs(segmenter, params, volume.coords[flat], volume.intensity[flat])
    return renderer(volume.coords[flat].to(segmenter.device), layers, logits, intensity)


def refined_labels(segmenter: RefinableSegmenter, renderer: morse.BoundaryRenderer, volume: SegVolume, params,
                   count: int = REFINED_VOXELS) -> np.ndarray:
    """The label map of the fitted ``params`` with the ``count`` most uncertain voxels re-rendered."""
    with torch.no_grad():
        logits = torch.cat([point_inputs(segmenter, params, c, volume.intensity[:0])[1]
                            for c in volume.coords.split(1 << 16)])
        grid = logits.T.reshape(-1, *volume.shape)
        flat_shape = torch.tensor(volume.shape)

        def at(voxels: torch.Tensor) -> torch.Tensor:
            flat = (voxels[:, 0] * flat_shape[1] + voxels[:, 1]) * flat_shape[2] + voxels[:, 2]
            return render(segmenter, renderer, params, volume, flat.cpu())

        refined, _ = morse.refine_logits(grid, at, count)
    return refined.argmax(0).cpu().numpy().astype(np.uint8)


def training_points(segmenter: RefinableSegmenter, params, volume: SegVolume, rng: torch.Generator,
                    count: int = morse.TRAIN_POINTS) -> torch.Tensor:
    """MORSE's choice among the volume's voxels: flat indices of ``count`` points."""
    candidates = torch.randint(len(volume.coords), (morse.OVERSAMPLE * count,), generator=rng)
    with torch.no_grad():
        logits = point_inputs(segmenter, params, volume.coords[candidates], volume.intensity[candidates])[1]
    n_uncertain = int(morse.IMPORTANCE * count)
    uncertain = candidates[morse.uncertainty(logits).topk(n_uncertain).indices.cpu()]
    return torch.cat([uncertain, torch.randint(len(volume.coords), (count - n_uncertain,), generator=rng)])


def train_refiner(segmenter: RefinableSegmenter, images, steps: int | None = None, iterations: int = REFINER_ITERATIONS,
                  seed: int = 0, log=None) -> tuple[morse.BoundaryRenderer, dict]:
    """Fit each training image as at test time, gather MORSE points, train the renderer on them."""
    torch.manual_seed(seed)
    rng = torch.Generator().manual_seed(seed)
    batches = []
    start = time.perf_counter()
    for index, image in enumerate(images):
        volume = segmenter.prepare(image.image, image.affine)
        params = [st.params for st in segmenter.fit(volume, steps, seed=index)][-1]
        labels = torch.from_numpy(np.ascontiguousarray(image.labels).reshape(-1).astype(np.int64))
        for _ in range(ROUNDS_PER_SUBJECT):
            flat = training_points(segmenter, params, volume, rng)
            with torch.no_grad():
                layers, logits, intensity = point_inputs(segmenter, params, volume.coords[flat],
                                                         volume.intensity[flat])
            batches.append((volume.coords[flat], [f.half() for f in layers], logits, intensity, labels[flat]))
    gathered = time.perf_counter() - start
    coords = torch.cat([b[0] for b in batches]).to(segmenter.device)
    layers = [torch.cat([b[1][n] for b in batches]) for n in range(len(batches[0][1]))]
    logits, intensity, target = (torch.cat([b[k] for b in batches]).to(segmenter.device) for k in (2, 3, 4))
    renderer = refiner_for(segmenter)

    def step_loss() -> torch.Tensor:
        pick = torch.randint(len(coords), (RENDERER_BATCH,))
        pred = renderer(coords[pick], [f[pick].float() for f in layers], logits[pick], intensity[pick])
        return F.cross_entropy(pred, target[pick])

    renderer.train()
    run_training(renderer, step_loss, TrainingSettings(iterations, 1e-3, lr_floor=0.0, log_every=500),
                 stage="refiner", log=log)
    renderer.eval()
    return renderer, {"subjects": len(images), "points": len(coords), "iterations": iterations,
                      "fit_steps": steps or segmenter.default_steps, "gather_seconds": round(gathered, 1),
                      "seconds": round(time.perf_counter() - start, 1)}


def save_refined_prior(prior: Prior, renderer: morse.BoundaryRenderer, out: str | Path, training: dict) -> Path:
    """A copy of ``prior`` with the renderer's tensors (``refine.*``) and its description."""
    tensors = {k: v for k, v in prior.tensors.items() if not k.startswith(PREFIX)}
    tensors.update({PREFIX + k: v for k, v in renderer.state_dict().items()})
    meta = {**prior.metadata, "refinement": {"method": "MORSE-style implicit rendering of uncertain voxels",
                                             "refine_points": REFINED_VOXELS, **training}}
    return save_prior(out, tensors, meta)


def load_refiner(segmenter: RefinableSegmenter) -> morse.BoundaryRenderer:
    """The renderer stored in the segmenter's prior; :class:`PriorError` (one line) if it has none
    or it does not fit the segmenter."""
    prior = segmenter.prior
    name = prior.path if prior is not None else "this prior"
    if prior is None or "refinement" not in prior.metadata:
        raise PriorError(f"{name} has no boundary refiner: add one with 'inr-engine train refine'")
    refinement = prior.metadata["refinement"]
    if not isinstance(refinement, dict):
        raise PriorError(f"{name}: its refinement metadata is not an object: re-create the refiner with "
                         "'inr-engine train refine'")
    procedure, trained_on = getattr(segmenter, "procedure", None), refinement.get("procedure", "fast")
    if procedure is not None and procedure != trained_on:
        raise PriorError(f"{name}: the boundary refiner was trained on the {trained_on} procedure's features, "
                         f"not the {procedure} procedure's: segment with procedure {trained_on!r}, or without "
                         "refinement")
    if not any(k.startswith(PREFIX) for k in prior.tensors):
        raise PriorError(f"{name}: its metadata describes a boundary refiner but it holds no {PREFIX}* tensors: "
                         "re-create the refiner with 'inr-engine train refine'")
    try:
        renderer = refiner_for(segmenter)
        renderer.load_state_dict(sub_params(prior.tensors, PREFIX))
    except (RuntimeError, ValueError, TypeError) as exc:
        raise PriorError(f"{prior.path}: the boundary refiner does not match this engine "
                         f"({error_summary(exc)})") from exc
    return renderer.eval()


def refine_prior(prior_name: str | Path, images, out: str | Path, **kwargs) -> dict:
    """Train a refiner for a MetaSeg or NISF (fast procedure) prior on ``images``; write prior +
    refiner to ``out``."""
    prior = load_prior(prior_name)
    if prior.task == NISF_TASK:
        segmenter, extra = NISFSegmenter.from_prior(prior, "fast"), {"procedure": "fast"}
    else:
        segmenter, extra = MetaSegSegmenter.from_prior(prior), {}
    renderer, training = train_refiner(segmenter, images, **kwargs)
    save_refined_prior(prior, renderer, out, {**training, **extra, "cases": [im.name for im in images]})
    return training

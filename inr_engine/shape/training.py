"""Meta-training and validating shape-completion priors."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..datasets import Shape
from ..meta import STRAINER, MetaLearner
from ..metrics import dice
from ..priors import save_prior
from ..settings import EncoderTrainingSettings, ShapeTrainingSettings
from ..streams import EchoedBatches, TaskStream
from ..training import (
    Log,
    distributed_context,
    json_logger,
    run_training,
    train_meta,
)
from .completer import ShapeCompleter
from .encoder import SliceEncoder
from .model import OccupancyINR, ShapeConfig, bce_dice_loss, occupancy_loss, prior_metadata, prior_tensors
from .slices import SliceError, sparsify
from .tasks import draw_meta_batch, draw_tasks, encoder_task

PLANE_NORMALS = {"sagittal": 0, "coronal": 1, "axial": 2}  # the RAS direction a stack of such slices advances in


def plane_axis(affine: np.ndarray, plane: str) -> int:
    """Index axis along which ``plane`` ("axial", "coronal", "sagittal") slices are stacked: the
    one closest to the superior-inferior, anterior-posterior or left-right direction."""
    dirs = np.asarray(affine)[:3, :3] / np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    return int(np.argmax(np.abs(dirs[PLANE_NORMALS[plane]])))


def setting_axis(affine: np.ndarray, axis_name: str) -> int:
    """The index axis of a benchmark or validation setting: "0"/"1"/"2" or a plane's name."""
    return int(axis_name) if axis_name.isdigit() else plane_axis(affine, axis_name)


def protocol_dice(completer: ShapeCompleter, shape: Shape, axis: int, every: int,
                  steps: Iterable[int] = (1, 5)) -> dict[int, float]:
    """Dice of the completion after each of ``steps`` fitting steps (evaluation protocol)."""
    sparse, kept = sparsify(shape.mask, axis, every)
    case = completer.prepare(sparse, shape.affine, {axis: kept})
    wanted = sorted(set(steps))
    scores = {}
    if 0 in wanted:
        scores[0] = dice(completer.labelmap(case), shape.mask)
    for st in completer.fit(case, max(wanted)):
        if st.step in wanted:
            scores[st.step] = dice(completer.labelmap(case, st.params), shape.mask)
    return scores


def completion_validation(completer: ShapeCompleter, shapes: list[Shape], settings: list[tuple[str, int]],
                       steps=(1, 5)) -> dict:
    """Mean Dice per (axis, w) setting; ``axis`` is "0"/"1"/"2" or a plane's name (``setting_axis``)."""
    out = {}
    for axis_name, every in settings:
        per_step: dict[int, list[float]] = {s: [] for s in steps}
        for shape in shapes:
            axis = setting_axis(shape.affine, axis_name)
            try:
                for s, d in protocol_dice(completer, shape, axis, every, steps).items():
                    per_step[s].append(d)
            except SliceError:
                continue
        for s, vals in per_step.items():
            out[f"dice_axis{axis_name}_w{every}_step{s}"] = float(np.mean(vals)) if vals else float("nan")
    keys = [k for k in out if k.endswith(f"step{max(steps)}")]
    out["score"] = float(np.nanmean([out[k] for k in keys]))
    return out


def train_slice_encoder(train: list[Shape], cfg: ShapeConfig, settings: EncoderTrainingSettings, *, seed: int,
                        device: torch.device, data_workers: int = 1, log: Log | None = None,
                        init: SliceEncoder | None = None) -> SliceEncoder:
    """Supervised training of the context encoder on simulated sparse slices, from scratch or from
    ``init``; under ``torchrun`` the ranks draw their own examples."""
    rank = distributed_context()[0]
    torch.manual_seed(seed)
    encoder = SliceEncoder(cfg.encoder_channels)
    if init is not None:
        encoder.load_state_dict(init.state_dict())
    encoder.to(device).train().requires_grad_(True)

    def draw(rng):
        return draw_tasks(train, rng, settings.batch, lambda shape: encoder_task(shape, cfg, rng))

    with TaskStream(draw, seed + 7919 + rank, data_workers) as stream:
        batches = EchoedBatches(stream, settings.batch, settings.echo, np.random.default_rng(seed + 104729 + rank))

        def step_loss() -> torch.Tensor:
            return sum(bce_dice_loss(encoder(features[None].to(device)).flatten(), target.to(device).flatten())
                       for features, target in batches()) / settings.batch

        run_training(encoder, step_loss, settings.stage(), stage="encoder", log=log)
    return encoder.cpu().eval().requires_grad_(False)


def train_shape_prior(train: list[Shape], val: list[Shape], cfg: ShapeConfig, out: str | Path,
                      settings: ShapeTrainingSettings, *, device: torch.device, description: str,
                      training_data: dict, log_path: str | Path | None = None,
                      init: ShapeCompleter | None = None) -> dict:
    """Meta-train a shape prior and write the best validated state to ``out``.

    With ``cfg.encoder_channels``, the context encoder is trained first (``settings.encoder``) and
    is frozen while the INR is meta-learned on evidence that includes it. ``init`` (a loaded prior
    of the same architecture) continues its training: both stages start from its weights, and
    ``settings.encoder.steps == 0`` keeps its encoder as it is.
    """
    log = json_logger(log_path)
    encoder = None if init is None else init.encoder
    if cfg.encoder_channels and (encoder is None or settings.encoder.steps > 0):
        if encoder is None and settings.encoder.steps < 1:
            raise ValueError("a new context encoder needs encoder steps > 0")
        encoder = train_slice_encoder(train, cfg, settings.encoder, seed=settings.seed, device=device,
                                      data_workers=settings.data_workers, log=log, init=encoder)
    torch.manual_seed(settings.seed)
    learner = MetaLearner(OccupancyINR(cfg), cfg.algorithm, cfg.inner_steps, cfg.inner_lr)
    if init is not None:  # a STRAINER initialisation has no meta-learned step sizes: the learner keeps its own
        learner.load_initialisation(init.init, None if init.cfg.algorithm == STRAINER else init.step_sizes)

    def loss_fn(logits, labels, params):
        return occupancy_loss(logits, labels, params, cfg.weight_decay)

    def validate(lrn: MetaLearner) -> dict:
        return completion_validation(ShapeCompleter.from_learner(lrn, cfg, encoder=encoder), val, settings.protocols)

    def checkpoint(lrn: MetaLearner, entry: dict) -> None:
        meta = prior_metadata(cfg, name=Path(out).stem, description=description, training=training_data,
                              validation=entry, training_steps=entry["step"], seed=settings.seed,
                              meta_batch=settings.meta_batch, outer_lr=settings.lr)
        save_prior(out, prior_tensors(lrn, encoder), meta)

    def draw(rng):
        return draw_meta_batch(train, cfg, rng, settings.meta_batch, encoder)

    with TaskStream(draw, settings.seed + distributed_context()[0], settings.data_workers) as stream:
        result = train_meta(learner, stream, loss_fn, settings.stage(), device, validate=validate,
                            checkpoint=checkpoint, log=log)
    return {"best": result.best, "seconds": result.seconds, "steps": result.steps, "config": asdict(cfg)}

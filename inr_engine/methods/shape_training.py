"""Meta-training and validating shape-completion priors."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..datasets import Shape
from ..meta import MetaLearner
from ..metrics import dice
from ..priors import save_prior
from ..train import distributed_context, json_logger, train_meta
from .shape_completion import (
    OccupancyINR,
    ShapeCompleter,
    ShapeConfig,
    collate,
    occupancy_loss,
    prior_metadata,
    prior_tensors,
    sample_task,
)
from .slices import SliceError, sparsify


def axial_axis(affine: np.ndarray) -> int:
    """Index axis closest to the superior-inferior direction."""
    dirs = np.asarray(affine)[:3, :3] / np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    return int(np.argmax(np.abs(dirs[2])))


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


def validation_metrics(completer: ShapeCompleter, shapes: list[Shape], settings: list[tuple[str, int]],
                       steps=(1, 5)) -> dict:
    """Mean Dice per (axis, w) setting; ``axis`` is 0/1/2 or ``"axial"``."""
    out = {}
    for axis_name, every in settings:
        per_step: dict[int, list[float]] = {s: [] for s in steps}
        for shape in shapes:
            axis = axial_axis(shape.affine) if axis_name == "axial" else int(axis_name)
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


def draw_meta_batch(shapes: list[Shape], cfg: ShapeConfig, rng: np.random.Generator, size: int) -> tuple:
    """``size`` tasks from randomly chosen shapes, collated into (context, target)."""
    tasks = []
    while len(tasks) < size:
        shape = shapes[int(rng.integers(len(shapes)))]
        task = sample_task(shape.mask, shape.affine, cfg, rng)
        if task is not None:
            tasks.append(task)
    return collate(tasks)


class TaskStream:
    """Meta-batches drawn in background threads (NumPy, SciPy and SimpleITK release the GIL).

    Worker ``i`` of ``workers`` draws batches ``i, i + workers, ...`` from its own generator and
    the stream hands them out in that order, so the sequence depends on the seed and the
    number of workers, not on thread timing. Use it as a context manager (or call ``close``):
    threads still inside native code when the interpreter exits abort the process.
    """

    def __init__(self, shapes: list[Shape], cfg: ShapeConfig, meta_batch: int, seed: int, workers: int = 1,
                 prefetch: int = 4):
        self.shapes, self.cfg, self.meta_batch = shapes, cfg, meta_batch
        self.queues = [queue.Queue(max(1, prefetch // workers)) for _ in range(workers)]
        self.turn = 0
        self.stopping = threading.Event()
        rngs = np.random.default_rng(seed).spawn(workers) if workers > 1 else [np.random.default_rng(seed)]
        self.threads = [threading.Thread(target=self._fill, args=(q, rng), daemon=True)
                        for q, rng in zip(self.queues, rngs)]
        for thread in self.threads:
            thread.start()

    def _fill(self, out: queue.Queue, rng: np.random.Generator) -> None:
        while not self.stopping.is_set():
            batch = draw_meta_batch(self.shapes, self.cfg, rng, self.meta_batch)
            while not self.stopping.is_set():
                try:
                    out.put(batch, timeout=0.1)
                    break
                except queue.Full:
                    continue

    def __call__(self):
        batch = self.queues[self.turn].get()
        self.turn = (self.turn + 1) % len(self.queues)
        return batch

    def close(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join()

    def __enter__(self) -> TaskStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def train_shape_prior(train: list[Shape], val: list[Shape], cfg: ShapeConfig, out: str | Path, *, steps: int,
                      meta_batch: int, lr: float, seed: int, device: torch.device, settings: list[tuple[str, int]],
                      description: str, training_data: dict, log_path: str | Path | None = None,
                      time_limit_s: float | None = None, data_workers: int = 1) -> dict:
    """Meta-train a shape prior and write the best validated state to ``out``."""
    torch.manual_seed(seed)
    learner = MetaLearner(OccupancyINR(cfg), cfg.algorithm, cfg.inner_steps, cfg.inner_lr)

    def loss_fn(logits, labels, params):
        return occupancy_loss(logits, labels, params, cfg.weight_decay)

    def validate(lrn: MetaLearner) -> dict:
        return validation_metrics(ShapeCompleter.from_learner(lrn, cfg), val, settings)

    def checkpoint(lrn: MetaLearner, entry: dict) -> None:
        meta = prior_metadata(cfg, name=Path(out).stem, description=description, training=training_data,
                              validation=entry, training_steps=entry["step"], seed=seed, meta_batch=meta_batch,
                              outer_lr=lr)
        save_prior(out, prior_tensors(lrn), meta)

    with TaskStream(train, cfg, meta_batch, seed + distributed_context()[0], data_workers) as stream:
        result = train_meta(learner, stream, loss_fn, steps, lr, device, validate,
                            validate_every=max(steps // 12, 50), log=json_logger(log_path), checkpoint=checkpoint,
                            time_limit_s=time_limit_s)
    return {"best": result.best, "seconds": result.seconds, "steps": result.steps, "config": asdict(cfg)}

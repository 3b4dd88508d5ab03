"""Meta-training and validating shape-completion priors."""

from __future__ import annotations

import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from scipy import ndimage

from ..datasets import Shape
from ..frames import spacing
from ..meta import MetaLearner
from ..metrics import dice
from ..priors import save_prior
from ..train import TrainingBudget, distributed_context, json_logger, train_meta
from .shape_completion import (
    OccupancyINR,
    ShapeCompleter,
    ShapeConfig,
    bce_dice_loss,
    collate,
    occupancy_loss,
    prior_metadata,
    prior_tensors,
    region_of_interest,
    sample_task,
    simulate_sparse,
)
from .slice_encoder import EvidenceGrid, SliceEncoder, grid_multiple
from .slices import SliceError, SliceEvidence, sparsify

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


def validation_metrics(completer: ShapeCompleter, shapes: list[Shape], settings: list[tuple[str, int]],
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


def draw_meta_batch(shapes: list[Shape], cfg: ShapeConfig, rng: np.random.Generator, size: int,
                    encoder: SliceEncoder | None = None) -> tuple:
    """``size`` tasks from randomly chosen shapes, collated into (context, target)."""
    return collate(_draw(shapes, rng, size, lambda shape: sample_task(shape.mask, shape.affine, cfg, rng, encoder)))


MAX_FAILED_DRAWS = 1000  # tries in a row without a usable task before the shapes are declared unusable


def _draw(shapes: list[Shape], rng: np.random.Generator, size: int, make: Callable[[Shape], object]) -> list:
    """``size`` non-None results of ``make`` on randomly chosen shapes; raises SliceError when
    there are no shapes or none gives a task in ``MAX_FAILED_DRAWS`` tries (no endless loop)."""
    if not shapes:
        raise SliceError("no training shapes: the data left none to train on")
    out, failed = [], 0
    while len(out) < size:
        item = make(shapes[int(rng.integers(len(shapes)))])
        if item is not None:
            out.append(item)
            failed = 0
            continue
        failed += 1
        if failed >= MAX_FAILED_DRAWS:
            raise SliceError(f"no training task could be made from the {len(shapes)} training shape(s) in "
                             f"{failed} tries: they are too small for the simulated slices; train on larger shapes")
    return out


class _WorkerFailure:
    """What a worker hands on instead of a batch when drawing it raised ``error``."""

    def __init__(self, error: BaseException):
        self.error = error


class TaskStream:
    """Batches drawn in background threads (NumPy, SciPy, SimpleITK and PyTorch release the GIL).

    ``draw(rng)`` makes one batch. Worker ``i`` of ``workers`` draws batches ``i, i + workers,
    ...`` from its own generator and the stream hands them out in that order, so the sequence
    depends on the seed and the number of workers, not on thread timing. An exception raised by
    ``draw`` reaches the consumer: the call that would have returned that batch re-raises it
    (the same exception, so a user error stays one), and so does every later call. Use it as a
    context manager (or call ``close``): threads still inside native code when the interpreter
    exits abort the process. The workers are daemon threads and ``close`` waits for them for at
    most ``close_timeout_s`` seconds, so neither an error nor Ctrl-C can hang on them.
    """

    POLL_S = 0.1  # how often a waiting worker or consumer checks for a stop or a dead worker

    def __init__(self, draw: Callable[[np.random.Generator], object], seed: int, workers: int = 1,
                 prefetch: int = 4, close_timeout_s: float = 30.0):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.draw = draw
        self.close_timeout_s = close_timeout_s
        self.queues = [queue.Queue(max(1, prefetch // workers)) for _ in range(workers)]
        self.turn = 0
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        rngs = np.random.default_rng(seed).spawn(workers) if workers > 1 else [np.random.default_rng(seed)]
        self.threads = [threading.Thread(target=self._fill, args=(q, rng), daemon=True, name=f"TaskStream-{i}")
                        for i, (q, rng) in enumerate(zip(self.queues, rngs))]
        for thread in self.threads:
            thread.start()

    def _fill(self, out: queue.Queue, rng: np.random.Generator) -> None:
        try:
            while not self.stopping.is_set():
                if not self._put(out, self.draw(rng)):
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(out, _WorkerFailure(exc))

    def _put(self, out: queue.Queue, item) -> bool:
        """Put ``item`` once there is room; False if the stream stopped first."""
        while not self.stopping.is_set():
            try:
                out.put(item, timeout=self.POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def __call__(self):
        if self.error is not None:
            raise self.error
        source, worker = self.queues[self.turn], self.threads[self.turn]
        while True:
            try:
                item = source.get(timeout=self.POLL_S)  # a timeout: Ctrl-C and dead workers are noticed
                break
            except queue.Empty:
                if self.stopping.is_set():
                    raise RuntimeError("the task stream is closed") from None
                if not worker.is_alive() and source.empty():
                    raise RuntimeError(f"data worker {worker.name} stopped without a batch or an error") from None
        if isinstance(item, _WorkerFailure):
            self.error = item.error
            self.stopping.set()  # the other workers stop after their current batch
            raise item.error
        self.turn = (self.turn + 1) % len(self.queues)
        return item

    def close(self) -> None:
        """Stop the workers and wait for each to finish its current batch, at most
        ``close_timeout_s`` seconds in all (they are daemon threads: a stuck one cannot hang)."""
        self.stopping.set()
        deadline = time.monotonic() + self.close_timeout_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self.threads if t.is_alive()]
        if stuck:
            warnings.warn(f"data workers {', '.join(stuck)} still drawing after {self.close_timeout_s:g} s; "
                          "not waiting for them", RuntimeWarning, stacklevel=2)

    def __enter__(self) -> TaskStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class EchoedBatches:
    """Data echoing (Choi et al., 2019) for a stream of example batches.

    On a CPU, preparing an encoder example (slice evidence, registration) takes longer than a
    training step on it. With ``echo`` > 1, one fresh batch joins a pool of recent examples every
    ``echo`` steps and each step draws its batch from the pool, so an example is used about
    ``echo`` times. ``echo`` = 1 hands the stream's batches through unchanged.
    """

    POOL_BATCHES = 8  # pool size in batches: large enough that consecutive steps share few examples

    def __init__(self, stream: Callable[[], list], batch: int, echo: int, rng: np.random.Generator):
        if echo < 1:
            raise ValueError(f"echo must be >= 1, got {echo}")
        self.stream, self.batch, self.echo, self.rng = stream, batch, echo, rng
        self.pool: list = []
        self.step = 0

    def __call__(self) -> list:
        self.step += 1
        if self.echo == 1:
            return self.stream()
        if len(self.pool) < self.POOL_BATCHES * self.batch or self.step % self.echo == 0:
            self.pool = (self.pool + list(self.stream()))[-self.POOL_BATCHES * self.batch:]
        pick = self.rng.choice(len(self.pool), min(self.batch, len(self.pool)), replace=False)
        return [self.pool[i] for i in pick]


ENCODER_TRAINING_SIDE = 64  # grid points per side of an encoder training example, at most


def encoder_task(shape: Shape, cfg: ShapeConfig, rng: np.random.Generator):
    """One training example for the context encoder: the evidence of simulated sparse slices on
    the encoder's grid over the decoded region, and the shape's occupancy there (linear samples)."""
    simulated = simulate_sparse(shape.mask, shape.affine, cfg, rng)
    if simulated is None:
        return None
    sparse, slices = simulated
    evidence = SliceEvidence(sparse, slices, spacing(shape.affine))
    grid = EvidenceGrid(*region_of_interest(sparse, evidence, cfg.margin_mm), evidence.spacing, cfg.encoder_pitch_mm,
                        grid_multiple(cfg.encoder_channels))
    grid = grid.window(ENCODER_TRAINING_SIDE, rng)  # large organs (the brain) train on windows: the U-Net is local
    occupancy = ndimage.map_coordinates(np.asarray(shape.mask, np.float32), grid.points().T, order=1, mode="constant")
    return grid.features(evidence), torch.from_numpy(occupancy.reshape(grid.dims).astype(np.float32))


def train_slice_encoder(train: list[Shape], cfg: ShapeConfig, *, steps: int, batch: int, lr: float, seed: int,
                        device: torch.device, time_limit_s: float | None = None, data_workers: int = 1,
                        log=None, init: SliceEncoder | None = None, echo: int = 1) -> SliceEncoder:
    """Supervised training of the context encoder on simulated sparse slices (Adam, cosine decay
    over the steps or the time limit), from scratch or from ``init``; each example is used about
    ``echo`` times (``EchoedBatches``).

    Under ``torchrun`` the ranks draw their own examples and average their gradients.
    """
    rank, world = distributed_context()
    torch.manual_seed(seed)
    encoder = SliceEncoder(cfg.encoder_channels)
    if init is not None:
        encoder.load_state_dict(init.state_dict())
    encoder.to(device).train().requires_grad_(True)
    opt = torch.optim.Adam(encoder.parameters(), lr=lr)
    budget = TrainingBudget(steps, time_limit_s)
    running, since_log, progress = 0.0, 0, 0.0

    def draw(rng):
        return _draw(train, rng, batch, lambda shape: encoder_task(shape, cfg, rng))

    with TaskStream(draw, seed + 7919 + rank, data_workers) as stream:
        batches = EchoedBatches(stream, batch, echo, np.random.default_rng(seed + 104729 + rank))
        for step in range(1, steps + 1):
            budget.set_lr(opt, progress)
            opt.zero_grad(set_to_none=True)
            for features, target in batches():
                loss = bce_dice_loss(encoder(features[None].to(device)).flatten(), target.to(device).flatten()) / batch
                loss.backward()
                running += float(loss.detach())
            since_log += 1
            if world > 1:
                for p in encoder.parameters():
                    dist.all_reduce(p.grad)
                    p.grad /= world
            opt.step()
            progress = budget.progress(step)
            if rank == 0 and log is not None and (step % 50 == 0 or progress >= 1):
                log({"stage": "encoder", "step": step, "train_loss": running / since_log, "seconds": budget.seconds()})
                running, since_log = 0.0, 0
            if progress >= 1:
                break
    return encoder.cpu().eval().requires_grad_(False)


def train_shape_prior(train: list[Shape], val: list[Shape], cfg: ShapeConfig, out: str | Path, *, steps: int,
                      meta_batch: int, lr: float, seed: int, device: torch.device, settings: list[tuple[str, int]],
                      description: str, training_data: dict, log_path: str | Path | None = None,
                      time_limit_s: float | None = None, data_workers: int = 1, encoder_steps: int = 3000,
                      encoder_time_limit_s: float | None = None, encoder_batch: int = 4,
                      encoder_lr: float = 1e-3, encoder_echo: int = 1, init: ShapeCompleter | None = None) -> dict:
    """Meta-train a shape prior and write the best validated state to ``out``.

    With ``cfg.encoder_channels``, the context encoder is trained first (``encoder_*``) and is
    frozen while the INR is meta-learned on evidence that includes it. ``init`` (a loaded prior
    of the same architecture) continues its training: both stages start from its weights, and
    ``encoder_steps=0`` keeps its encoder as it is.
    """
    log = json_logger(log_path)
    encoder = None if init is None else init.encoder
    if cfg.encoder_channels and (encoder is None or encoder_steps > 0):
        if encoder is None and encoder_steps < 1:
            raise ValueError("a new context encoder needs encoder_steps > 0")
        encoder = train_slice_encoder(train, cfg, steps=encoder_steps, batch=encoder_batch, lr=encoder_lr, seed=seed,
                                      device=device, time_limit_s=encoder_time_limit_s, data_workers=data_workers,
                                      log=log, init=encoder, echo=encoder_echo)
    torch.manual_seed(seed)
    learner = MetaLearner(OccupancyINR(cfg), cfg.algorithm, cfg.inner_steps, cfg.inner_lr)
    if init is not None:
        learner.load_initialisation(init.init, init.step_sizes)

    def loss_fn(logits, labels, params):
        return occupancy_loss(logits, labels, params, cfg.weight_decay)

    def validate(lrn: MetaLearner) -> dict:
        return validation_metrics(ShapeCompleter.from_learner(lrn, cfg, encoder=encoder), val, settings)

    def checkpoint(lrn: MetaLearner, entry: dict) -> None:
        meta = prior_metadata(cfg, name=Path(out).stem, description=description, training=training_data,
                              validation=entry, training_steps=entry["step"], seed=seed, meta_batch=meta_batch,
                              outer_lr=lr)
        save_prior(out, prior_tensors(lrn, encoder), meta)

    def draw(rng):
        return draw_meta_batch(train, cfg, rng, meta_batch, encoder)

    with TaskStream(draw, seed + distributed_context()[0], data_workers) as stream:
        result = train_meta(learner, stream, loss_fn, steps, lr, device, validate,
                            validate_every=max(steps // 12, 50), log=log, checkpoint=checkpoint,
                            time_limit_s=time_limit_s)
    return {"best": result.best, "seconds": result.seconds, "steps": result.steps, "config": asdict(cfg)}

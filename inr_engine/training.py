"""The one training loop every prior is trained with: one process (CPU or GPU) or several under
``torchrun``.

:func:`run_training` owns what all trainings share: Adam, the step/time budget, the cosine
learning-rate schedule over it, gradient clipping, averaging gradients across ``torchrun``
ranks, the training log, validation and the checkpoint of the best validated state. What differs
between methods is only the loss of one step (``step_loss``) and their settings
(:class:`TrainingSettings`, held by each method's settings dataclass).

Under ``torchrun`` every rank draws its own data (seed + rank), rank 0's initial parameters are
broadcast, gradients are averaged after each step's backward pass, and only rank 0 validates,
logs and writes files. Gradients are averaged here rather than by ``DistributedDataParallel``
because some steps run the model several times before one backward pass (the context encoder's
echoed batches), which DDP does not allow.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .meta import MetaLearner, TaskLoss
from .settings import TrainingDiverged, TrainingSettings

Log = Callable[[dict], None]


@dataclass
class TrainResult:
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    best: dict | None = None


def distributed_context() -> tuple[int, int]:
    """(rank, world size), initialising the process group when launched by ``torchrun``."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        # torchrun ranks that exit with the group alive can abort in gloo's threads ("terminate
        # called without an active exception"): tear it down at exit, if end_distributed has not
        atexit.register(end_distributed, wait=False)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return dist.get_rank(), dist.get_world_size()


def end_distributed(wait: bool = True) -> None:
    """Under ``torchrun``, after a command's work: wait for every rank (``wait``: rank 0 may still be
    writing files), then end the process group on all of them together. A rank that left while
    another still held the group aborted now and then in gloo's threads (3 runs in 50 here)."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


class TrainingBudget:
    """How far a run is through its budget: its steps or its time limit, whichever ends first.

    The learning rate follows a cosine over this progress, so a run cut short by its time limit
    still anneals. Under ``torchrun`` the ranks agree on the furthest rank's progress: they use
    the same learning rate and stop at the same step.
    """

    def __init__(self, steps: int, time_limit_s: float | None = None, floor: float = 0.05):
        self.steps, self.time_limit_s, self.floor = steps, time_limit_s, floor
        self.world = distributed_context()[1]
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def progress(self, steps_done: int) -> float:
        """In [0, 1]; 1 means stop."""
        progress = steps_done / max(self.steps, 1)
        if self.time_limit_s is not None:
            progress = max(progress, self.seconds() / max(self.time_limit_s, 1e-9))
            if self.world > 1:
                value = torch.tensor(progress)
                dist.all_reduce(value, op=dist.ReduceOp.MAX)
                progress = float(value)
        return min(progress, 1.0)

    def set_lr(self, opt: torch.optim.Optimizer, progress: float) -> None:
        """Each parameter group's rate: a cosine from its initial rate to ``floor`` times it."""
        factor = self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in opt.param_groups:
            group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor


def run_training(model: nn.Module, step_loss: Callable[[], torch.Tensor], settings: TrainingSettings, *,
                 stage: str, param_groups: Iterable[dict] | None = None, log: Log | None = None,
                 validate: Callable[[], dict] | None = None, checkpoint: Callable[[dict], None] | None = None,
                 score_key: str = "score") -> TrainResult:
    """Train ``model`` with Adam on ``step_loss()`` (one step's loss, drawn and computed by the caller).

    ``param_groups`` (Adam's, default: all of ``model``'s parameters at ``settings.lr``) may give
    groups their own rates; the schedule scales each. Every ``settings.log_every`` steps and at
    the end, rank 0 logs ``{"stage", "step", "train_loss", "seconds"}`` plus what ``validate()``
    returns; the best ``score_key`` so far is handed to ``checkpoint(entry)``. A loss that is not
    finite stops the run with :class:`TrainingDiverged`.
    """
    rank, world = distributed_context()
    parameters = [p for p in model.parameters() if p.requires_grad]
    if world > 1:
        _broadcast(model)
    opt = torch.optim.Adam(list(param_groups) if param_groups is not None else parameters, lr=settings.lr)
    budget = TrainingBudget(settings.steps, settings.time_limit_s, settings.lr_floor)
    result = TrainResult(0, 0.0)
    running, since_log, progress = 0.0, 0, 0.0
    for step in range(1, settings.steps + 1):
        budget.set_lr(opt, progress)
        opt.zero_grad(set_to_none=True)
        loss = step_loss()
        if not _finite_on_every_rank(loss, world):
            raise TrainingDiverged(f"the {stage} training diverged at step {step} (its loss is no longer finite): "
                                   "try a lower learning rate")
        loss.backward()
        if world > 1:
            _average_gradients(parameters, world)
        if settings.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters, settings.clip_grad_norm)
        opt.step()
        running += float(loss.detach())
        since_log += 1
        result.steps = step
        progress = budget.progress(step)
        if rank == 0 and (step % settings.log_every == 0 or progress >= 1):
            entry = {"stage": stage, "step": step, "train_loss": running / since_log, "seconds": budget.seconds()}
            running, since_log = 0.0, 0
            if validate is not None:
                entry.update(validate())
                if result.best is None or entry[score_key] > result.best[score_key]:
                    result.best = entry
                    if checkpoint is not None:
                        checkpoint(entry)
            result.history.append(entry)
            if log is not None:
                log(entry)
        if progress >= 1:
            break
    result.seconds = budget.seconds()
    if world > 1:
        dist.barrier()
    return result


def _finite_on_every_rank(loss: torch.Tensor, world: int) -> bool:
    """Whether every rank's loss is finite: the ranks stop together, none waits for a stopped one."""
    finite = torch.isfinite(loss.detach()).float().reshape(1)
    if world > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


def _broadcast(model: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (ranks may have initialised differently)."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor, 0)


def _average_gradients(parameters: list[torch.Tensor], world: int) -> None:
    for p in parameters:
        if p.grad is None:  # unused this step on this rank: a zero contribution, so that ranks stay in step
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= world


def train_meta(learner: MetaLearner, next_batch: Callable[[], tuple], loss_fn: TaskLoss,
               settings: TrainingSettings, device: torch.device, *, inner_loss_fn: TaskLoss | None = None,
               validate: Callable[[MetaLearner], dict] | None = None,
               checkpoint: Callable[[MetaLearner, dict], None] | None = None, log: Log | None = None,
               stage: str = "meta-learning") -> TrainResult:
    """Meta-learning with :func:`run_training`: each step's loss is the outer loss of the learner
    on ``next_batch()`` (``(context, target)`` on the CPU). ``inner_loss_fn`` is what the inner
    loop adapts on (default: ``loss_fn``)."""
    learner.to(device)

    def step_loss() -> torch.Tensor:
        context, target = _to(next_batch(), device)
        return learner(context, target, loss_fn, inner_loss_fn)

    return run_training(learner, step_loss, settings, stage=stage, log=log,
                        validate=None if validate is None else lambda: validate(learner),
                        checkpoint=None if checkpoint is None else lambda entry: checkpoint(learner, entry))


def _to(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    return type(batch)(_to(b, device) for b in batch)


def json_logger(path: str | Path | None) -> Log:
    """A log that prints each entry as a JSON line and appends it to ``path`` (if any)."""

    def log(entry: dict) -> None:
        line = json.dumps(entry)
        print(line, flush=True)
        if path is not None:
            with open(path, "a") as f:
                f.write(line + "\n")

    return log

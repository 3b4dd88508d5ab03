"""Meta-training loop: one process (CPU or GPU) or several with ``torchrun`` (DDP).

Under ``torchrun`` every rank draws its own tasks (seed + rank), the learner is wrapped in
``DistributedDataParallel`` so the outer gradients are averaged, and only rank 0 validates,
logs and writes files.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .meta import MetaLearner, TaskLoss


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
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return dist.get_rank(), dist.get_world_size()


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


def train_meta(learner: MetaLearner, next_batch: Callable[[], tuple], loss_fn: TaskLoss, steps: int, lr: float,
               device: torch.device, validate: Callable[[MetaLearner], dict] | None = None,
               validate_every: int = 250, log: Callable[[dict], None] | None = None,
               checkpoint: Callable[[MetaLearner, dict], None] | None = None,
               score_key: str = "score", time_limit_s: float | None = None,
               inner_loss_fn: TaskLoss | None = None) -> TrainResult:
    """Adam on the outer loss; ``next_batch()`` returns ``(context, target)`` on the CPU.

    ``inner_loss_fn`` is what the inner loop adapts on (default: ``loss_fn``).
    ``validate`` (rank 0) returns metrics; the learner state with the highest
    ``metrics[score_key]`` is handed to ``checkpoint``.
    """
    rank, world = distributed_context()
    learner.to(device)
    model = DistributedDataParallel(learner) if world > 1 else learner
    opt = torch.optim.Adam(learner.parameters(), lr=lr)
    budget = TrainingBudget(steps, time_limit_s)
    result = TrainResult(0, 0.0)
    running, since_log, progress = 0.0, 0, 0.0
    for step in range(1, steps + 1):
        budget.set_lr(opt, progress)
        ctx, tgt = _to(next_batch(), device)
        loss = model(ctx, tgt, loss_fn, inner_loss_fn)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(learner.parameters(), 1.0)
        opt.step()
        running += float(loss.detach())
        since_log += 1
        result.steps = step
        progress = budget.progress(step)
        if rank == 0 and (step % validate_every == 0 or progress >= 1):
            entry = {"step": step, "train_loss": running / since_log, "seconds": budget.seconds()}
            running, since_log = 0.0, 0
            if validate is not None:
                entry.update(validate(learner))
                if result.best is None or entry[score_key] > result.best[score_key]:
                    result.best = entry
                    if checkpoint is not None:
                        checkpoint(learner, entry)
            result.history.append(entry)
            if log is not None:
                log(entry)
        if progress >= 1:
            break
    result.seconds = budget.seconds()
    if world > 1:
        dist.barrier()
    return result


def _to(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    return type(batch)(_to(b, device) for b in batch)


def json_logger(path: str | Path | None) -> Callable[[dict], None]:
    def log(entry: dict) -> None:
        line = json.dumps(entry)
        print(line, flush=True)
        if path is not None:
            with open(path, "a") as f:
                f.write(line + "\n")

    return log

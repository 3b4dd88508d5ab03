"""Meta-training loop: one process (CPU or GPU) or several with ``torchrun`` (DDP).

Under ``torchrun`` every rank draws its own tasks (seed + rank), the learner is wrapped in
``DistributedDataParallel`` so the outer gradients are averaged, and only rank 0 validates,
logs and writes files.
"""

from __future__ import annotations

import json
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


def any_rank(flag: bool, world: int) -> bool:
    """True on every rank when it is true on any (ranks that stop on a time limit stop together)."""
    if world == 1:
        return flag
    value = torch.tensor(float(flag))
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


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
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr * 0.05)
    result = TrainResult(0, 0.0)
    start = time.perf_counter()
    running, since_log = 0.0, 0
    for step in range(1, steps + 1):
        ctx, tgt = _to(next_batch(), device)
        loss = model(ctx, tgt, loss_fn, inner_loss_fn)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(learner.parameters(), 1.0)
        opt.step()
        sched.step()
        running += float(loss.detach())
        since_log += 1
        result.steps = step
        out_of_time = time_limit_s is not None and time.perf_counter() - start > time_limit_s
        if rank == 0 and (step % validate_every == 0 or step == steps or out_of_time):
            entry = {"step": step, "train_loss": running / since_log, "seconds": time.perf_counter() - start}
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
        if out_of_time:
            break
    result.seconds = time.perf_counter() - start
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

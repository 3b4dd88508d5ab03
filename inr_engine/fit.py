"""Test-time fitting as a generator that yields after every step.

The CLI draws a progress bar from it; a GUI worker pushes each step's prediction to the
scene; cancelling is simply to stop iterating. The first ``meta_steps`` steps follow the
meta-learned inner loop exactly (SGD with the learned step sizes, as in training); later steps,
and parameters without a learned step size, use Adam at ``adam_lr``, since step sizes learned
for a few steps are not meant for hundreds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

Params = dict[str, torch.Tensor]


@dataclass
class FitStep:
    """One step's result. ``params`` are the live tensors the next step keeps updating:
    clone them to keep this step's state."""

    step: int
    loss: float
    params: Params
    seconds: float


def fit(params: Params, loss_fn: Callable[[Params], torch.Tensor], steps: int,
        step_sizes: Params | None = None, meta_steps: int = 0, adam_lr: float = 1e-4) -> Iterator[FitStep]:
    """Minimise ``loss_fn(params)`` for ``steps`` steps, yielding after each.

    ``params`` are copied: the caller's tensors (e.g. a prior's weights) are never modified.
    """
    params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    adam = None
    start = time.perf_counter()
    for step in range(1, steps + 1):
        loss = loss_fn(params)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at fitting step {step}")
        grads = torch.autograd.grad(loss, list(params.values()))
        meta = step_sizes if step_sizes is not None and step <= meta_steps else {}
        with torch.no_grad():
            for (k, p), g in zip(params.items(), grads):
                if k in meta:
                    p.sub_(meta[k] * g)
                    p.grad = None
                else:
                    p.grad = g
            if len(meta) < len(params):
                if adam is None:
                    adam = torch.optim.Adam(params.values(), lr=adam_lr)
                adam.step()
        yield FitStep(step, float(loss.detach()), params, time.perf_counter() - start)

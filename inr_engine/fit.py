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


class Adam:
    """``torch.optim.Adam`` with its default settings, step for step the same arithmetic as its
    single-tensor implementation (the one it runs on CPU tensors), for the fit's parameters.

    Constructing ``torch.optim.Adam`` imports ``torch._dynamo``: 0.8 s, which a one-off fit (every
    command-line run, the first fit in Slicer) paid in full at its first Adam step.
    """

    def __init__(self, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.lr, (self.beta1, self.beta2), self.eps = float(lr), betas, eps
        self.state: dict[str, tuple[int, torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def step(self, name: str, param: torch.Tensor, grad: torch.Tensor) -> None:
        """One step of the parameter called ``name`` (its moments are kept under that name)."""
        count, exp_avg, exp_avg_sq = self.state.get(name) or (0, torch.zeros_like(param), torch.zeros_like(param))
        count += 1
        exp_avg.lerp_(grad, 1 - self.beta1)
        exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        step_size = self.lr / (1 - self.beta1 ** float(count))
        denom = (exp_avg_sq.sqrt() / (1 - self.beta2 ** float(count)) ** 0.5).add_(self.eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)
        self.state[name] = (count, exp_avg, exp_avg_sq)


def fit(params: Params, loss_fn: Callable[[Params], torch.Tensor | tuple[torch.Tensor, Params]], steps: int,
        step_sizes: Params | None = None, meta_steps: int = 0, adam_lr: float = 1e-4) -> Iterator[FitStep]:
    """Minimise ``loss_fn(params)`` for ``steps`` steps, yielding after each.

    ``loss_fn`` returns the loss (its gradients then come from autograd), or the loss and its
    gradient with respect to every parameter, by name (computed by hand, without a graph).
    ``params`` are copied: the caller's tensors (e.g. a prior's weights) are never modified.
    """
    params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    adam = Adam(adam_lr)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        loss = loss_fn(params)
        loss, by_name = loss if isinstance(loss, tuple) else (loss, None)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at fitting step {step}")
        grads = (torch.autograd.grad(loss, list(params.values())) if by_name is None
                 else [by_name[k] for k in params])
        meta = step_sizes if step_sizes is not None and step <= meta_steps else {}
        with torch.no_grad():
            for (k, p), g in zip(params.items(), grads):
                if k in meta:
                    p.sub_(meta[k] * g)
                else:
                    adam.step(k, p, g)
        yield FitStep(step, float(loss.detach()), params, time.perf_counter() - start)

"""Meta-learning of INR initialisations: MAML (second and first order) and Meta-SGD.

The inner optimiser is plain SGD, explicitly: ``theta <- theta - lr * grad``. With MAML the
step size is one scalar; with Meta-SGD (Li et al. 2017) it is a learned tensor per parameter.
All tasks of a meta-batch adapt at once: parameters carry a leading task dimension and the
network runs through ``vmap(functional_call)``, so one forward serves every per-task copy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call, vmap

Params = dict[str, torch.Tensor]
Algorithm = Literal["maml", "fomaml", "metasgd", "fometasgd"]
ALGORITHMS: tuple[str, ...] = ("maml", "fomaml", "metasgd", "fometasgd")
STRAINER = "strainer"  # config.algorithm of an initialisation fitted by STRAINER: no meta-learned steps

# loss_fn(model_output, labels, params) -> per-task loss, shape (T,)
TaskLoss = Callable[[torch.Tensor, torch.Tensor, Params], torch.Tensor]


def batched_forward(model: nn.Module, params: Params, *inputs: torch.Tensor) -> torch.Tensor:
    """Run ``model`` once per task: ``params`` and ``inputs`` carry a leading task dimension."""

    def single(p: Params, *x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, p, x)

    return vmap(single)(params, *inputs)


def sub_params(params: Params, prefix: str) -> Params:
    """The parameters of the sub-module named ``prefix`` (e.g. ``"siren."``), with the prefix removed,
    ready for ``functional_call`` on that sub-module."""
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def expand_params(params: Params, tasks: int) -> Params:
    """Per-task copies of shared parameters (differentiable back to the originals)."""
    return {k: v.unsqueeze(0).expand(tasks, *v.shape) for k, v in params.items()}


class MetaLearner(nn.Module):
    """Holds the meta-learned initialisation ``model`` and the inner step sizes.

    ``adapted`` names the parameters the inner loop changes (default: all); the others are
    meta-learned but fixed during adaptation (MetaSeg's class head, NISF's network weights).
    ``forward`` returns the outer loss of a meta-batch, so the whole learner can be wrapped
    in ``DistributedDataParallel`` and trained like any module.
    """

    def __init__(self, model: nn.Module, algorithm: Algorithm = "metasgd", inner_steps: int = 5,
                 inner_lr: float = 1e-2, adapted: Iterable[str] | None = None):
        super().__init__()
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown meta-learning algorithm {algorithm!r}; choose from {ALGORITHMS}")
        if inner_steps < 1:
            raise ValueError("meta-learning needs at least one inner step")
        self.model = model
        self.algorithm = algorithm
        self.inner_steps = int(inner_steps)
        self.first_order = algorithm.startswith("fo")
        names = [k for k, _ in model.named_parameters()]
        self.adapted = names if adapted is None else [k for k in names if k in set(adapted)]
        if not self.adapted:
            raise ValueError("no parameter of the model is adapted in the inner loop")
        if algorithm.endswith("metasgd"):
            params = dict(model.named_parameters())
            self.inner_lrs = nn.ParameterDict(
                {_key(k): nn.Parameter(torch.full_like(params[k], inner_lr)) for k in self.adapted}
            )
        else:
            self.register_buffer("inner_lr", torch.tensor(float(inner_lr)))
            self.inner_lrs = None

    def step_sizes(self) -> Params:
        """Inner-loop step size per adapted parameter (a tensor broadcastable to the parameter)."""
        if self.inner_lrs is None:
            return {k: self.inner_lr for k in self.adapted}
        return {k: self.inner_lrs[_key(k)] for k in self.adapted}

    def load_initialisation(self, init: Params, step_sizes: Params | None) -> None:
        """Start from a saved initialisation and inner step sizes (the inverse of saving
        ``model.named_parameters()`` and :meth:`step_sizes`); shapes must match. Without step
        sizes (an initialisation that was not meta-learned) the learner keeps its own."""
        with torch.no_grad():
            for k, p in self.model.named_parameters():
                p.copy_(init[k])
            for k, size in (self.step_sizes() if step_sizes is not None else {}).items():
                size.copy_(step_sizes[k] if self.inner_lrs is not None else step_sizes[k].flatten()[0])

    def adapt(self, params: Params, inputs: tuple[torch.Tensor, ...], labels: torch.Tensor, loss_fn: TaskLoss,
              steps: int | None = None, create_graph: bool | None = None) -> Params:
        """``steps`` inner SGD steps on every task of the batch at once; returns adapted params."""
        steps = self.inner_steps if steps is None else steps
        create_graph = (not self.first_order) if create_graph is None else create_graph
        lrs = self.step_sizes()
        for _ in range(steps):
            loss = loss_fn(batched_forward(self.model, params, *inputs), labels, params).sum()
            grads = torch.autograd.grad(loss, [params[k] for k in self.adapted], create_graph=create_graph)
            params = {**params, **{k: params[k] - lrs[k] * g for k, g in zip(self.adapted, grads)}}
        return params

    def forward(self, context: tuple[tuple[torch.Tensor, ...], torch.Tensor],
                target: tuple[tuple[torch.Tensor, ...], torch.Tensor], loss_fn: TaskLoss,
                inner_loss_fn: TaskLoss | None = None) -> torch.Tensor:
        """Outer loss: adapt on each task's context, score the adapted network on its target.

        ``inner_loss_fn`` (default ``loss_fn``) is what adaptation minimises; MetaSeg adapts on
        intensities only, exactly as at test time, and is scored on labels too.
        The target loss is averaged over every inner step (as in MAML++'s multi-step loss), not
        only the last: users watch every step's result, so each must be good, not just step K.
        """
        ctx_inputs, ctx_labels = context
        tgt_inputs, tgt_labels = target
        inner_loss_fn = loss_fn if inner_loss_fn is None else inner_loss_fn
        params = expand_params(dict(self.model.named_parameters()), ctx_labels.shape[0])
        losses = []
        for _ in range(self.inner_steps):
            params = self.adapt(params, ctx_inputs, ctx_labels, inner_loss_fn, steps=1)
            losses.append(loss_fn(batched_forward(self.model, params, *tgt_inputs), tgt_labels, params).mean())
        return torch.stack(losses).mean()


def _key(name: str) -> str:
    # ParameterDict keys may not contain dots.
    return name.replace(".", "__")

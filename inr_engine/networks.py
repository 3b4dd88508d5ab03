"""Network building blocks: SIREN and real Gabor (WIRE) layers, MLP trunks and heads.

Every module here is an ordinary ``nn.Module`` with no state beyond its parameters, so
``torch.func.functional_call`` can run it with a different parameter dict: one module, a
batch of per-volume copies (``vmap``) and the meta-learning inner loop share one forward.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SineLayer(nn.Module):
    """``sin(omega_0 * (W x + b))`` with the SIREN initialisation (Sitzmann et al. 2020).

    First layer: ``W ~ U(-1/fan_in, 1/fan_in)``; later layers:
    ``W ~ U(-sqrt(6/fan_in)/omega_0, +sqrt(6/fan_in)/omega_0)``; biases keep PyTorch's default.
    """

    def __init__(self, in_features: int, out_features: int, omega_0: float = 30.0, is_first: bool = False):
        super().__init__()
        self.omega_0 = float(omega_0)
        self.is_first = is_first
        self.linear = nn.Linear(in_features, out_features)
        with torch.no_grad():
            bound = 1.0 / in_features if is_first else math.sqrt(6.0 / in_features) / self.omega_0
            self.linear.weight.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.omega_0 * self.linear(x))


class GaborLayer(nn.Module):
    """Real Gabor wavelet unit (WIRE, Saragadam et al. 2023), as NISF uses it:
    ``cos(omega_0 * A x) * exp(-(sigma_0 * B x)^2)`` with separate linear maps A and B."""

    def __init__(self, in_features: int, out_features: int, omega_0: float = 10.0, sigma_0: float = 10.0):
        super().__init__()
        self.omega_0 = float(omega_0)
        self.sigma_0 = float(sigma_0)
        self.freq = nn.Linear(in_features, out_features)
        self.scale = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cos(self.omega_0 * self.freq(x)) * torch.exp(-((self.sigma_0 * self.scale(x)) ** 2))


class Siren(nn.Module):
    """SIREN trunk: ``hidden_layers + 1`` sine layers, then a linear output layer.

    ``features(x)`` returns the last sine layer's output (the penultimate feature that class
    heads read, as in MetaSeg); ``forward(x)`` applies the linear output layer to it.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        hidden_layers: int,
        out_features: int,
        omega_0: float = 30.0,
        first_omega_0: float = 30.0,
    ):
        super().__init__()
        layers = [SineLayer(in_features, hidden_features, first_omega_0, is_first=True)]
        layers += [SineLayer(hidden_features, hidden_features, omega_0) for _ in range(hidden_layers)]
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(hidden_features, out_features)
        with torch.no_grad():
            bound = math.sqrt(6.0 / hidden_features) / omega_0
            self.out.weight.uniform_(-bound, bound)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


class GaborResMLP(nn.Module):
    """Residual MLP of real Gabor layers (NISF backbone): ``h_{l+1} = h_l + gabor_l(h_l)``."""

    def __init__(self, in_features: int, hidden_features: int, hidden_layers: int, omega_0: float = 10.0,
                 sigma_0: float = 10.0):
        super().__init__()
        self.inp = GaborLayer(in_features, hidden_features, omega_0, sigma_0)
        self.blocks = nn.ModuleList(
            GaborLayer(hidden_features, hidden_features, omega_0, sigma_0) for _ in range(hidden_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return h


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)

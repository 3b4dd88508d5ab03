"""Network building blocks: SIREN and real Gabor (WIRE) layers, MLP trunks and heads.

Every module here is an ordinary ``nn.Module`` with no state beyond its parameters, so
``torch.func.functional_call`` can run it with a different parameter dict: one module, a
batch of per-volume copies (``vmap``) and the meta-learning inner loop share one forward.
"""

from __future__ import annotations

import math
import platform

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


# --------------------------------------------------------------------------- fast evaluation of one network
# Test-time fitting and decoding run one network on many points, where the cost is the
# (points x features) activations, not the weights. The functions below compute the same functions
# as the modules above from a parameter dict, with omega_0 (and sigma_0) folded into each layer's
# weights and bias: ``sin(omega (W x + b)) = sin((omega W) x + omega b)``, so every layer is one
# matrix product with its bias and one activation, without a scaling pass over the activations.
# They agree with the modules to float32 rounding. The ``*_inference`` ones work in place and
# are for ``torch.no_grad`` / ``torch.inference_mode`` only; give them chunks of points small
# enough to stay in the CPU's caches.

Folded = tuple[torch.Tensor, torch.Tensor]  # (omega W, omega b) of one sine layer
GaborFolded = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # omega A, omega a, sigma B, sigma b

_onednn_linear: bool | None = None


def _onednn_linear_works() -> bool:
    """Whether this PyTorch has oneDNN's fused linear for CPU tensors, on an x86-64 CPU (elsewhere the
    platform's BLAS is the fast one), and it computes ``x W^T + b`` (checked once)."""
    global _onednn_linear
    if _onednn_linear is None:
        _onednn_linear = False
        if platform.machine().lower() not in ("x86_64", "amd64"):
            return False
        try:
            x = torch.linspace(-1, 1, 80).reshape(16, 5)  # no random numbers: the global generator stays as it is
            w, b = x[:3].flip(1), torch.linspace(0, 1, 3)
            _onednn_linear = bool(torch.backends.mkldnn.is_available()) and torch.allclose(
                torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], ""), torch.addmm(b, x, w.t()), atol=1e-5)
        except (AttributeError, RuntimeError, TypeError):
            _onednn_linear = False
    return _onednn_linear


def dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` (``F.linear``) for work without autograd.

    Float32 tensors on an x86-64 CPU go through oneDNN's linear, the kernel PyTorch's own inference
    compiler uses: the same float32 arithmetic (equal results here), but 2.5 times the speed of
    ``addmm``'s BLAS (MKL) for 16,384 x 128 x 128 on 2 threads of an AMD EPYC, where MKL does not
    use AVX-512. Anything else, and any call that autograd would have to differentiate, is
    ``F.linear``.
    """
    if (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 2
            and not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)))
            and _onednn_linear_works()):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return torch.nn.functional.linear(x, weight, bias)


def folded_sine_layers(siren: Siren, params: dict[str, torch.Tensor], prefix: str = "") -> list[Folded]:
    """``(omega_0 W, omega_0 b)`` of each sine layer of ``siren`` whose parameters ``params`` holds
    under ``prefix`` (e.g. ``"siren."``)."""
    return [(params[f"{prefix}body.{n}.linear.weight"] * layer.omega_0,
             params[f"{prefix}body.{n}.linear.bias"] * layer.omega_0) for n, layer in enumerate(siren.body)]


def sine_stack_inference(x: torch.Tensor, layers: list[Folded]) -> torch.Tensor:
    """The SIREN body (``Siren.features``) on points ``x`` (n, in), with folded layers."""
    for weight, bias in layers:
        x = dense(x, weight, bias).sin_()
    return x


def folded_gabor(layer: GaborLayer, params: dict[str, torch.Tensor], prefix: str) -> GaborFolded:
    """``(omega_0 A, omega_0 a, sigma_0 B, sigma_0 b)`` of a :class:`GaborLayer` (``freq`` = A x + a,
    ``scale`` = B x + b) whose parameters ``params`` holds under ``prefix``; differentiable."""
    return (params[f"{prefix}freq.weight"] * layer.omega_0, params[f"{prefix}freq.bias"] * layer.omega_0,
            params[f"{prefix}scale.weight"] * layer.sigma_0, params[f"{prefix}scale.bias"] * layer.sigma_0)


def folded_gabor_trunk(trunk: GaborResMLP, params: dict[str, torch.Tensor], prefix: str = "") -> list[GaborFolded]:
    """The folded input layer and residual blocks of ``trunk`` (see :func:`folded_gabor`)."""
    return [folded_gabor(trunk.inp, params, f"{prefix}inp.")] + [
        folded_gabor(block, params, f"{prefix}blocks.{n}.") for n, block in enumerate(trunk.blocks)]


def gabor(x: torch.Tensor, layer: GaborFolded) -> torch.Tensor:
    """``GaborLayer`` on points ``x`` (n, in) with a folded layer (differentiable)."""
    freq_w, freq_b, scale_w, scale_b = layer
    return torch.cos(torch.addmm(freq_b, x, freq_w.t())) * torch.exp(-torch.addmm(scale_b, x, scale_w.t()).square())


def gabor_trunk(x: torch.Tensor, layers: list[GaborFolded]) -> torch.Tensor:
    """``GaborResMLP`` on points ``x``: the input layer, then ``h + gabor(h)`` per block (differentiable)."""
    h = gabor(x, layers[0])
    for layer in layers[1:]:
        h = h + gabor(h, layer)
    return h


# exp(-s^2) for s^2 beyond this is below float32's smallest normal number (about 1.2e-38), which
# PyTorch's exp computes on a path ten times slower; decoding takes this floor instead, a
# difference of at most 1.2e-38 in the envelope
ENVELOPE_EXPONENT_MAX = 87.0


def gabor_inference(x: torch.Tensor, layer: GaborFolded) -> torch.Tensor:
    """:func:`gabor` in place on two fresh activations."""
    freq_w, freq_b, scale_w, scale_b = layer
    envelope = dense(x, scale_w, scale_b).square_().clamp_(max=ENVELOPE_EXPONENT_MAX).neg_().exp_()
    return dense(x, freq_w, freq_b).cos_().mul_(envelope)


def gabor_trunk_inference(x: torch.Tensor, layers: list[GaborFolded]) -> torch.Tensor:
    """:func:`gabor_trunk` with the residual sums in place."""
    h = gabor_inference(x, layers[0])
    for layer in layers[1:]:
        h.add_(gabor_inference(h, layer))
    return h


# the float32 arrays of one chunk's forward and backward pass in SirenFitGradient, which then stay
# in a CPU's last-level cache: for MetaSeg's 5 x 128 sine layers, 2,234 points (20 fitting steps
# took 0.76 s on 2 threads, against 1.0 s with 8,192 points per chunk)
FIT_CHUNK_BYTES = 12 * 1024**2


class SirenFitGradient:
    """The mean squared error of a :class:`Siren` against a signal and its gradient with respect to
    every parameter of the SIREN, by hand: the test-time fit's step without autograd.

    Autograd keeps every layer's activations of all the points and allocates a fresh array for each
    activation, cosine, product and input gradient of every step. Here the points go through
    forward and backward ``chunk`` at a time, so a chunk's activations stay in the CPU's caches; a
    layer's pre-activations become, in place, its cosines and then its gradients; the sine
    activations live in arrays kept from step to step; the weight gradients add up over the chunks.
    omega_0 is folded into the weights. The value and the gradients equal autograd's on
    ``Siren.forward`` to float32 rounding.
    """

    def __init__(self, siren: Siren, prefix: str = "", chunk: int | None = None):
        self.siren = siren
        self.prefix = prefix
        # a chunk's pass holds 2 arrays per sine layer and a gradient: within FIT_CHUNK_BYTES
        arrays = 2 * len(siren.body) + 1
        self.chunk = chunk or max(256, FIT_CHUNK_BYTES // (4 * siren.out.in_features * arrays))
        self._activations: list[torch.Tensor] = []

    def _activation_arrays(self, points: int, like: torch.Tensor) -> list[torch.Tensor]:
        """One (points, width) array per sine layer, kept while big enough."""
        width = self.siren.out.in_features
        if (not self._activations or self._activations[0].shape[0] < points
                or self._activations[0].device != like.device or self._activations[0].dtype != like.dtype):
            self._activations = [like.new_empty(points, width) for _ in self.siren.body]
        return self._activations

    def __call__(self, params: dict[str, torch.Tensor], x: torch.Tensor,
                 target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``mean((siren(x) - target)^2)`` for points ``x`` (n, in) and ``target`` (n, out) (or (n,)
        for one output), and its gradient: a dict over the SIREN's parameter names in ``params``."""
        p = self.prefix
        omegas = [layer.omega_0 for layer in self.siren.body]
        depth = len(omegas)
        with torch.no_grad():
            weights = [params[f"{p}body.{n}.linear.weight"] * omegas[n] for n in range(depth)]
            biases = [params[f"{p}body.{n}.linear.bias"] * omegas[n] for n in range(depth)]
            transposed = [w.t().contiguous() for w in weights]
            out_w, out_b = params[f"{p}out.weight"], params[f"{p}out.bias"]
            target = target.reshape(len(x), -1)
            scale = 2.0 / target.numel()  # d mean(r^2) / d r
            weight_grads = [torch.zeros_like(w) for w in weights]
            bias_grads = [torch.zeros_like(b) for b in biases]
            out_w_grad, out_b_grad = torch.zeros_like(out_w), torch.zeros_like(out_b)
            squares = x.new_zeros(())
            buffers = self._activation_arrays(min(self.chunk, len(x)), x)
            for start in range(0, len(x), self.chunk):
                points = x[start:start + self.chunk]
                pre, act = [], []
                h = points
                for n in range(depth):
                    pre.append(dense(h, weights[n], biases[n]))
                    h = torch.sin(pre[n], out=buffers[n][:len(points)])
                    act.append(h)
                residual = dense(h, out_w, out_b).sub_(target[start:start + self.chunk])
                squares += residual.pow(2).sum()
                d_out = residual.mul_(scale)
                out_w_grad.addmm_(d_out.t(), h)
                out_b_grad += d_out.sum(0)
                grad = d_out @ out_w
                for n in reversed(range(depth)):
                    d_pre = pre[n].cos_().mul_(grad)
                    weight_grads[n] += dense(d_pre.t(), (act[n - 1] if n else points).t())
                    bias_grads[n] += d_pre.sum(0)
                    if n:
                        grad = dense(d_pre, transposed[n])
            grads = {f"{p}out.weight": out_w_grad, f"{p}out.bias": out_b_grad}
            for n in range(depth):
                grads[f"{p}body.{n}.linear.weight"] = weight_grads[n].mul_(omegas[n])
                grads[f"{p}body.{n}.linear.bias"] = bias_grads[n].mul_(omegas[n])
        return squares / target.numel(), grads


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)

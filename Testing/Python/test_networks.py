"""SIREN initialisation (Sitzmann et al. 2020), activation statistics, real Gabor layers."""

from __future__ import annotations

import math

import torch
from torch.func import functional_call

from inr_engine.networks import GaborLayer, GaborResMLP, SineLayer, Siren, count_parameters


def _uniform_checks(w: torch.Tensor, bound: float) -> None:
    assert w.abs().max().item() <= bound * (1 + 1e-6)
    # U(-b, b): std b/sqrt(3), mean 0, and the whole range is used.
    assert abs(w.std().item() - bound / math.sqrt(3)) < 0.05 * bound
    assert abs(w.mean().item()) < 0.05 * bound
    assert w.abs().max().item() > 0.95 * bound
    # Roughly uniform: each quarter of [-b, b] holds about a quarter of the weights.
    hist = torch.histc(w.flatten(), bins=4, min=-bound, max=bound) / w.numel()
    assert torch.all((hist - 0.25).abs() < 0.04), hist


def test_first_layer_initialisation():
    torch.manual_seed(0)
    layer = SineLayer(3, 4096, omega_0=30.0, is_first=True)
    _uniform_checks(layer.linear.weight.detach(), 1.0 / 3)


def test_hidden_layer_initialisation():
    torch.manual_seed(0)
    fan_in = 256
    layer = SineLayer(fan_in, 256, omega_0=30.0)
    _uniform_checks(layer.linear.weight.detach(), math.sqrt(6.0 / fan_in) / 30.0)


def test_siren_layers_and_output_initialisation():
    torch.manual_seed(0)
    net = Siren(3, 128, 3, 2, omega_0=30.0, first_omega_0=30.0)
    layers = list(net.body)
    assert len(layers) == 4 and layers[0].is_first and not any(lay.is_first for lay in layers[1:])
    assert layers[0].linear.weight.abs().max() <= 1.0 / 3
    hidden_bound = math.sqrt(6.0 / 128) / 30.0
    for lay in layers[1:]:
        assert lay.linear.weight.abs().max() <= hidden_bound * (1 + 1e-6)
    assert net.out.weight.abs().max() <= hidden_bound * (1 + 1e-6)
    assert count_parameters(net) == (3 * 128 + 128) + 3 * (128 * 128 + 128) + (128 * 2 + 2)


def test_deep_siren_activations_keep_arcsine_distribution():
    """With the SIREN initialisation, every sine layer's output stays arcsine-distributed on [-1, 1]
    (std 1/sqrt(2)) through a deep network instead of collapsing or saturating."""
    torch.manual_seed(0)
    net = Siren(2, 256, 8, 1)
    x = torch.rand(8192, 2) * 2 - 1
    h = x
    with torch.no_grad():
        for n, layer in enumerate(net.body):
            h = layer(h)
            std = h.std().item()
            assert abs(std - 1 / math.sqrt(2)) < 0.07, (n, std)
            # Arcsine: P(|sin| > cos(pi/8)) = 1/4 ... mass piles up near +-1, unlike a uniform or Gaussian.
            frac_outer = (h.abs() > math.cos(math.pi / 8)).float().mean().item()
            assert abs(frac_outer - 0.25) < 0.05, (n, frac_outer)
            assert abs(h.mean().item()) < 0.1
        out = net.out(h)
    assert torch.isfinite(out).all()
    assert 1e-3 < out.std().item() < 10.0


def test_gabor_layer_formula_and_shape():
    torch.manual_seed(0)
    layer = GaborLayer(3, 7, omega_0=10.0, sigma_0=5.0)
    x = torch.randn(11, 5, 3)
    y = layer(x)
    assert y.shape == (11, 5, 7)
    a = x @ layer.freq.weight.T + layer.freq.bias
    b = x @ layer.scale.weight.T + layer.scale.bias
    expected = torch.cos(10.0 * a) * torch.exp(-((5.0 * b) ** 2))
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)
    assert y.abs().max() <= 1.0


def test_gabor_res_mlp_is_residual():
    torch.manual_seed(0)
    net = GaborResMLP(3, 16, 2)
    x = torch.randn(9, 3)
    h = net.inp(x)
    for block in net.blocks:
        h = h + block(h)
    torch.testing.assert_close(net(x), h)
    assert net(x).shape == (9, 16)


def test_functional_call_matches_module():
    torch.manual_seed(0)
    for net, x in [(Siren(3, 32, 2, 4), torch.rand(50, 3) * 2 - 1), (GaborResMLP(3, 16, 2), torch.randn(50, 3))]:
        params = dict(net.named_parameters())
        torch.testing.assert_close(functional_call(net, params, (x,)), net(x), rtol=0, atol=0)
        # Other parameters give another function: the module holds no hidden state.
        shifted = {k: v + 0.01 for k, v in params.items()}
        assert not torch.allclose(functional_call(net, shifted, (x,)), net(x))


def test_siren_features_feed_output():
    torch.manual_seed(0)
    net = Siren(3, 32, 1, 2)
    x = torch.rand(20, 3)
    torch.testing.assert_close(net.out(net.features(x)), net(x))
    assert net.features(x).shape == (20, 32)

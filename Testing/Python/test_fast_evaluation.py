"""The fast evaluation used by the test-time fits and decoding computes the networks'
own functions: folded frequencies, oneDNN's linear, the hand-written SIREN gradient, the NISF
latent folded into a bias, chunked decoding; and a fit on hand-written gradients follows the
autograd fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import functional_call

from inr_engine.data import SAMPLES_DIR
from inr_engine.decode import decode_chunk
from inr_engine.fit import fit
from inr_engine.io import read_volume
from inr_engine.meta import sub_params
from inr_engine.networks import (
    GaborResMLP,
    Siren,
    SirenFitGradient,
    dense,
    folded_gabor_trunk,
    folded_sine_layers,
    gabor_trunk,
    gabor_trunk_inference,
    sine_stack_inference,
)
from inr_engine.segmentation import metaseg, nisf
from inr_engine.segmentation.volume import predict_labels
from inr_engine.shape.model import OccupancyINR, ShapeConfig, occupancy_inference, occupancy_logits


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-4) -> bool:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max()) <= rel * max(float(b.abs().max()), 1.0)


def test_dense_is_linear_with_and_without_autograd():
    torch.manual_seed(0)
    x, w, b = torch.randn(300, 20), torch.randn(7, 20), torch.randn(7)
    expected = torch.nn.functional.linear(x, w, b)
    assert _close(dense(x, w, b), expected, 1e-5)
    assert _close(dense(x, w), x @ w.t(), 1e-5)
    assert _close(dense(x.t().contiguous().t(), w.t().contiguous().t(), b), expected, 1e-5)  # strided
    w.requires_grad_(True)  # autograd needs a differentiable path: gradients are right
    dense(x, w, b).sum().backward()
    assert torch.allclose(w.grad, x.sum(0).expand(7, 20), atol=1e-4)
    state = torch.random.get_rng_state()
    dense(x, w.detach(), b)
    assert torch.equal(state, torch.random.get_rng_state())  # checking oneDNN draws no random numbers


def test_folded_siren_and_gabor_trunk_are_the_modules():
    torch.manual_seed(0)
    siren, trunk = Siren(3, 32, 3, 1, 30.0, 30.0), GaborResMLP(3, 32, 2, 10.0, 10.0)
    x = torch.rand(2000, 3) * 2 - 1
    with torch.no_grad():
        sines = sine_stack_inference(x, folded_sine_layers(siren, dict(siren.named_parameters())))
        assert _close(sines, siren.features(x))
        layers = folded_gabor_trunk(trunk, dict(trunk.named_parameters()))
        assert _close(gabor_trunk(x, layers), trunk(x))
        assert _close(gabor_trunk_inference(x, layers), trunk(x))
        trunk.inp.scale.weight.mul_(20)  # envelopes exp(-s^2) far below float32's smallest normal number
        layers = folded_gabor_trunk(trunk, dict(trunk.named_parameters()))
        assert float((trunk.inp.scale(x) * trunk.inp.sigma_0).square().max()) > 1000
        assert _close(gabor_trunk_inference(x, layers), trunk(x))
    assert _close(gabor_trunk(x, folded_gabor_trunk(trunk, dict(trunk.named_parameters()))), trunk(x))


@pytest.mark.parametrize("encoded", [False, True])
def test_folded_occupancy_network_is_the_module(encoded):
    """The shape fit's folded forward and the decoding's in-place one compute the module's logits,
    and the fit's has the module's gradients."""
    torch.manual_seed(0)
    cfg = ShapeConfig(hidden_features=32, encoder_channels=(8, 16) if encoded else ())
    model = OccupancyINR(cfg)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    coords, evidence = torch.rand(700, 3) * 2 - 1, torch.rand(700, cfg.evidence_features) * 2 - 1
    expected = functional_call(model, params, (coords, evidence))
    folded = occupancy_logits(model, params, coords, evidence)
    assert _close(folded, expected)
    for a, b in zip(torch.autograd.grad(folded.square().sum(), list(params.values())),
                    torch.autograd.grad(expected.square().sum(), list(params.values()))):
        assert _close(a, b)
    with torch.no_grad():
        assert _close(occupancy_inference(model, params)(coords, evidence), expected)


@pytest.mark.parametrize("chunk", [64, 500, 4096])
def test_hand_written_siren_gradient_is_autograds(chunk):
    torch.manual_seed(0)
    siren = Siren(3, 32, 3, 2, 30.0, 30.0)
    params = {f"net.{k}": v.detach().clone().requires_grad_(True) for k, v in siren.named_parameters()}
    x, target = torch.rand(1000, 3) * 2 - 1, torch.rand(1000, 2)
    loss = (functional_call(siren, sub_params(params, "net."), (x,)) - target).pow(2).mean()
    grads = torch.autograd.grad(loss, list(params.values()))
    gradient = SirenFitGradient(siren, "net.", chunk)
    for points in (1000, 700, 1000):  # the kept activations follow the number of points
        value, by_name = gradient(params, x[:points], target[:points])
        if points == 1000:
            assert set(by_name) == set(params)
            assert value.item() == pytest.approx(loss.item(), rel=1e-5)
            for k, g in zip(params, grads):
                assert _close(by_name[k], g, 1e-4), k
    one = Siren(3, 16, 1, 1)  # one output: targets may be (n,)
    ones = dict(one.named_parameters())
    value, _ = SirenFitGradient(one)(ones, x, target[:, 0])
    assert value.item() == pytest.approx((one(x)[:, 0] - target[:, 0]).pow(2).mean().item(), rel=1e-5)


def test_fit_takes_gradients_from_the_loss_function():
    """``fit`` with (loss, gradients) from the loss function follows ``fit`` with autograd."""
    torch.manual_seed(0)
    siren = Siren(3, 32, 2, 1, 30.0, 30.0)
    start = {f"siren.{k}": v.detach() for k, v in siren.named_parameters()}
    x, target = torch.rand(800, 3) * 2 - 1, torch.rand(800)
    sizes = {k: torch.full_like(v, 1e-3) for k, v in start.items()}
    gradient = SirenFitGradient(siren, "siren.", 300)

    def autograd_loss(params):
        return (functional_call(siren, sub_params(params, "siren."), (x,))[:, 0] - target).pow(2).mean()

    by_hand = list(fit(start, lambda p: gradient(p, x, target), 6, sizes, 2, 1e-3))
    by_autograd = list(fit(start, autograd_loss, 6, sizes, 2, 1e-3))
    for a, b in zip(by_hand, by_autograd):
        assert a.loss == pytest.approx(b.loss, rel=1e-4)
    for k in start:
        assert _close(by_hand[-1].params[k].detach(), by_autograd[-1].params[k].detach(), 1e-3), k
        assert not torch.equal(by_hand[-1].params[k], start[k]), k


@pytest.fixture(scope="module")
def volume_and_segmenters():
    image = read_volume(SAMPLES_DIR / "hippocampus_004_image.nii.gz")
    tiny = metaseg.MetaSegSegmenter.from_learner(metaseg.new_learner(metaseg.MetaSegConfig(hidden_features=32)),
                                                 metaseg.MetaSegConfig(hidden_features=32))
    cfg = nisf.NISFConfig(latent_size=8, hidden_features=32, hidden_layers=2)
    torch.manual_seed(0)
    network = nisf.NISFNetwork(cfg)
    with torch.no_grad():
        network.latent.normal_()
    weights = {k: v.detach() for k, v in network.named_parameters()}
    steps = {k: torch.full_like(v, 1e-3) for k, v in weights.items()}
    tiny_nisf = nisf.NISFSegmenter(cfg, weights, steps)
    return tiny.prepare(image.array, image.affine), tiny, tiny_nisf


def test_segmenters_decode_their_networks(volume_and_segmenters):
    volume, seg_metaseg, seg_nisf = volume_and_segmenters
    coords = volume.coords[::7]
    for seg, params in ((seg_metaseg, seg_metaseg.init), (seg_nisf, seg_nisf.weights)):
        with torch.no_grad():
            expected = functional_call(seg.model, params, (coords,))
        assert _close(seg.logit_function(params)(coords), expected[:, 1:])
        labels = seg.labels(volume, params)
        assert labels.dtype == np.uint8 and labels.shape == volume.shape
        by_module = expected[:, 1:].argmax(-1).numpy()
        assert np.mean(labels.reshape(-1)[::7] == by_module) > 0.999
    assert _close(seg_nisf.intensity_logit(coords, seg_nisf.weights), expected[:, 0])


def test_labels_do_not_depend_on_the_chunk_size(volume_and_segmenters):
    volume, seg_metaseg, seg_nisf = volume_and_segmenters
    for seg, params in ((seg_metaseg, seg_metaseg.init), (seg_nisf, seg_nisf.weights)):
        fn = seg.logit_function(params)
        np.testing.assert_array_equal(predict_labels(fn, volume, 32, chunk=1000),
                                      predict_labels(fn, volume, 32, chunk=len(volume.coords)))
    assert decode_chunk(128) * 128 * 4 <= 4 * 1024**2 and decode_chunk(10**9) == 1024


def test_metaseg_fit_follows_the_autograd_fit(volume_and_segmenters):
    """The hand-written gradient fits the SIREN as autograd on the module would, step for step."""
    volume, seg, _ = volume_and_segmenters
    steps = list(seg.fit(volume, 5))
    generator = torch.Generator().manual_seed(0)  # the same voxels per step as MetaSegSegmenter.fit
    picks = [torch.randint(len(volume.coords), (seg.cfg.fit_points,), generator=generator) for _ in range(5)]
    picked = iter(picks)

    def loss(params):
        pick = next(picked)
        out = functional_call(seg.model.siren, sub_params(params, "siren."), (volume.coords[pick],))
        return (out[:, 0] - volume.intensity[pick]).pow(2).mean()

    siren = {k: v for k, v in seg.init.items() if k in seg.step_sizes}
    reference = list(fit(siren, loss, 5, seg.step_sizes, seg.cfg.inner_steps, seg.cfg.adam_lr))
    for a, b in zip(steps, reference):
        assert a.loss == pytest.approx(b.loss, rel=1e-4)
    for k in siren:
        assert _close(steps[-1].params[k].detach(), reference[-1].params[k].detach(), 1e-3), k


def test_nisf_fit_keeps_the_segmentation_head(volume_and_segmenters):
    volume, _, seg = volume_and_segmenters
    last = list(seg.fit(volume, 3))[-1]
    assert set(last.params) == set(seg.weights)
    assert all(torch.equal(last.params[k], seg.weights[k]) for k in seg.weights if k.startswith("segmentation."))
    assert not torch.equal(last.params["latent"], seg.weights["latent"])


def test_fit_adam_is_torch_adam_exactly():
    """``fit``'s Adam (no ``torch.optim``: constructing it imports ``torch._dynamo``, 0.8 s) takes the
    very steps ``torch.optim.Adam`` takes, after meta-learned SGD steps on some parameters."""
    torch.manual_seed(0)
    start = {"w": torch.randn(5, 4), "b": torch.randn(5), "c": torch.randn(3)}
    x = torch.randn(64, 4)

    def loss(p):
        return ((x @ p["w"].t() + p["b"]).sin().sum(1) - p["c"].sum()).pow(2).mean()

    sizes = {"w": torch.full((5, 4), 0.01)}  # "b" and "c" take Adam steps from the first step on
    ours = [{k: v.detach().clone() for k, v in st.params.items()} for st in fit(start, loss, 12, sizes, 3, 1e-2)]
    params = {k: v.clone().requires_grad_(True) for k, v in start.items()}
    adam = torch.optim.Adam(params.values(), lr=1e-2)
    for step in range(1, 13):
        grads = torch.autograd.grad(loss(params), list(params.values()))
        with torch.no_grad():
            for (k, p), g in zip(params.items(), grads):
                if k in sizes and step <= 3:
                    p.sub_(sizes[k] * g)
                    p.grad = None
                else:
                    p.grad = g
        adam.step()
        for k in params:
            assert torch.equal(ours[step - 1][k], params[k].detach()), (step, k)

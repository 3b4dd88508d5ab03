"""Functional forwards, meta-learning (MAML / Meta-SGD), the fitting generator, seeded determinism."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.func import functional_call

from inr_engine.datasets import Shape
from inr_engine.fit import FitStep, fit
from inr_engine.meta import ALGORITHMS, MetaLearner, batched_forward, expand_params
from inr_engine.networks import Siren
from inr_engine.runtime import seed_everything
from inr_engine.settings import TrainingSettings
from inr_engine.shape.model import OccupancyINR, occupancy_loss
from inr_engine.shape.tasks import draw_meta_batch
from inr_engine.training import TrainingBudget, train_meta

TASKS, POINTS = 3, 64


def _mse(out, labels, params):
    return ((out.squeeze(-1) - labels) ** 2).mean(-1)


def _tasks(seed=0):
    """Per-task regression problems: a different sinusoid per task on 2D points."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(TASKS, POINTS, 2, generator=g) * 2 - 1
    phase = torch.rand(TASKS, 1, generator=g) * 3
    y = torch.sin(3 * x[..., 0] + phase) * torch.cos(2 * x[..., 1])
    return x, y


def _batch(seed=0):
    x, y = _tasks(seed)
    return ((x[:, : POINTS // 2],), y[:, : POINTS // 2]), ((x[:, POINTS // 2:],), y[:, POINTS // 2:])


def _siren():
    torch.manual_seed(0)
    return Siren(2, 16, 1, 1, omega_0=10.0, first_omega_0=10.0)


def test_functional_call_equals_module_call():
    model = _siren()
    x = torch.rand(100, 2)
    torch.testing.assert_close(functional_call(model, dict(model.named_parameters()), (x,)), model(x), rtol=0, atol=0)


def test_batched_forward_equals_module_per_task():
    model = _siren()
    x, _ = _tasks()
    params = dict(model.named_parameters())
    batched = batched_forward(model, expand_params(params, TASKS), x)
    assert batched.shape == (TASKS, POINTS, 1)
    looped = torch.stack([model(x[t]) for t in range(TASKS)])
    torch.testing.assert_close(batched, looped, rtol=1e-6, atol=1e-6)


def test_batched_forward_uses_per_task_params():
    model = _siren()
    x, _ = _tasks()
    params = {k: torch.stack([v.detach() + 0.05 * t for t in range(TASKS)]) for k, v in model.named_parameters()}
    batched = batched_forward(model, params, x)
    for t in range(TASKS):
        torch.testing.assert_close(batched[t], functional_call(model, {k: v[t] for k, v in params.items()}, (x[t],)),
                                   rtol=1e-6, atol=1e-6)


def test_expand_params_is_differentiable_to_originals():
    model = _siren()
    params = dict(model.named_parameters())
    expanded = expand_params(params, TASKS)
    assert all(v.shape == (TASKS, *params[k].shape) for k, v in expanded.items())
    sum(v.sum() for v in expanded.values()).backward()
    for p in model.parameters():
        torch.testing.assert_close(p.grad, torch.full_like(p, float(TASKS)))


def test_unknown_algorithm_refused():
    with pytest.raises(ValueError, match="unknown meta-learning algorithm"):
        MetaLearner(_siren(), "reptile")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_meta_learner_outer_loss_and_gradients(algorithm):
    learner = MetaLearner(_siren(), algorithm, inner_steps=2, inner_lr=0.05)
    ctx, tgt = _batch()
    loss = learner(ctx, tgt, _mse)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for name, p in learner.model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    if algorithm.endswith("metasgd"):
        assert set(learner.step_sizes()) == {k for k, _ in learner.model.named_parameters()}
        for name, lr in learner.inner_lrs.items():
            assert lr.grad is not None and torch.isfinite(lr.grad).all(), name
        assert sum(lr.grad.abs().sum() for lr in learner.inner_lrs.values()) > 0
    else:
        assert learner.inner_lrs is None
        assert not any(n.startswith("inner_lrs") for n, _ in learner.named_parameters())


def test_adaptation_reduces_inner_loss():
    learner = MetaLearner(_siren(), "maml", inner_steps=5, inner_lr=0.05)
    (ctx_x,), ctx_y = _batch()[0]
    params = expand_params(dict(learner.model.named_parameters()), TASKS)
    before = _mse(batched_forward(learner.model, params, ctx_x), ctx_y, params)
    adapted = learner.adapt(params, (ctx_x,), ctx_y, _mse, create_graph=False)
    after = _mse(batched_forward(learner.model, adapted, ctx_x), ctx_y, adapted)
    assert torch.all(after < before)


def _outer_grads(algorithm, base):
    learner = MetaLearner(copy.deepcopy(base), algorithm, inner_steps=2, inner_lr=0.1)
    learner(*_batch(), _mse).backward()
    return torch.cat([p.grad.flatten() for p in learner.model.parameters()])


def test_second_order_maml_gradient_differs_from_first_order():
    base = _siren()
    second, first = _outer_grads("maml", base), _outer_grads("fomaml", base)
    assert torch.isfinite(second).all() and torch.isfinite(first).all()
    rel = (second - first).norm() / first.norm()
    assert rel > 1e-3, f"second-order terms missing (relative difference {rel:.2e})"
    # Deterministic: the same algorithm twice gives the same gradient.
    torch.testing.assert_close(_outer_grads("maml", base), second)


def test_outer_loss_averages_target_loss_over_inner_steps():
    """MAML++-style multi-step loss: the mean of the target loss after each inner SGD step."""
    base = _siren()
    learner = MetaLearner(copy.deepcopy(base), "fomaml", inner_steps=2, inner_lr=0.05)
    (ctx, ctx_y), (tgt, tgt_y) = _batch()
    losses = []
    for t in range(TASKS):
        p = {k: v.detach().clone().requires_grad_(True) for k, v in base.named_parameters()}
        per_step = []
        for _ in range(2):
            inner = _mse(functional_call(base, p, (ctx[0][t],)), ctx_y[t], p)
            grads = torch.autograd.grad(inner, list(p.values()))
            p = {k: (v - 0.05 * g).detach().requires_grad_(True) for (k, v), g in zip(p.items(), grads)}
            per_step.append(_mse(functional_call(base, p, (tgt[0][t],)), tgt_y[t], p))
        losses.append(torch.stack(per_step))
    expected = torch.stack(losses).mean()
    torch.testing.assert_close(learner((ctx, ctx_y), (tgt, tgt_y), _mse), expected, rtol=1e-5, atol=1e-6)


def test_zero_inner_steps_is_plain_loss_or_refused():
    """``inner_steps=0`` is either refused up front or gives the un-adapted target loss (plain pre-training)."""
    base = _siren()
    try:
        learner = MetaLearner(copy.deepcopy(base), "maml", inner_steps=0)
    except ValueError:
        return
    (_, tgt) = _batch()
    (x,), y = tgt
    expected = _mse(torch.stack([base(x[t]) for t in range(TASKS)]), y, {}).mean()
    torch.testing.assert_close(learner(_batch()[0], tgt, _mse), expected, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- fit generator
def _regression():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.3
    params = {"w": torch.zeros(4), "b": torch.zeros(())}

    def loss(p):
        return ((x @ p["w"] + p["b"] - y) ** 2).mean()

    return params, loss


def test_fit_yields_every_step_and_decreases_loss():
    params, loss = _regression()
    steps = list(fit(params, loss, steps=40, adam_lr=0.05))
    assert len(steps) == 40
    assert all(isinstance(s, FitStep) for s in steps)
    assert [s.step for s in steps] == list(range(1, 41))
    assert all(b.seconds >= a.seconds for a, b in zip(steps, steps[1:]))
    assert steps[-1].loss < 0.5 * steps[0].loss
    assert float(loss(steps[-1].params).detach()) < steps[0].loss


def test_fit_does_not_modify_callers_params():
    params, loss = _regression()
    original = {k: v.clone() for k, v in params.items()}
    sizes = {"w": torch.full((4,), 0.05), "b": torch.tensor(0.05)}
    last = None
    for st in fit(params, loss, steps=6, step_sizes=sizes, meta_steps=3, adam_lr=0.05):
        last = st
    for k in params:
        torch.testing.assert_close(params[k], original[k], rtol=0, atol=0)
        assert not params[k].requires_grad
        assert not torch.equal(last.params[k], original[k])


def test_fit_meta_steps_follow_sgd_with_step_sizes():
    params, loss = _regression()
    sizes = {"w": torch.tensor([0.01, 0.02, 0.03, 0.04]), "b": torch.tensor(0.05)}
    p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    grads = torch.autograd.grad(loss(p), list(p.values()))
    expected = {k: (v - sizes[k] * g).detach() for (k, v), g in zip(p.items(), grads)}
    gen = fit(params, loss, steps=3, step_sizes=sizes, meta_steps=2)
    first = next(gen)
    assert first.step == 1
    for k in expected:
        torch.testing.assert_close(first.params[k].detach(), expected[k])
    assert len(list(gen)) == 2


def test_fit_zero_steps_yields_nothing():
    params, loss = _regression()
    assert list(fit(params, loss, steps=0)) == []


def test_fit_nan_loss_raises():
    params, _ = _regression()

    def bad(p):
        return (p["w"] * float("nan")).sum()

    with pytest.raises(FloatingPointError, match="step 1"):
        list(fit(params, bad, steps=3))


def test_fit_loss_becoming_nan_raises_at_that_step():
    params, loss = _regression()
    calls = []

    def later_nan(p):
        calls.append(1)
        value = loss(p)
        return value * float("nan") if len(calls) == 3 else value

    gen = fit(params, later_nan, steps=5, adam_lr=0.01)
    assert next(gen).step == 1 and next(gen).step == 2
    with pytest.raises(FloatingPointError, match="step 3"):
        next(gen)


# --------------------------------------------------------------------------- seeded meta-training
def _meta_train(tiny_cfg, shapes, seed=0, steps=3, algorithm=None):
    cfg = tiny_cfg
    rng = seed_everything(seed)

    pool = [Shape(mask, affine, f"ellipsoid-{n}") for n, (mask, affine) in enumerate(shapes)]

    def next_batch():
        return draw_meta_batch(pool, cfg, rng, 2)

    learner = MetaLearner(OccupancyINR(cfg), algorithm or cfg.algorithm, cfg.inner_steps, cfg.inner_lr)
    initial = {k: v.detach().clone() for k, v in learner.state_dict().items()}
    result = train_meta(learner, next_batch, lambda lo, la, p: occupancy_loss(lo, la, p, cfg.weight_decay),
                        TrainingSettings(steps, 1e-3, clip_grad_norm=1.0, log_every=2), torch.device("cpu"))
    return learner, initial, result


@pytest.fixture(scope="module")
def synthetic_shapes(ellipsoid_factory):
    return [ellipsoid_factory((24, 24, 24), radii, spacing=spc, angles_deg=angles)
            for radii, spc, angles in [((7, 5, 6), (1, 1, 1), (0, 0, 0)), ((5, 8, 9), (1, 1, 1.5), (10, 0, 20)),
                                       ((8, 6, 5), (0.8, 1, 1), (0, 0, 0))]]


def test_meta_training_is_deterministic_with_a_seed(tiny_cfg, synthetic_shapes):
    a, a_init, res_a = _meta_train(tiny_cfg, synthetic_shapes)
    b, b_init, res_b = _meta_train(tiny_cfg, synthetic_shapes)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(a_init[k], b_init[k], rtol=0, atol=0)
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)
    assert res_a.steps == res_b.steps == 3
    assert [h["step"] for h in res_a.history] == [2, 3]
    assert [h["train_loss"] for h in res_a.history] == [h["train_loss"] for h in res_b.history]
    # Training moved the parameters.
    assert any(not torch.equal(sa[k], a_init[k]) for k in sa)
    # Another seed gives another initialisation.
    c, c_init, _ = _meta_train(tiny_cfg, synthetic_shapes, seed=1, steps=1)
    assert any(not torch.equal(c_init[k], a_init[k]) for k in a_init)


def test_train_meta_calls_validate_log_and_checkpoint(tiny_cfg, synthetic_shapes):
    cfg = tiny_cfg
    rng = seed_everything(0)
    batch = draw_meta_batch([Shape(*synthetic_shapes[0], "ellipsoid")], cfg, rng, 2)
    learner = MetaLearner(OccupancyINR(cfg), "fomaml", 1, cfg.inner_lr)
    scores = iter([0.5, 0.9, 0.7])
    logged, saved = [], []

    def validate(lrn):
        assert lrn is learner
        return {"score": next(scores)}

    result = train_meta(learner, lambda: batch, lambda lo, la, p: occupancy_loss(lo, la, p, cfg.weight_decay),
                        TrainingSettings(3, 1e-3, clip_grad_norm=1.0, log_every=1), torch.device("cpu"),
                        validate=validate, log=logged.append, checkpoint=lambda lrn, entry: saved.append(entry["step"]))
    assert [e["step"] for e in logged] == [1, 2, 3] == [e["step"] for e in result.history]
    assert result.best["step"] == 2 and result.best["score"] == 0.9
    assert saved == [1, 2]
    assert all(np.isfinite(e["train_loss"]) for e in logged)


def test_train_meta_reports_mean_loss_of_a_short_final_interval(tiny_cfg, synthetic_shapes):
    cfg = tiny_cfg
    rng = seed_everything(0)
    batch = draw_meta_batch([Shape(*synthetic_shapes[0], "ellipsoid")], cfg, rng, 1)
    learner = MetaLearner(OccupancyINR(cfg), "fomaml", 1, cfg.inner_lr)

    def loss_fn(lo, la, p):
        return occupancy_loss(lo, la, p, cfg.weight_decay)

    expected = float(learner(*batch, loss_fn).detach())
    # lr=0: parameters do not move, so every step has the same loss, and the logged mean must equal it.
    result = train_meta(learner, lambda: batch, loss_fn, TrainingSettings(4, 0.0, clip_grad_norm=1.0, log_every=250),
                        torch.device("cpu"))
    assert result.history[-1]["train_loss"] == pytest.approx(expected, rel=1e-5)


def test_budget_anneals_like_cosine_over_steps_and_over_time(monkeypatch):
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    reference = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(reference, T_max=10, eta_min=0.05e-3)
    budget = TrainingBudget(10)
    for step in range(10):
        budget.set_lr(opt, budget.progress(step))
        assert opt.param_groups[0]["lr"] == pytest.approx(reference.param_groups[0]["lr"])
        reference.step()
        sched.step()
    assert budget.progress(10) == 1.0

    clock = iter([0.0, 30.0, 60.0, 61.0])
    monkeypatch.setattr("inr_engine.training.time.perf_counter", lambda: next(clock))
    timed = TrainingBudget(1000, time_limit_s=60.0)  # starts at 0 s
    assert timed.progress(1) == pytest.approx(0.5)  # 30 s of 60: half way, whatever the step count
    timed.set_lr(opt, timed.progress(2))  # 60 s: the end of the budget, the lowest rate
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05e-3) and timed.progress(3) == 1.0


def test_learner_resumes_from_its_saved_initialisation(tiny_cfg):
    learner = MetaLearner(OccupancyINR(tiny_cfg), "metasgd", 1, 0.01)
    with torch.no_grad():
        for p in learner.parameters():
            p.add_(torch.randn_like(p))
    init = {k: v.detach().clone() for k, v in learner.model.named_parameters()}
    sizes = {k: v.detach().clone() for k, v in learner.step_sizes().items()}
    fresh = MetaLearner(OccupancyINR(tiny_cfg), "metasgd", 1, 0.01)
    fresh.load_initialisation(init, sizes)
    for k, p in fresh.model.named_parameters():
        assert torch.equal(p, init[k])
    for k, s in fresh.step_sizes().items():
        assert torch.equal(s, sizes[k])


def test_a_diverging_training_stops_with_one_line_and_no_update():
    from inr_engine.settings import TrainingDiverged
    from inr_engine.training import run_training

    model = torch.nn.Linear(2, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TrainingDiverged, match="diverged at step 1"):
        run_training(model, lambda: model.weight.sum() * float("nan"), TrainingSettings(5, 1e-3), stage="test")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])

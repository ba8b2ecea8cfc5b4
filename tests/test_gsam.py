import pytest
import torch

from tad_plugin.engine.gsam import GSAM


def _loss(w, x, y):
    return ((x @ w.T - y) ** 2).mean() + (w ** 4).sum() * 0.01  # not quadratic: curvature varies


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 5, generator=g, dtype=torch.float64), torch.randn(32, 1, generator=g, dtype=torch.float64)


def _closure(opt, w, x, y):
    def closure():
        opt.zero_grad()
        loss = _loss(w, x, y)
        loss.backward()
        return loss
    return closure


def test_matches_hand_computed_step():
    x, y = _data()
    w0 = torch.randn(1, 5, dtype=torch.float64)
    w = w0.clone().requires_grad_(True)
    opt = GSAM([w], torch.optim.SGD, rho=0.1, alpha=0.4, adaptive=True, lr=0.05)
    opt.step(_closure(opt, w, x, y))

    def grad_at(v):
        v = v.clone().requires_grad_(True)
        return torch.autograd.grad(_loss(v, x, y), v)[0]
    g = grad_at(w0)
    e = 0.1 * g / (w0.abs() * g).norm() * w0 ** 2
    g2 = grad_at(w0 + e)
    cos = (g * g2).sum() / (g.norm() * g2.norm())
    d = g2 - 0.4 * (g - cos * g.norm() * g2 / g2.norm())
    assert torch.allclose(w.detach(), w0 - 0.05 * d, atol=1e-12)


def test_zero_rho_and_alpha_is_the_base_optimizer():
    x, y = _data(1)
    w0 = torch.randn(1, 5, dtype=torch.float64)
    a, b = w0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
    gsam = GSAM([a], torch.optim.SGD, rho=0.0, alpha=0.0, lr=0.1, momentum=0.9)
    sgd = torch.optim.SGD([b], lr=0.1, momentum=0.9)
    for _ in range(3):
        gsam.step(_closure(gsam, a, x, y))
        sgd.step(_closure(sgd, b, x, y))
    assert torch.allclose(a, b)


def test_independent_rows_equal_separate_optimizers():
    x, y = _data(2)
    w0 = torch.randn(3, 5, dtype=torch.float64)
    stacked = w0.clone().requires_grad_(True)
    opt = GSAM([stacked], torch.optim.SGD, rho=0.05, alpha=0.3, independent_rows=True, lr=0.1)

    def closure():
        opt.zero_grad()
        loss = sum(_loss(stacked[i:i + 1], x, y) for i in range(3))  # each row its own model
        loss.backward()
        return loss
    for _ in range(2):
        opt.step(closure)
    for i in range(3):
        wi = w0[i:i + 1].clone().requires_grad_(True)
        single = GSAM([wi], torch.optim.SGD, rho=0.05, alpha=0.3, lr=0.1)
        for _ in range(2):
            single.step(_closure(single, wi, x, y))
        assert torch.allclose(stacked[i:i + 1].detach(), wi.detach(), atol=1e-12)


def test_closure_is_required_and_evaluated_twice():
    w = torch.randn(1, 5, requires_grad=True)
    opt = GSAM([w], torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="closure"):
        opt.step()
    calls = []
    x, y = _data()

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = _loss(w, x.float(), y.float())
        loss.backward()
        return loss
    opt.step(closure)
    assert len(calls) == 2

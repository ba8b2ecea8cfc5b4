"""LARS: one step against a hand computation, the trust-ratio fallbacks, and argument checks."""

import pytest
import torch
from torch import nn

from tad_plugin.features.lars import LARS, lars_param_groups


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)).double()


def _backward(model: nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    model.zero_grad()
    model(torch.randn(5, 3, dtype=torch.float64)).pow(2).sum().backward()


def test_param_groups_exclude_biases_and_batchnorm():
    model = _tiny_model()
    adapted, excluded = lars_param_groups(model)
    assert [p is model[0].weight for p in adapted["params"]] == [True]
    assert {id(p) for p in excluded["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}
    assert excluded["lars_exclude"] and "lars_exclude" not in adapted


def test_two_steps_match_a_hand_computation():
    lr, momentum, wd, eta = 0.5, 0.9, 0.1, 0.02
    model = _tiny_model()
    opt = LARS(lars_param_groups(model), lr=lr, momentum=momentum, weight_decay=wd, eta=eta)
    w, b, gamma = model[0].weight, model[0].bias, model[1].weight
    buf_w = buf_b = buf_gamma = 0.0
    for seed in (1, 2):
        _backward(model, seed)
        w0, b0, gamma0 = w.detach().clone(), b.detach().clone(), gamma.detach().clone()
        g = w.grad.clone()
        trust = eta * w0.norm() / (g.norm() + wd * w0.norm())
        buf_w = momentum * buf_w + trust * (g + wd * w0)
        buf_b = momentum * buf_b + b.grad  # excluded: plain SGD momentum, the group's weight decay ignored
        buf_gamma = momentum * buf_gamma + gamma.grad
        opt.step()
        torch.testing.assert_close(w.detach(), w0 - lr * buf_w, rtol=0, atol=1e-12)
        torch.testing.assert_close(b.detach(), b0 - lr * buf_b, rtol=0, atol=1e-12)
        torch.testing.assert_close(gamma.detach(), gamma0 - lr * buf_gamma, rtol=0, atol=1e-12)
    assert 0 < float(trust) < 1  # the ratio really scaled the weight's update


def test_zero_weight_or_zero_gradient_falls_back_to_trust_one():
    w = nn.Parameter(torch.zeros(2, 3))
    v = nn.Parameter(torch.ones(2, 3))
    opt = LARS([w, v], lr=0.1, momentum=0.9, weight_decay=0.01, eta=1e-3)
    w.grad = torch.full((2, 3), 2.0)
    v.grad = torch.zeros(2, 3)
    opt.step()
    assert torch.isfinite(w).all() and torch.isfinite(v).all()
    torch.testing.assert_close(w.detach(), torch.full((2, 3), -0.2))  # -lr * (g + wd * 0) with trust 1
    torch.testing.assert_close(v.detach(), torch.full((2, 3), 1 - 0.1 * 0.01))  # -lr * (0 + wd * 1), trust 1


def test_parameters_without_gradient_are_left_alone():
    model = _tiny_model()
    opt = LARS(lars_param_groups(model), lr=0.1)
    before = model[0].weight.detach().clone()
    opt.step()
    assert torch.equal(model[0].weight.detach(), before) and not opt.state


@pytest.mark.parametrize("kw", [dict(lr=0.0), dict(lr=0.1, momentum=1.0), dict(lr=0.1, weight_decay=-1.0),
                                dict(lr=0.1, eta=0.0)])
def test_bad_arguments_are_refused(kw):
    with pytest.raises(ValueError, match="LARS needs"):
        LARS([nn.Parameter(torch.ones(2))], **kw)

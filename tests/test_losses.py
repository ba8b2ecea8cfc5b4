import math

import pytest
import torch
import torch.nn.functional as F

from tad_plugin.losses import ce_rce_loss


def test_zero_weight_is_plain_cross_entropy():
    logits, y = torch.randn(16, 5), torch.randint(0, 5, (16,))
    assert torch.allclose(ce_rce_loss(logits, y, 0.0, -4.0), F.cross_entropy(logits, y))


def test_matches_ce_plus_four_times_one_minus_py():
    logits, y = torch.randn(32, 7, dtype=torch.float64), torch.randint(0, 7, (32,))
    p_y = logits.softmax(1)[torch.arange(32), y]
    expected = (F.cross_entropy(logits, y, reduction="none") + 4.0 * (1 - p_y)).mean()
    assert torch.allclose(ce_rce_loss(logits, y, 1.0, -4.0), expected)


def test_matches_reverse_ce_definition_with_log_zero():
    logits, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 4, (8,))
    p = logits.softmax(1)
    log_onehot = torch.full_like(p, -9.21).scatter(1, y[:, None], 0.0)  # log 1 = 0, log 0 -> constant
    rce = -(p * log_onehot).sum(1).mean()
    assert torch.allclose(ce_rce_loss(logits, y, 0.3, -9.21), F.cross_entropy(logits, y) + 0.3 * rce)


def test_pure_and_differentiable():
    logits = torch.randn(10, 3, requires_grad=True)
    y = torch.randint(0, 3, (10,))
    a, b = ce_rce_loss(logits, y, 1.0, -4.0), ce_rce_loss(logits, y, 1.0, -4.0)
    assert torch.equal(a, b)
    a.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_bad_arguments():
    with pytest.raises(TypeError, match="targets"):
        ce_rce_loss(torch.randn(4, 3), torch.zeros(4), 1.0, -4.0)
    with pytest.raises(TypeError, match="logits"):
        ce_rce_loss(torch.randn(4), torch.zeros(4, dtype=torch.int64), 1.0, -4.0)
    for log_zero in (0.5, 0.0, float("nan"), float("-inf")):  # 0 would switch the reverse-CE term off in silence
        with pytest.raises(ValueError, match="log_zero must be a finite negative number"):
            ce_rce_loss(torch.randn(4, 3), torch.zeros(4, dtype=torch.int64), 1.0, log_zero)
    for reg_weight in (-1.0, float("nan")):  # NaN made every expert loss NaN
        with pytest.raises(ValueError, match="reg_weight .* must be a finite number >= 0"):
            ce_rce_loss(torch.randn(4, 3), torch.zeros(4, dtype=torch.int64), reg_weight, -4.0)
    with pytest.raises(TypeError, match="ce_rce_loss: logits must be a torch.Tensor, got ndarray"):
        ce_rce_loss(torch.randn(4, 3).numpy(), torch.zeros(4, dtype=torch.int64), 1.0, -4.0)


def test_confidence_penalty_is_minus_the_mean_entropy():
    from tad_plugin.losses import confidence_penalty

    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [30.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]], requires_grad=True)
    p = logits.softmax(1)
    hand = (p * p.log()).sum(1).mean()
    value = confidence_penalty(logits)
    assert value.item() == pytest.approx(hand.item(), abs=1e-6)
    assert confidence_penalty(torch.zeros(3, 4)).item() == pytest.approx(-math.log(4), abs=1e-6)
    assert abs(confidence_penalty(torch.tensor([[40.0, 0.0, 0.0]])).item()) < 1e-12
    (g,) = torch.autograd.grad(value, logits)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    with pytest.raises(TypeError, match="float tensor"):
        confidence_penalty(torch.zeros(3, dtype=torch.int64))


def test_an_empty_batch_is_refused_not_nan():
    from tad_plugin import TADHooks, TrustAwareDiversion, get_plugin_manager

    hooks = TADHooks(get_plugin_manager(default=TrustAwareDiversion(), load_entrypoints=False))
    with pytest.raises(ValueError, match="empty batch"):
        hooks.expert_loss(torch.zeros(0, 10, requires_grad=True), torch.zeros(0, dtype=torch.int64))

import warnings

import pytest
import torch

from tad_plugin.division import DegenerateLossWarning, divide_by_loss


def _mixture(n=4000, c=10, noise=0.4, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=g)
    noisy = torch.rand(n, generator=g) < noise
    losses = torch.where(noisy, 2.3 + 0.4 * torch.randn(n, generator=g),
                         0.2 + 0.15 * torch.randn(n, generator=g).abs())
    return losses, labels, noisy


def test_recovers_clean_set_of_a_loss_mixture():
    losses, labels, noisy = _mixture()
    split = divide_by_loss(losses, labels, 10)
    tp = (split.trusted & ~noisy).sum()
    assert tp / split.trusted.sum() > 0.99  # precision
    assert tp / (~noisy).sum() > 0.95  # recall
    assert ((split.confidence >= 0) & (split.confidence <= 1)).all()
    assert split.confidence[~noisy].mean() > 0.9 > 0.1 > split.confidence[noisy].mean()


def test_thresholds_are_classwise_mean_confidence_eq5():
    losses, labels, _ = _mixture(seed=1)
    split = divide_by_loss(losses, labels, 10)
    for c in range(10):
        assert torch.isclose(split.thresholds[c], split.confidence[labels == c].mean(), atol=1e-6)
        members = labels == c
        assert torch.equal(split.trusted[members], split.confidence[members] >= split.thresholds[c] - 1e-6)


def test_scale_invariant_and_deterministic():
    losses, labels, _ = _mixture(seed=2)
    a = divide_by_loss(losses, labels, 10)
    b = divide_by_loss(losses * 7.0 + 3.0, labels, 10)  # min-max normalisation removes affine changes
    assert torch.equal(a.trusted, b.trusted)
    assert torch.equal(a.trusted, divide_by_loss(losses, labels, 10).trusted)


def test_all_equal_losses_keep_everything_with_a_warning():
    with pytest.warns(DegenerateLossWarning):
        split = divide_by_loss(torch.full((30,), 0.7), torch.arange(30) % 3, 3)
    assert split.trusted.all() and torch.allclose(split.confidence, torch.ones(30))


def test_single_sample_class_and_empty_class():
    losses, labels, _ = _mixture(n=500, c=4, seed=3)
    labels[0] = 4  # class 4 has exactly one sample; class 5 none
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split = divide_by_loss(losses, labels, 6)
    assert split.trusted[0]
    assert torch.isnan(split.thresholds[5]) and not torch.isnan(split.thresholds[:5]).any()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_losses_are_rejected(bad):
    losses = torch.rand(10)
    losses[3] = bad
    with pytest.raises(ValueError, match="NaN/inf"):
        divide_by_loss(losses, torch.zeros(10, dtype=torch.int64), 2)


def test_bad_labels_are_rejected():
    with pytest.raises(ValueError, match=r"lie in \[0, 3\)"):
        divide_by_loss(torch.rand(5), torch.tensor([0, 1, 2, 3, 0]), 3)
    with pytest.raises(TypeError, match="int64"):
        divide_by_loss(torch.rand(5), torch.zeros(5, dtype=torch.int32), 3)
    with pytest.raises(ValueError, match="expected"):
        divide_by_loss(torch.rand(5), torch.zeros(4, dtype=torch.int64), 3)
    with pytest.raises(ValueError, match="empty"):
        divide_by_loss(torch.zeros(0), torch.zeros(0, dtype=torch.int64), 3)

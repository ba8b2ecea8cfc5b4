"""The optimised division and recalibration give the results of the code before the speed-up
(tests/tad_reference.py, scikit-learn's GaussianMixture and the per-class loops)."""

import warnings

import numpy as np
import pytest
import torch

import tad_reference as ref
from tad_plugin.division import divide_by_loss, low_loss_posterior
from tad_plugin.recalibration import mahalanobis_reliability, recalibrate_with_anchors, reference_set


def _losses(n: int, seed: int, hard: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 losses [n] from two modes and int64 labels [n] of 10 classes."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    wrong = torch.rand(n, generator=g) < 0.4 + hard
    low = -0.15 * torch.log(torch.rand(n, generator=g).clamp_min(1e-12))
    high = (2.3 + 0.6 * torch.randn(n, generator=g)).abs()
    return torch.where(wrong, high, low), labels


@pytest.mark.parametrize("seed", range(6))
def test_torch_em_matches_sklearn_gaussian_mixture(seed):
    from sklearn.mixture import GaussianMixture

    losses, _ = _losses(20_000, seed)
    x = losses.double()
    x = (x - x.min()) / (x.max() - x.min())
    gmm = GaussianMixture(n_components=2, max_iter=100, tol=1e-3, reg_covar=5e-4, random_state=seed)
    expected = gmm.fit(x.numpy()[:, None]).predict_proba(x.numpy()[:, None])[:, int(np.argmin(gmm.means_))]
    got = low_loss_posterior(x, random_state=seed, max_iter=100, tol=1e-3, reg_covar=5e-4)
    assert got.dtype == torch.float64 and got.shape == x.shape
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-9)


def test_torch_em_warns_like_sklearn_when_not_converged():
    from sklearn.exceptions import ConvergenceWarning

    x = _losses(2_000, 0)[0].double()
    with pytest.warns(ConvergenceWarning):
        low_loss_posterior(x / x.max(), random_state=0, max_iter=1, tol=0.0, reg_covar=5e-4)
    with pytest.raises(ValueError, match=">= 0"):
        low_loss_posterior(x, random_state=0, max_iter=-1, tol=1e-3, reg_covar=5e-4)


@pytest.mark.parametrize("seed", range(4))
def test_division_equals_the_sklearn_division(seed):
    losses, labels = _losses(50_000 if seed == 0 else 5_000, seed, hard=0.05 * seed)
    new = divide_by_loss(losses, labels, 10, random_state=seed)
    old = ref.divide_by_loss(losses, labels, 10, random_state=seed)
    assert torch.equal(new.trusted, old.trusted)
    assert torch.allclose(new.confidence, old.confidence, rtol=0, atol=1e-6)
    assert torch.allclose(new.thresholds, old.thresholds, rtol=0, atol=1e-6)
    assert new.confidence.dtype == torch.float32 and new.thresholds.dtype == torch.float32


def test_degenerate_division_unchanged():
    losses = torch.full((40,), 0.3)
    labels = torch.arange(40) % 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        new, old = divide_by_loss(losses, labels, 5), ref.divide_by_loss(losses, labels, 5)
    assert torch.equal(new.trusted, old.trusted) and torch.equal(new.confidence, old.confidence)
    assert torch.equal(new.thresholds.isnan(), old.thresholds.isnan())


def _recal_data(n: int, d: int, seed: int, anchors_per_class: int = 5, c: int = 10):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, c, (n,), generator=g)
    labels = torch.where(torch.rand(n, generator=g) < 0.4, torch.randint(0, c, (n,), generator=g), clean)
    centres = 0.35 * torch.randn(c, d, generator=g)
    feats = centres[clean] + torch.randn(n, d, generator=g)
    anchor_labels = torch.arange(c).repeat_interleave(anchors_per_class)
    anchors = centres[anchor_labels] + 0.5 * torch.randn(len(anchor_labels), d, generator=g)
    trusted = (labels == clean) & (torch.rand(n, generator=g) < 0.8) | (torch.rand(n, generator=g) < 0.05)
    return feats, labels, trusted, anchors, anchor_labels


@pytest.mark.parametrize("rule", ["calibrated", "fixed"])
@pytest.mark.parametrize("seed", range(3))
def test_recalibration_equals_the_reference(seed, rule):
    feats, labels, trusted, anchors, anchor_labels = _recal_data(4_000, 64, seed)
    kw = dict(top_k=50, num_neighbors=20, vote_threshold=rule, backend="torch")
    old = ref.recalibrate_with_anchors(feats, labels, trusted, anchors, anchor_labels, 10, **kw)
    for _ in range(2):  # the second call reads the cached normalisation and covariances
        new = recalibrate_with_anchors(feats, labels, trusted, anchors, anchor_labels, 10, **kw)
        assert torch.equal(new.labels, old.labels) and torch.equal(new.trusted, old.trusted)
        assert torch.equal(new.reliability.isnan(), old.reliability.isnan())
        assert torch.equal(new.reliability.nan_to_num(-1), old.reliability.nan_to_num(-1))


def test_cache_sees_in_place_changes_and_new_anchors():
    feats, labels, trusted, anchors, anchor_labels = _recal_data(2_000, 32, 5)
    kw = dict(top_k=30, num_neighbors=10, backend="torch")
    recalibrate_with_anchors(feats, labels, trusted, anchors, anchor_labels, 10, **kw)
    feats.mul_(-1.0).add_(0.3)  # in place: the cached normalisation must not be reused
    anchors[:5] += 1.0
    new = recalibrate_with_anchors(feats, labels, trusted, anchors, anchor_labels, 10, **kw)
    old = ref.recalibrate_with_anchors(feats, labels, trusted, anchors, anchor_labels, 10, **kw)
    assert torch.equal(new.labels, old.labels) and torch.equal(new.trusted, old.trusted)
    assert torch.equal(new.reliability.nan_to_num(-1), old.reliability.nan_to_num(-1))
    feats[0, 0] = float("nan")  # checks still run on a modified tensor
    with pytest.raises(ValueError, match="NaN/inf"):
        recalibrate_with_anchors(feats, labels, trusted, anchors, anchor_labels, 10, **kw)


def test_reference_set_and_reliability_equal_the_per_class_loops():
    feats, labels, trusted, anchors, anchor_labels = _recal_data(3_000, 32, 7, anchors_per_class=3)
    labels[labels == 9] = 8  # class 9 has no samples
    feats = torch.nn.functional.normalize(feats, dim=1)
    covs = ref.anchor_covariances(torch.nn.functional.normalize(anchors, dim=1), anchor_labels, 10)
    idx = torch.nonzero(trusted).flatten()
    rel_old = ref.mahalanobis_reliability(feats[idx], labels[idx], covs, 10)
    rel_new = mahalanobis_reliability(feats[idx], labels[idx], covs, 10)
    assert torch.equal(rel_new, rel_old)
    reliability = torch.full((3_000,), float("nan"))
    reliability[idx] = rel_old.round(decimals=1)  # many ties: the order among them must match too
    for top_k in (1, 7, 1_000):
        assert torch.equal(reference_set(idx, labels, reliability, 10, top_k),
                           ref.reference_set(idx, labels, reliability, 10, top_k))

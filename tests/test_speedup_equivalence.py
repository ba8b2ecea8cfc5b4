"""The optimised division and recalibration against small independent oracles written here: scikit-learn's
GaussianMixture for the division, per-class loops for the reliability and the reference set, and fresh
(uncached) calls for the recalibration's cache."""

import warnings

import numpy as np
import pytest
import torch

from tad_plugin.division import DegenerateLossWarning, divide_by_loss, low_loss_posterior
from tad_plugin.recalibration import (
    anchor_covariances,
    mahalanobis_reliability,
    recalibrate_with_anchors,
    reference_set,
)


def _losses(n: int, seed: int, hard: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 losses [n] from two modes and int64 labels [n] of 10 classes."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    wrong = torch.rand(n, generator=g) < 0.4 + hard
    low = -0.15 * torch.log(torch.rand(n, generator=g).clamp_min(1e-12))
    high = (2.3 + 0.6 * torch.randn(n, generator=g)).abs()
    return torch.where(wrong, high, low), labels


def _sklearn_posterior(x: np.ndarray, seed: int) -> np.ndarray:
    """Posterior of the lower-mean component of scikit-learn's 2-component GMM, the library's settings."""
    from sklearn.mixture import GaussianMixture

    gmm = GaussianMixture(n_components=2, max_iter=100, tol=1e-3, reg_covar=5e-4, random_state=seed)
    return gmm.fit(x[:, None]).predict_proba(x[:, None])[:, int(np.argmin(gmm.means_.ravel()))]


@pytest.mark.parametrize("seed", range(6))
def test_torch_em_matches_sklearn_gaussian_mixture(seed):
    losses, _ = _losses(20_000, seed)
    x = losses.double()
    x = (x - x.min()) / (x.max() - x.min())
    expected = _sklearn_posterior(x.numpy(), seed)
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
    # Oracle: min-max normalised losses -> sklearn posterior w (float32) -> tau_c = mean of w over class c
    # (NaN when empty) -> trusted = w >= tau_{label} - 1e-9.
    x = losses.double().numpy()
    w = _sklearn_posterior((x - x.min()) / (x.max() - x.min()), seed).astype(np.float32)
    y = labels.numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mean of an empty class
        tau = np.array([w[y == c].astype(np.float64).mean() for c in range(10)])
    trusted = w.astype(np.float64) >= tau[y] - 1e-9

    new = divide_by_loss(losses, labels, 10, random_state=seed)
    assert new.confidence.dtype == torch.float32 and new.thresholds.dtype == torch.float32
    np.testing.assert_array_equal(new.trusted.numpy(), trusted)
    np.testing.assert_allclose(new.confidence.numpy(), w, rtol=0, atol=1e-6)
    np.testing.assert_allclose(new.thresholds.numpy(), tau, rtol=0, atol=1e-6)
    assert 0 < int(trusted.sum()) < len(trusted)  # the division is not trivial


def test_degenerate_division_keeps_everything_trusted():
    losses = torch.full((40,), 0.3)
    labels = torch.arange(40) % 4  # class 4 of 5 is empty
    with pytest.warns(DegenerateLossWarning):
        new = divide_by_loss(losses, labels, 5)
    assert bool(new.trusted.all()) and torch.equal(new.confidence, torch.ones(40))
    assert torch.equal(new.thresholds[:4], torch.ones(4)) and bool(new.thresholds[4].isnan())


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


def _loop_reliability(feats, labels, covs, num_classes):
    """Oracle: per class, 1 - min-max normalised Mahalanobis distance (1 where all are equidistant)."""
    out = torch.ones(feats.shape[0])
    for c in range(num_classes):
        rows = torch.nonzero(labels == c).flatten()
        if rows.numel():
            dist = covs[c].squared_distance(feats[rows]).sqrt()
            span = dist.max() - dist.min()
            if float(span) > 0:
                out[rows] = (1.0 - (dist - dist.min()) / span).float()
    return out


def _loop_reference_set(trusted_idx, labels, reliability, num_classes, top_k):
    """Oracle: per class, its trusted samples by descending reliability (ties: lower index), first top_k."""
    parts = []
    for c in range(num_classes):
        members = [int(i) for i in trusted_idx if int(labels[i]) == c]
        members.sort(key=lambda i: -float(reliability[i]))  # sort is stable: ties keep ascending index
        parts.extend(members[:top_k])
    return torch.tensor(parts, dtype=torch.int64)


def _assert_same(a, b):
    assert torch.equal(a.labels, b.labels) and torch.equal(a.trusted, b.trusted)
    assert torch.equal(a.reliability.isnan(), b.reliability.isnan())
    assert torch.equal(a.reliability.nan_to_num(-1), b.reliability.nan_to_num(-1))


@pytest.mark.parametrize("rule", ["calibrated", "fixed"])
@pytest.mark.parametrize("seed", range(3))
def test_cached_recalibration_equals_an_uncached_one(seed, rule):
    feats, labels, trusted, anchors, anchor_labels = _recal_data(4_000, 64, seed)
    kw = dict(top_k=50, num_neighbors=20, vote_threshold=rule, backend="torch")
    first = recalibrate_with_anchors(feats, labels, trusted, anchors, anchor_labels, 10, **kw)
    second = recalibrate_with_anchors(feats, labels, trusted, anchors, anchor_labels, 10, **kw)  # cache hit
    fresh_feats, fresh_anchors = feats.clone(), anchors.clone()  # new tensors: nothing cached for them
    fresh = recalibrate_with_anchors(fresh_feats, labels, trusted, fresh_anchors, anchor_labels, 10, **kw)
    _assert_same(first, fresh)
    _assert_same(second, fresh)
    # The trusted samples' reliability is the per-class loop's.
    idx = torch.nonzero(trusted).flatten()
    unit = torch.nn.functional.normalize(feats, dim=1)
    covs = anchor_covariances(torch.nn.functional.normalize(anchors, dim=1), anchor_labels, 10)
    assert torch.equal(first.reliability[idx], _loop_reliability(unit[idx], labels[idx], covs, 10))
    assert bool(first.reliability[~trusted].isnan().all())
    assert not torch.equal(first.trusted, trusted) or not torch.equal(first.labels, labels)  # the vote acts


def test_cache_sees_in_place_changes_and_new_anchors():
    feats, labels, trusted, anchors, anchor_labels = _recal_data(2_000, 32, 5)
    kw = dict(top_k=30, num_neighbors=10, backend="torch")
    before = recalibrate_with_anchors(feats, labels, trusted, anchors, anchor_labels, 10, **kw)
    feats.mul_(-1.0).add_(0.3)  # in place: the cached normalisation must not be reused
    anchors[:5] += 1.0
    new = recalibrate_with_anchors(feats, labels, trusted, anchors, anchor_labels, 10, **kw)
    fresh = recalibrate_with_anchors(feats.clone(), labels, trusted, anchors.clone(), anchor_labels, 10, **kw)
    _assert_same(new, fresh)
    assert not torch.equal(new.reliability.nan_to_num(-1), before.reliability.nan_to_num(-1))
    feats[0, 0] = float("nan")  # checks still run on a modified tensor
    with pytest.raises(ValueError, match="NaN/inf"):
        recalibrate_with_anchors(feats, labels, trusted, anchors, anchor_labels, 10, **kw)


def test_reference_set_and_reliability_equal_the_per_class_loops():
    feats, labels, trusted, anchors, anchor_labels = _recal_data(3_000, 32, 7, anchors_per_class=3)
    labels[labels == 9] = 8  # class 9 has no samples
    feats = torch.nn.functional.normalize(feats, dim=1)
    covs = anchor_covariances(torch.nn.functional.normalize(anchors, dim=1), anchor_labels, 10)
    idx = torch.nonzero(trusted).flatten()
    rel_loop = _loop_reliability(feats[idx], labels[idx], covs, 10)
    rel_new = mahalanobis_reliability(feats[idx], labels[idx], covs, 10)
    assert torch.equal(rel_new, rel_loop)
    one = torch.cat([idx[labels[idx] != 0], idx[labels[idx] == 0][:1]]).sort().values  # class 0: one sample
    rel_one = mahalanobis_reliability(feats[one], labels[one], covs, 10)
    assert torch.equal(rel_one, _loop_reliability(feats[one], labels[one], covs, 10))
    assert float(rel_one[labels[one] == 0]) == 1.0  # no spread: reliability 1
    reliability = torch.full((3_000,), float("nan"))
    reliability[idx] = rel_loop.round(decimals=1)  # many ties: the order among them must match too
    for top_k in (1, 7, 1_000):
        assert torch.equal(reference_set(idx, labels, reliability, 10, top_k),
                           _loop_reference_set(idx, labels, reliability, 10, top_k))


def _sklearn_division(losses: torch.Tensor, labels: torch.Tensor, num_classes: int, seed: int = 0):
    """The per-expert division as scikit-learn computes it (KMeans-initialised GaussianMixture per row):
    posteriors float32 [E, N] and trusted masks bool [E, N]."""
    ws, masks = [], []
    for row, y in zip(losses.double().numpy(), labels.numpy()):
        w = _sklearn_posterior((row - row.min()) / (row.max() - row.min()), seed).astype(np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # mean of an empty class
            tau = np.array([w[y == c].astype(np.float64).mean() for c in range(num_classes)])
        ws.append(w)
        masks.append(w.astype(np.float64) >= tau[y] - 1e-9)
    return np.stack(ws), np.stack(masks)


def _digits_losses(epochs: tuple[int, ...] = (1, 2, 3, 5, 8, 12)) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample CE float32 [len(epochs), 1797] of a small MLP trained on digits with 40% symmetric label
    noise, after each of ``epochs`` full-batch epochs, and the noisy labels int64 [1797]."""
    from sklearn.datasets import load_digits

    from tad_plugin.noise import make_noisy_labels

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16
    noisy = make_noisy_labels(torch.tensor(y), "symmetric", 0.4, num_classes=10, seed=0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    rows = []
    for epoch in range(1, max(epochs) + 1):
        for batch in torch.randperm(len(x)).split(128):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), noisy[batch]).backward()
            opt.step()
        if epoch in epochs:
            with torch.no_grad():
                rows.append(torch.nn.functional.cross_entropy(model(x), noisy, reduction="none"))
    return torch.stack(rows), noisy


def _bimodal_losses(e: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 [e, n] losses, each row two modes with its own noise rate, spread and separation."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(e):
        wrong = torch.rand(n, generator=g) < 0.1 + 0.6 * float(torch.rand(1, generator=g))
        low = -(0.05 + 0.3 * float(torch.rand(1, generator=g))) * torch.log(torch.rand(n, generator=g).clamp_min(1e-12))
        high = (0.8 + 2.5 * float(torch.rand(1, generator=g)) + 0.7 * torch.randn(n, generator=g)).abs()
        rows.append(torch.where(wrong, high, low))
    return torch.stack(rows), torch.randint(0, 10, (e, n), generator=g)


@pytest.mark.parametrize("fixture", ["digits", "bimodal"])
def test_batched_division_equals_the_per_expert_sklearn_division(fixture):
    from tad_plugin.division import divide_by_loss_batch

    if fixture == "digits":
        losses, noisy = _digits_losses()
        labels = noisy.expand(losses.shape[0], -1)
    else:
        losses, labels = _bimodal_losses(8, 6_000, seed=3)
    w, trusted = _sklearn_division(losses, labels, 10)
    splits = divide_by_loss_batch(losses, labels, 10)
    assert len(splits) == losses.shape[0]
    np.testing.assert_array_equal(torch.stack([s.trusted for s in splits]).numpy(), trusted)
    np.testing.assert_allclose(torch.stack([s.confidence for s in splits]).numpy(), w, rtol=0, atol=1e-5)
    assert 0.3 < trusted.mean() < 0.95  # real divisions, not all-or-nothing
    for e, split in enumerate(splits):  # each row as the one-row division gives it
        one = divide_by_loss(losses[e], labels[e], 10)
        assert torch.equal(one.trusted, split.trusted) and torch.equal(one.thresholds.isnan(), split.thresholds.isnan())


@pytest.mark.parametrize("random_state", [0, 3])
def test_kmeans_initialisation_equals_sklearn_kmeans(random_state):
    from sklearn.cluster import KMeans

    from tad_plugin.division import _kmeans_responsibilities

    losses = torch.cat([_digits_losses((1, 4))[0], _bimodal_losses(6, 3_000, seed=random_state)[0][:, :1797]])
    x = losses.double()
    x = (x - x.amin(1, keepdim=True)) / (x.amax(1, keepdim=True) - x.amin(1, keepdim=True))
    got = _kmeans_responsibilities(x, torch.zeros(len(x), dtype=torch.bool), random_state)[:, :, 1]
    for row, labels in zip(x.numpy(), got.long().numpy()):
        expected = KMeans(n_clusters=2, n_init=1, random_state=random_state).fit(row[:, None]).labels_
        np.testing.assert_array_equal(labels, expected)


def test_batched_division_keeps_a_degenerate_row_whole_and_the_others_divided():
    from tad_plugin.division import divide_by_loss_batch

    losses, labels = _bimodal_losses(3, 2_000, seed=1)
    losses[1] = 0.25
    with pytest.warns(DegenerateLossWarning, match="row 1"):
        splits = divide_by_loss_batch(losses, labels[0], 10)  # labels [N]: shared by the rows
    assert bool(splits[1].trusted.all()) and torch.equal(splits[1].confidence, torch.ones(2_000))
    for e in (0, 2):
        assert torch.equal(splits[e].trusted, divide_by_loss(losses[e], labels[0], 10).trusted)
        assert not bool(splits[e].trusted.all())
    with pytest.raises(ValueError, match=r"\[E, N\]"):
        divide_by_loss_batch(losses[0], labels[0], 10)
    with pytest.raises(ValueError, match="NaN"):
        divide_by_loss_batch(torch.full((2, 5), float("nan")), labels[0, :5], 10)

import pytest
import torch

from tad_plugin.data import load_dataset
from tad_plugin.division import divide_by_loss
from tad_plugin.noise import make_noisy_labels
from tad_plugin.recalibration import calibrated_threshold, recalibrate_with_anchors, weighted_vote
from tad_plugin.search import cosine_topk, faiss_available


def _separable(n_per_class=60, c=4, d=16, noise_rate=0.4, seed=0):
    """Well-separated clusters; the outer loop trusted ~all clean samples and a few noisy ones."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g) * 4
    clean = torch.arange(c).repeat_interleave(n_per_class)
    features = centers[clean] + torch.randn(len(clean), d, generator=g)
    flip = torch.rand(len(clean), generator=g) < noise_rate
    noisy = torch.where(flip, (clean + torch.randint(1, c, clean.shape, generator=g)) % c, clean)
    trusted = ~flip & (torch.rand(len(clean), generator=g) < 0.7)
    trusted[torch.nonzero(flip).flatten()[:3]] = True  # a few noisy samples slipped into the trusted space
    anchors = centers.repeat_interleave(5, 0) + 0.5 * torch.randn(5 * c, d, generator=g)
    return features, noisy, clean, trusted, anchors, torch.arange(c).repeat_interleave(5)


BACKENDS = ["torch", pytest.param("faiss", marks=pytest.mark.skipif(not faiss_available(),
                                                                  reason="faiss not installed"))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule", ["calibrated", "fixed"])
def test_fixes_labels_and_grows_trusted_space(backend, rule):
    # The default (calibrated, 30 voters) needs classes with more references than voters; the fixed rule
    # is run with its earlier 10 voters on the smaller clusters.
    features, noisy, clean, trusted, anchors, anchor_labels = _separable(n_per_class=150 if rule == "calibrated"
                                                                         else 60)
    kwargs = {} if rule == "calibrated" else {"vote_threshold": "fixed", "num_neighbors": 10}
    out = recalibrate_with_anchors(features, noisy, trusted, anchors, anchor_labels, 4, backend=backend, **kwargs)
    assert out.trusted.sum() > 2 * trusted.sum()  # the trusted space grows
    precision_before = (noisy[trusted] == clean[trusted]).float().mean()
    precision_after = (out.labels[out.trusted] == clean[out.trusted]).float().mean()
    assert precision_after >= precision_before and precision_after > 0.99
    assert (out.labels == clean).float().mean() > (noisy == clean).float().mean() + 0.2
    recalled = out.trusted & ~trusted
    assert (out.labels[recalled] == clean[recalled]).all()
    if rule == "fixed":  # the noisy samples that slipped into the trusted space are sieved, keeping their label
        slipped = trusted & (noisy != clean)
        assert not out.trusted[slipped].any() and torch.equal(out.labels[slipped], noisy[slipped])


def test_calibrated_rule_sieves_a_lone_intruder():
    features, noisy, clean, trusted, anchors, anchor_labels = _separable(n_per_class=150)
    slipped = torch.nonzero(trusted & (noisy != clean)).flatten()
    trusted[slipped[1:]] = False  # one mislabelled sample in the trusted space: its neighbours all disagree
    out = recalibrate_with_anchors(features, noisy, trusted, anchors, anchor_labels, 4)
    assert not out.trusted[slipped[0]] and out.labels[slipped[0]] == noisy[slipped[0]]
    assert out.trusted[trusted].sum() == trusted.sum() - 1  # nobody else is sieved


def test_calibrated_threshold_is_a_quantile_of_the_trusted_own_label_shares():
    g = torch.Generator().manual_seed(0)
    shares = torch.softmax(3 * torch.randn(400, 5, generator=g), dim=1)
    labels = torch.randint(0, 5, (400,), generator=g)
    trusted = torch.rand(400, generator=g) < 0.5
    shares[~trusted] = 1.0 / 5  # untrusted rows do not enter the bar
    own = shares[torch.arange(400), labels]
    for q in (0.3, 0.75, 0.9):
        expected = max(float(torch.quantile(own[trusted].double(), q)), 0.5 + 1e-6)
        assert calibrated_threshold(shares, labels, trusted, q) == pytest.approx(expected)
    assert calibrated_threshold(shares, labels, trusted, 0.0) > 0.5  # at least a strict majority
    no_vote = trusted.clone()
    shares[trusted & (torch.arange(400) % 2 == 0)] = 0.0  # trusted rows without a vote are left out too
    kept = trusted & (torch.arange(400) % 2 == 1)
    assert calibrated_threshold(shares, labels, no_vote, 0.75) == pytest.approx(
        max(float(torch.quantile(own[kept].double(), 0.75)), 0.5 + 1e-6))
    assert calibrated_threshold(shares, labels, torch.zeros(400, dtype=torch.bool), 0.75) == 1.0


@pytest.mark.parametrize("spread, expected_bar", [(0.5, "unanimous"), (6.0, "lower")])
def test_calibrated_bar_follows_how_tight_the_classes_are(spread, expected_bar):
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g) * 4
    labels = torch.arange(4).repeat_interleave(150)
    features = torch.nn.functional.normalize(centers[labels] + spread * torch.randn(600, 16, generator=g), dim=1)
    trusted = torch.rand(600, generator=g) < 0.5
    refs = torch.nonzero(trusted).flatten()
    shares = weighted_vote(features, labels, torch.ones(600), refs, 4, 30, backend="torch")
    bar = calibrated_threshold(shares, labels, trusted, 0.75)
    if expected_bar == "unanimous":  # tight clusters: a typical trusted sample's 30 voters all agree
        assert bar == 1.0
    else:  # overlapping clusters: most samples' neighbourhoods are mixed, the bar comes down with them
        assert 0.5 < bar < 0.95
        recalled = ~trusted & (shares.max(1).values >= bar)
        assert recalled.sum() > 20  # ...so that votes can still act
        assert (shares.argmax(1)[recalled] == labels[recalled]).float().mean() > 0.95


def test_calibrated_rule_keeps_precision_on_digits():
    """Real data: digits pixels, 40% symmetric noise, the outer loop's division of a small MLP's losses."""
    torch.manual_seed(0)
    ds = load_dataset("digits")
    clean = ds.train_labels
    noisy = make_noisy_labels(clean, "symmetric", 0.4, num_classes=10, seed=0)
    pixels = ds.train_images.float().flatten(1) / 255
    x = (pixels - pixels.mean(0)) / (pixels.std(0) + 1e-3)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(5):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), noisy[idx]).backward()
            opt.step()
    with torch.no_grad():
        split = divide_by_loss(torch.nn.functional.cross_entropy(model(x), noisy, reduction="none"), noisy, 10)
    trusted = split.trusted
    anchors = torch.cat([torch.nonzero(trusted & (noisy == c)).flatten()[:5] for c in range(10)])
    out = recalibrate_with_anchors(pixels, noisy, trusted, pixels[anchors], noisy[anchors], 10)
    before = (noisy[trusted] == clean[trusted]).float().mean()
    after = (out.labels[out.trusted] == clean[out.trusted]).float().mean()
    assert out.trusted.sum() > 1.1 * trusted.sum() and after >= before


def test_reliability_contract():
    features, noisy, _, trusted, anchors, anchor_labels = _separable(seed=1)
    out = recalibrate_with_anchors(features, noisy, trusted, anchors, anchor_labels, 4)
    assert torch.isnan(out.reliability[~trusted]).all()
    r = out.reliability[trusted]
    assert ((r >= 0) & (r <= 1)).all()
    for c in range(4):  # per-class min-max: each class has a most (1) and least (0) reliable sample
        rc = out.reliability[trusted & (noisy == c)]
        assert torch.isclose(rc.max(), torch.tensor(1.0)) and torch.isclose(rc.min(), torch.tensor(0.0))
    # Closest to the anchors = most reliable: the noisy intruders score low within their labelled class.
    intruders = trusted & (noisy != _separable(seed=1)[2])
    assert out.reliability[intruders].mean() < out.reliability[trusted & ~intruders].mean()


def test_conservative_thresholds_recall_nothing_when_votes_split():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(200, 8, generator=g)  # no structure: votes are split
    labels = torch.arange(200) % 4
    trusted = torch.arange(200) < 100
    out = recalibrate_with_anchors(features, labels, trusted, torch.randn(12, 8, generator=g),
                                   torch.arange(4).repeat_interleave(3), 4)
    assert torch.equal(out.labels[~trusted], labels[~trusted])
    assert out.trusted[~trusted].float().mean() < 0.1


def test_bad_inputs():
    features, noisy, _, trusted, anchors, anchor_labels = _separable()
    with pytest.raises(ValueError, match="no anchors"):
        recalibrate_with_anchors(features, noisy, trusted, anchors[:5], anchor_labels[:5], 4)
    with pytest.raises(ValueError, match="feature dimension"):
        recalibrate_with_anchors(features, noisy, trusted, anchors[:, :3], anchor_labels, 4)
    with pytest.raises(TypeError, match="bool"):
        recalibrate_with_anchors(features, noisy, trusted.long(), anchors, anchor_labels, 4)
    bad = features.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        recalibrate_with_anchors(bad, noisy, trusted, anchors, anchor_labels, 4)
    with pytest.raises(ValueError, match="recall_confidence"):
        recalibrate_with_anchors(features, noisy, trusted, anchors, anchor_labels, 4, recall_confidence=0.3)
    with pytest.raises(ValueError, match="vote_threshold"):
        recalibrate_with_anchors(features, noisy, trusted, anchors, anchor_labels, 4, vote_threshold="auto")
    with pytest.raises(ValueError, match="calibration_quantile"):
        recalibrate_with_anchors(features, noisy, trusted, anchors, anchor_labels, 4, calibration_quantile=1.5)


def test_single_anchor_class_uses_pooled_covariance():
    features, noisy, clean, trusted, anchors, anchor_labels = _separable()
    keep = torch.ones(len(anchor_labels), dtype=torch.bool)
    keep[(anchor_labels == 2).nonzero().flatten()[1:]] = False
    out = recalibrate_with_anchors(features, noisy, trusted, anchors[keep], anchor_labels[keep], 4)
    assert torch.isfinite(out.reliability[trusted]).all()


def test_search_backends_agree_and_clamp_k():
    g = torch.Generator().manual_seed(0)
    q, db = torch.randn(50, 12, generator=g), torch.randn(30, 12, generator=g)
    s_t, i_t = cosine_topk(q, db, 5, backend="torch")
    brute = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(db, dim=1).T
    assert torch.equal(i_t, brute.topk(5, dim=1).indices)
    assert (s_t[:, :-1] >= s_t[:, 1:]).all()
    if faiss_available():
        s_f, i_f = cosine_topk(q, db, 5, backend="faiss")
        assert torch.equal(i_f, i_t) and torch.allclose(s_f, s_t, atol=1e-5)
    assert cosine_topk(q, db, 100, backend="torch")[1].shape == (50, 30)
    with pytest.raises(ValueError, match="empty"):
        cosine_topk(q, db[:0], 3)


def test_low_rank_mahalanobis_equals_sklearn_ledoit_wolf():
    from sklearn.covariance import LedoitWolf

    from tad_plugin.recalibration import anchor_covariances

    g = torch.Generator().manual_seed(3)
    anchors = torch.randn(12, 20, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3, 20)
    labels = torch.arange(2).repeat_interleave(6)
    x = torch.randn(7, 20, generator=g, dtype=torch.float64)
    for c, cov in enumerate(anchor_covariances(anchors, labels, 2)):
        lw = LedoitWolf().fit(anchors[labels == c].numpy())
        diff = x - torch.from_numpy(lw.location_)
        expected = ((diff @ torch.from_numpy(lw.precision_)) * diff).sum(1)
        assert torch.allclose(cov.squared_distance(x), expected, rtol=1e-6)


def test_two_anchors_per_class_do_not_break_the_covariance():
    from tad_plugin.recalibration import anchor_covariances

    anchors = torch.tensor([[1.0, 0, 0], [3.0, 0, 0], [0, 1.0, 0], [0, 1.0, 0]])  # class 1: identical pair
    covs = anchor_covariances(anchors, torch.tensor([0, 0, 1, 1]), 2)
    x = torch.randn(5, 3)
    for cov in covs:
        d = cov.squared_distance(x)
        assert torch.isfinite(d).all() and (d >= 0).all()

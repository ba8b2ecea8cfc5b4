"""NT-Xent against a direct computation; cosine kNN on separable toy features."""

import math

import pytest
import torch
import torch.nn.functional as F

from tad_plugin.features.knn import knn_accuracy, knn_predict
from tad_plugin.features.simclr import nt_xent_loss


def _direct_nt_xent(z1, z2, t):
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n, b = len(z), len(z1)
    total = 0.0
    for i in range(n):
        pos = (i + b) % n
        sims = [math.exp(float(z[i] @ z[k]) / t) for k in range(n) if k != i]
        total += -math.log(math.exp(float(z[i] @ z[pos]) / t) / sum(sims))
    return total / n


@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_nt_xent_matches_direct_computation(t):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    assert nt_xent_loss(z1, z2, t).item() == pytest.approx(_direct_nt_xent(z1, z2, t), rel=1e-5)


def test_nt_xent_is_small_for_matching_views_and_has_gradients():
    z = torch.eye(8, requires_grad=True)
    aligned = nt_xent_loss(z, z.detach().clone(), 0.1)
    shuffled = nt_xent_loss(z, z.detach().roll(1, dims=0), 0.1)
    assert aligned < 0.01 < shuffled
    aligned.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_nt_xent_rejects_bad_input():
    with pytest.raises(ValueError, match=r"needs two \[B, D\] tensors with B >= 2, got \(4, 3\) and \(5, 3\)"):
        nt_xent_loss(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        nt_xent_loss(torch.randn(4, 3), torch.randn(4, 3), temperature=0)


def _clusters(n_per, noise_seed, classes=4, dim=16):
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(0)) * 5
    noise = 0.1 * torch.randn(classes * n_per, dim, generator=torch.Generator().manual_seed(noise_seed))
    return centres.repeat_interleave(n_per, 0) + noise, torch.arange(classes).repeat_interleave(n_per)


def test_knn_is_perfect_on_separable_features():
    bank, labels = _clusters(60, noise_seed=1)  # 240 bank rows, so k = 200 is not capped
    queries, truth = _clusters(10, noise_seed=2)
    assert knn_accuracy(bank, labels, queries, truth, ks=(1, 10, 200)) == {1: 1.0, 10: 1.0, 200: 1.0}
    shuffled = truth.roll(10)  # wrong answers must show: the accuracy is not trivially 1
    assert knn_accuracy(bank, labels, queries, shuffled, ks=(10,))[10] == 0.0


def test_knn_uses_cosine_not_euclidean():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    query = torch.tensor([[10.0, 0.5]])  # far from both in Euclidean terms, aligned with class 0
    assert knn_predict(bank, labels, query, k=1).tolist() == [0]


def test_knn_tie_goes_to_the_more_similar_class():
    bank = torch.tensor([[1.0, 0.1], [0.1, 1.0]])
    labels = torch.tensor([1, 0])
    query = torch.tensor([[1.0, 0.0]])
    assert knn_predict(bank, labels, query, k=2).tolist() == [1]


def test_knn_rejects_bad_input():
    with pytest.raises(ValueError, match="share D"):
        knn_predict(torch.randn(4, 3), torch.zeros(4, dtype=torch.int64), torch.randn(2, 5), k=1)
    with pytest.raises(ValueError, match="k must"):
        knn_predict(torch.randn(4, 3), torch.zeros(4, dtype=torch.int64), torch.randn(2, 3), k=9)


def test_weighted_knn_lets_close_neighbours_outvote_far_ones():
    from tad_plugin.features.knn import knn_predict

    angle = torch.tensor([0.05, -0.05, 1.0, 1.1, -1.0])  # two close class-1 rows, three far class-0 rows
    bank = torch.stack([angle.cos(), angle.sin()], dim=1)
    labels = torch.tensor([1, 1, 0, 0, 0])
    query = torch.tensor([[1.0, 0.0]])
    assert knn_predict(bank, labels, query, k=5).item() == 0  # majority: 3 against 2
    assert knn_predict(bank, labels, query, k=5, temperature=0.1).item() == 1  # weighted: similarity wins
    with pytest.raises(ValueError, match="temperature"):
        knn_predict(bank, labels, query, k=5, temperature=0.0)

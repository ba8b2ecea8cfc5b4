"""Cosine k-nearest-neighbour classification: how SSL features are evaluated (labels are used here only)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..search import cosine_topk

__all__ = ["knn_predict", "knn_accuracy"]


def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, k: int,
                num_classes: int | None = None, chunk_size: int = 1024,
                temperature: float | None = None) -> torch.Tensor:
    """Vote of the ``k`` most cosine-similar bank rows for every query: a majority vote, or with
    ``temperature`` T each neighbour weighted by exp(similarity / T) (the weighted kNN of Wu et al.,
    2018, used by the SimCLR/MoCo kNN monitors that published CIFAR numbers come from; T = 0.1 there).

    Args:
        bank: float features [N, D] (any scale; rows are L2-normalised here).
        bank_labels: int64 [N], values in [0, num_classes).
        queries: float features [M, D] on the same device as ``bank``.
        k: neighbours per query, 1 <= k <= N.
        num_classes: number of classes (``None``: ``bank_labels.max() + 1``).
        chunk_size: queries per similarity block (memory: chunk_size x N floats).
        temperature: None = majority vote; > 0 = similarity-weighted vote.

    Returns:
        int64 [M] predicted labels. Ties in the vote go to the class whose voters are, summed, more
        similar to the query.
    """
    if bank.dim() != 2 or queries.dim() != 2 or bank.shape[1] != queries.shape[1]:
        raise ValueError(f"bank [N, D] and queries [M, D] must share D, got {tuple(bank.shape)} and "
                         f"{tuple(queries.shape)}")
    if bank_labels.shape != (bank.shape[0],) or bank_labels.dtype != torch.int64:
        raise ValueError(f"bank_labels must be int64 [{bank.shape[0]}], got {bank_labels.dtype} "
                         f"{tuple(bank_labels.shape)}")
    if not 1 <= k <= bank.shape[0]:
        raise ValueError(f"k must lie in [1, {bank.shape[0]}] (the bank size), got {k}")
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature must be > 0 (or None for a majority vote), got {temperature}")
    c = int(bank_labels.max()) + 1 if num_classes is None else num_classes
    labels = bank_labels.to(bank.device)
    out = []
    for start in range(0, queries.shape[0], chunk_size):
        sim, idx = cosine_topk(queries[start:start + chunk_size].to(bank.device), bank, k, backend="torch")
        votes = F.one_hot(labels[idx], c).float()  # [m, k, c]
        if temperature is not None:
            votes = votes * (sim.clamp(min=-1, max=1) / temperature).exp().unsqueeze(2)
        score = votes.sum(dim=1) + 1e-3 * (votes * sim.unsqueeze(2).clamp(min=-1, max=1)).sum(dim=1) / k
        out.append(score.argmax(dim=1))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.int64, device=bank.device)


def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, ks: Sequence[int] = (10, 200),
                 num_classes: int | None = None, temperature: float | None = None) -> dict[int, float]:
    """Top-1 accuracy (fraction in [0, 1]) of :func:`knn_predict` on the test split for each ``k``,
    with the training features as the bank and the test features as queries (k is capped at the bank
    size); ``temperature`` as in :func:`knn_predict` (None = majority vote)."""
    if test_labels.shape != (test_features.shape[0],):
        raise ValueError(f"test_labels must be [{test_features.shape[0]}], got {tuple(test_labels.shape)}")
    truth = test_labels.to(train_features.device)
    return {int(k): float((knn_predict(train_features, train_labels, test_features, min(k, len(train_labels)),
                                       num_classes, temperature=temperature) == truth).float().mean())
            for k in ks}

"""The inner loop's recalibration (Sec. 4.2): anchor-based reliability, then a reliability-weighted vote.

1. Features and anchors are L2-normalised (self-supervised features are compared by angle).
2. Per class c, the anchors' mean and covariance; the covariance is estimated with Ledoit-Wolf
   shrinkage because anchors are few (n per class, n << D makes the raw covariance singular), and kept
   in low-rank form (Woodbury) so no D x D matrix is built. A class with a single anchor uses the pooled
   within-class covariance of all anchors.
3. Each trusted sample's Mahalanobis distance to the anchors of its labelled class (Eq. 7), min-max
   normalised within the class, becomes a reliability ``r = 1 - normalised distance``: Eq. 8 weights
   neighbours by their *proximity* to the anchors, so the closest sample is the most reliable (r = 1).
4. The ``top_k`` most reliable trusted samples of each class form the reference set.
5. Every sample's ``num_neighbors`` most cosine-similar references (FAISS or torch, see
   :mod:`tad_plugin.search`; a sample never votes for itself) vote with weight ``r_i * sim``
   (Eq. 8 restricted to the nearest references; ``num_neighbors >= top_k * C`` is Eq. 8 verbatim).
   A class's *share* is its part of the total vote; the winning class is the pseudo-label.
6. Which votes act (``vote_threshold``):

   * ``"calibrated"`` (default): the bar is set by the trusted space itself. Every trusted sample's
     vote (leaving itself out) gives the share of its own label; the bar ``tau`` is the
     ``calibration_quantile`` of those shares (:func:`calibrated_threshold`), i.e. "as well supported
     by its neighbours as a typical trusted sample". An untrusted sample whose winning share is
     ``>= max(tau, recall_confidence)`` is recalled with the winning class; a trusted sample whose vote
     gives another class a share ``>= max(tau, sieve_confidence)`` is sieved out (label kept). The bar
     adapts per round and per feature space: where the trusted samples' neighbourhoods are unanimous
     (digits' pixels) it demands unanimity; the fixed confidences stay as its floor, because where
     the classes overlap the trusted samples' own support, and with it ``tau``, sinks towards a bare
     majority at which the vote is often wrong.
   * ``"fixed"``: untrusted samples with share ``>= recall_confidence`` are recalled, trusted samples
     whose vote gives another class a share ``>= sieve_confidence`` are sieved.

   Why not the trusted samples' leave-one-out *accuracy* as a function of the share (the textbook
   calibration): trusted samples are the easy ones, so their vote accuracy overstates the untrusted
   samples' at the same share; their *support* (the share) is what serves as a bar to reach.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .checks import check_bool_mask, check_features, check_labels
from .results import Recalibration
from .search import Backend, unit_topk

__all__ = ["recalibrate_with_anchors", "recalibrate_batch_with_anchors", "anchor_covariances",
           "mahalanobis_reliability", "mahalanobis_reliability_batch", "calibrated_threshold", "calibrated_thresholds",
           "weighted_vote", "reference_set", "reference_sets", "apply_vote",
           "check_vote_settings", "ShrunkCovariance", "Threshold"]

#: How the inner loop decides which votes act (see the module docstring, step 6).
Threshold = Literal["calibrated", "fixed"]


@dataclass(frozen=True)
class ShrunkCovariance:
    """One class's Ledoit-Wolf covariance ``Sigma = a * I + b * Xc^T Xc`` kept in low-rank form.

    ``Xc`` [n, D] are the class's anchors minus their mean, ``b = (1 - delta) / n`` and
    ``a = delta * trace(S) / D`` with ``S = Xc^T Xc / n`` and ``delta`` scikit-learn's Ledoit-Wolf
    shrinkage (floored at 1e-3). The inverse is applied through the Woodbury identity, so a distance costs O(n D) and no
    D x D matrix is formed (D = 512 to 3072 features, n = a handful of anchors).
    """

    mean: torch.Tensor  # float64 [D]
    centred: torch.Tensor  # float64 [n, D]
    a: float
    b: float
    _on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def squared_distance(self, x: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance of the rows of ``x`` [M, D] (float64 [M], on x's device)."""
        mean, xc, k = self._copies(x.device)
        v = x.double() - mean
        if self.a <= 0:  # all anchors identical: no spread to scale by, fall back to Euclidean
            return (v * v).sum(1)
        proj = v @ xc.T  # [M, n]
        correction = (proj * torch.linalg.solve(k, proj.T).T).sum(1)
        return (((v * v).sum(1) - self.b * correction) / self.a).clamp_min(0)

    def _copies(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``mean`` [D], ``centred`` [n, D] and the Woodbury kernel ``a I_n + b Xc Xc^T`` [n, n] (float64)
        on ``device``, made once per device."""
        if device not in self._on_device:
            xc = self.centred.to(device)
            # Woodbury: Sigma^-1 = (I - b Xc^T (a I_n + b Xc Xc^T)^-1 Xc) / a
            k = self.a * torch.eye(xc.shape[0], dtype=torch.float64, device=device) + self.b * (xc @ xc.T)
            self._on_device[device] = (self.mean.to(device), xc, k)
        return self._on_device[device]


_MIN_SHRINKAGE = 1e-3


def _shrunk(mean: torch.Tensor, centred: torch.Tensor) -> ShrunkCovariance:
    from sklearn.covariance import ledoit_wolf_shrinkage

    n, d = centred.shape
    # Floored so the covariance stays invertible when the estimate hits 0 (e.g. two anchors per class).
    delta = max(float(ledoit_wolf_shrinkage(centred.numpy(), assume_centered=True)), _MIN_SHRINKAGE)
    mu = float((centred * centred).sum()) / (n * d)
    return ShrunkCovariance(mean, centred, a=delta * mu, b=(1.0 - delta) / n)


def anchor_covariances(anchor_features: torch.Tensor, anchor_labels: torch.Tensor,
                       num_classes: int) -> list[ShrunkCovariance]:
    """Per-class anchor mean and Ledoit-Wolf covariance (CPU, float64). A class with a single anchor
    uses the pooled within-class covariance of all anchors (around its own mean).

    Raises ``ValueError`` if a class has no anchor, or every class has only one.
    """
    x = anchor_features.detach().double().cpu()
    y = anchor_labels.detach().cpu()
    counts = torch.bincount(y, minlength=num_classes)
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"classes {missing[:10]} have no anchors; distill at least 2 anchor images per "
                         f"class (anchor IPC >= 2) before recalibrating")
    means = torch.zeros(num_classes, x.shape[1], dtype=torch.float64).index_add_(0, y, x) / counts[:, None]
    pooled = None
    out = []
    for c in range(num_classes):
        if counts[c] >= 2:
            out.append(_shrunk(means[c], x[y == c] - means[c]))
            continue
        if pooled is None:
            if int((counts >= 2).sum()) == 0:
                raise ValueError("every class has a single anchor: a covariance cannot be estimated; "
                                 "distill at least 2 anchor images per class")
            pooled = _shrunk(means[c], x - means[y])
        out.append(ShrunkCovariance(means[c], pooled.centred, pooled.a, pooled.b))
    return out


def mahalanobis_reliability(features: torch.Tensor, labels: torch.Tensor, covariances: list[ShrunkCovariance],
                            num_classes: int) -> torch.Tensor:
    """Reliability in [0, 1] of each row of ``features`` w.r.t. the anchors of its class ``labels``.

    Mahalanobis distance (Eq. 7) to the class's anchor distribution, min-max normalised within each class,
    turned into proximity ``1 - d``. A class whose samples are all equidistant gets reliability 1.
    Returns float32 [M] on the device of ``features``.
    """
    counts = torch.bincount(labels, minlength=num_classes).tolist()  # the one host read
    rows = torch.arange(labels.numel(), device=features.device)
    return mahalanobis_reliability_batch(features, rows, labels, counts, covariances[:num_classes])


def weighted_vote(features: torch.Tensor, labels: torch.Tensor, reliability: torch.Tensor, refs: torch.Tensor,
                  num_classes: int, num_neighbors: int, backend: Backend = "auto", *,
                  unit: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 8's vote of every sample by its ``num_neighbors`` most similar references, as class shares.

    Args:
        features: float [N, D], L2-normalised.
        labels: int64 [N], the references' labels are read from it.
        reliability: float [N], the references' weights (other rows are not read).
        refs: int64 [R], R >= 1, indices of the reference samples.
        unit: float32 [N, D], ``normalize(features)`` when the caller has it (the search compares these
            rows); computed here otherwise.

    Returns:
        float [N, C]: each row the classes' shares of the sample's vote (weights ``r * max(sim, 0)``),
        summing to 1, or all 0 where no reference carries weight. A reference never votes for itself.
    """
    n = features.shape[0]
    if refs.numel() == 0:
        raise ValueError("refs is empty: there is no reference to vote")
    if n == 0:
        return torch.zeros(0, num_classes, device=features.device)
    if unit is None:
        unit = torch.nn.functional.normalize(features.detach().float(), dim=1)
    sims, nbr = unit_topk(unit, unit[refs], min(num_neighbors + 1, refs.numel()), backend=backend)
    nbr_global = refs[nbr]
    valid = nbr_global != torch.arange(n, device=features.device)[:, None]
    valid &= torch.cumsum(valid.int(), dim=1) <= num_neighbors
    weights = torch.where(valid, reliability[nbr_global] * sims.clamp_min(0), torch.zeros_like(sims))
    votes = torch.zeros(n, num_classes, device=features.device)
    votes.scatter_add_(1, labels[nbr_global], weights)
    return votes / votes.sum(1, keepdim=True).clamp_min(1e-12)


def calibrated_thresholds(shares: torch.Tensor, labels: torch.Tensor, trusted: torch.Tensor,
                          quantile: float) -> list[float]:
    """:func:`calibrated_threshold` of E experts at once, with one host read.

    Args:
        shares: float [E, N, C]; labels: int64 [E, N]; trusted: bool [E, N]; quantile: in [0, 1].

    Returns:
        E bars, entry ``e`` equal to ``calibrated_threshold(shares[e], labels[e], trusted[e], quantile)``.
    """
    own = shares.gather(2, labels[..., None]).squeeze(2).double()
    voted = trusted & (shares.sum(2) > 0)
    q = torch.nanquantile(torch.where(voted, own, float("nan")), quantile, dim=1)  # NaN where none voted
    bars = torch.where(voted.any(1), q.clamp_min(0.5 + 1e-6), 1.0)
    return [float(b) for b in bars.tolist()]  # the one host read


def calibrated_threshold(shares: torch.Tensor, labels: torch.Tensor, trusted: torch.Tensor,
                         quantile: float) -> float:
    """The vote share a sample must reach to be acted on, set by the trusted space's own support.

    Args:
        shares: float [N, C], :func:`weighted_vote`'s output (each sample left out of its own vote).
        labels: int64 [N], current labels.
        trusted: bool [N].
        quantile: in [0, 1]; which quantile of the trusted samples' own-label shares is the bar.

    Returns:
        ``max(q-quantile of shares[i, labels[i]] over trusted i with a vote, 0.5 + 1e-6)``: a bar of at
        least a strict majority; 1.0 when no trusted sample has a vote (nothing acts).
    """
    if not 0 <= quantile <= 1:
        raise ValueError(f"quantile must lie in [0, 1] (which quantile of the trusted shares is the bar), got "
                         f"{quantile}")
    own = shares.gather(1, labels[:, None]).squeeze(1)
    voted = trusted & (shares.sum(1) > 0)
    if not bool(voted.any()):
        return 1.0
    return max(float(torch.quantile(own[voted].double(), quantile)), 0.5 + 1e-6)


def recalibrate_with_anchors(features: torch.Tensor, labels: torch.Tensor, trusted: torch.Tensor,
                             anchor_features: torch.Tensor, anchor_labels: torch.Tensor, num_classes: int, *,
                             top_k: int = 100, num_neighbors: int = 30, vote_threshold: Threshold = "calibrated",
                             calibration_quantile: float = 0.75, recall_confidence: float = 0.9,
                             sieve_confidence: float = 0.9, sieve: bool = True,
                             backend: Backend = "auto") -> Recalibration:
    """TAD's inner loop; see the module docstring for the steps and :func:`tad_plugin.hookspecs.recalibrate`
    for the argument and return contracts.

    Args:
        top_k: reference samples per class (the most reliable trusted ones).
        num_neighbors: references that vote for each sample.
        vote_threshold: ``"calibrated"`` (the bar from the trusted space, :func:`calibrated_threshold`) or
            ``"fixed"`` (``recall_confidence`` / ``sieve_confidence``).
        calibration_quantile: the quantile of the trusted samples' own-label shares used as the bar,
            in [0, 1] (``"calibrated"`` only).
        recall_confidence: minimum vote share to recall an untrusted sample, in (0.5, 1] (with
            ``"calibrated"``: the bar's floor).
        sieve_confidence: minimum vote share of another class to sieve a trusted sample, in (0.5, 1]
            (with ``"calibrated"``: the bar's floor).
        sieve: whether to sieve trusted samples at all.
        backend: nearest-neighbour backend, see :func:`tad_plugin.search.cosine_topk`.
    """
    feats, unit = _CACHE.get((features,), "features", lambda: _unit_features(features))
    n, d = features.shape
    check_labels(labels, num_classes, n=n)
    check_bool_mask(trusted, "trusted", n)
    anchors = _CACHE.get((anchor_features, anchor_labels), ("anchors", d, num_classes),
                         lambda: _unit_anchors(anchor_features, anchor_labels, num_classes, d))
    check_vote_settings(top_k=top_k, num_neighbors=num_neighbors, vote_threshold=vote_threshold,
                        calibration_quantile=calibration_quantile, recall_confidence=recall_confidence,
                        sieve_confidence=sieve_confidence)
    device = features.device
    labels = labels.to(device)
    trusted = trusted.to(device)

    reliability = torch.full((n,), float("nan"), device=device)
    trusted_idx = torch.nonzero(trusted).flatten()
    if trusted_idx.numel() == 0:
        return Recalibration(labels=labels.clone(), trusted=trusted.clone(), reliability=reliability)

    covariances = _CACHE.get((anchor_features, anchor_labels), ("covariances", num_classes),
                             lambda: anchor_covariances(anchors, anchor_labels, num_classes))
    reliability[trusted_idx] = mahalanobis_reliability(feats[trusted_idx], labels[trusted_idx], covariances,
                                                       num_classes)

    refs = reference_set(trusted_idx, labels, reliability, num_classes, top_k)
    shares = weighted_vote(feats, labels, reliability, refs, num_classes, num_neighbors, backend, unit=unit)
    new_labels, new_trusted = apply_vote(shares, labels, trusted, vote_threshold=vote_threshold,
                                         calibration_quantile=calibration_quantile,
                                         recall_confidence=recall_confidence, sieve_confidence=sieve_confidence,
                                         sieve=sieve)
    return Recalibration(labels=new_labels, trusted=new_trusted, reliability=reliability)


def recalibrate_batch_with_anchors(features: torch.Tensor, labels: torch.Tensor, trusted: torch.Tensor,
                                   anchor_features: torch.Tensor, anchor_labels: torch.Tensor, num_classes: int, *,
                                   top_k: int = 100, num_neighbors: int = 30,
                                   vote_threshold: Threshold = "calibrated", calibration_quantile: float = 0.75,
                                   recall_confidence: float = 0.9, sieve_confidence: float = 0.9, sieve: bool = True,
                                   backend: Backend = "auto") -> list[Recalibration]:
    """:func:`recalibrate_with_anchors` for the E experts of a group at once, with the same results.

    The features' normalisation and the anchors' covariances are made once; every expert's Mahalanobis
    distances, reference set and search run on exactly the rows the per-expert call uses (so the results
    are identical), queued without host reads in between: three host reads in all (the trusted pairs, their
    counts per expert and class, the calibrated bars). With the torch backend the searches stay on the
    features' device; FAISS searches on the host as in the per-expert call.

    Args:
        features: float [N, D]; anchor_features: float [A, D]; anchor_labels: int64 [A].
        labels: int64 [E, N], row ``e`` expert ``e``'s labels; trusted: bool [E, N], its trusted space.
        The keyword settings as :func:`recalibrate_with_anchors`.

    Returns:
        E :class:`Recalibration`, entry ``e`` what :func:`recalibrate_with_anchors` returns for row ``e``.
    """
    feats, unit = _CACHE.get((features,), "features", lambda: _unit_features(features))
    n, d = features.shape
    device = features.device
    if labels.dim() != 2 or trusted.shape != labels.shape or labels.shape[1] != n:
        raise ValueError(f"labels and trusted must be [E, N] with N = {n} (the features' rows), got "
                         f"{tuple(labels.shape)} and {tuple(trusted.shape)}")
    e_count = labels.shape[0]
    check_labels(labels.reshape(-1), num_classes)  # all rows at once: one host read
    check_bool_mask(trusted.reshape(-1), "trusted", labels.numel())
    anchors = _CACHE.get((anchor_features, anchor_labels), ("anchors", d, num_classes),
                         lambda: _unit_anchors(anchor_features, anchor_labels, num_classes, d))
    check_vote_settings(top_k=top_k, num_neighbors=num_neighbors, vote_threshold=vote_threshold,
                        calibration_quantile=calibration_quantile, recall_confidence=recall_confidence,
                        sieve_confidence=sieve_confidence)
    labels, trusted = labels.to(device), trusted.to(device)
    reliability = torch.full((e_count, n), float("nan"), device=device)
    per_expert = [0] * e_count  # references per expert
    expert_refs: tuple[torch.Tensor, ...] = ()
    pair_e, pair_i = torch.nonzero(trusted, as_tuple=True)  # host read 1: the trusted pairs, expert-major
    if pair_i.numel():
        covariances = _CACHE.get((anchor_features, anchor_labels), ("covariances", num_classes),
                                 lambda: anchor_covariances(anchors, anchor_labels, num_classes))
        group = pair_e * num_classes + labels[pair_e, pair_i]  # (expert, class) of each trusted pair
        counts = torch.bincount(group, minlength=e_count * num_classes).tolist()  # host read 2
        rel = mahalanobis_reliability_batch(feats, pair_i, group, counts, covariances)
        reliability[pair_e, pair_i] = rel
        refs = reference_sets(pair_i, group, counts, rel, top_k)
        per_expert = [sum(min(c, top_k) for c in counts[e * num_classes:(e + 1) * num_classes])
                      for e in range(e_count)]
        expert_refs = refs.split(per_expert)
    voting = [e for e in range(e_count) if per_expert[e]]
    shares = {e: weighted_vote(feats, labels[e], reliability[e], expert_refs[e], num_classes, num_neighbors,
                               backend, unit=unit) for e in voting}
    bars: list[float | None] = [None] * e_count
    if vote_threshold == "calibrated" and voting:
        for e, bar in zip(voting, calibrated_thresholds(torch.stack([shares[e] for e in voting]), labels[voting],
                                                         trusted[voting], calibration_quantile)):
            bars[e] = bar
    out = []
    for e in range(e_count):
        if e not in shares:
            out.append(Recalibration(labels=labels[e].clone(), trusted=trusted[e].clone(),
                                     reliability=reliability[e]))
            continue
        new_labels, new_trusted = apply_vote(shares[e], labels[e], trusted[e], vote_threshold=vote_threshold,
                                             calibration_quantile=calibration_quantile,
                                             recall_confidence=recall_confidence,
                                             sieve_confidence=sieve_confidence, sieve=sieve, bar=bars[e])
        out.append(Recalibration(labels=new_labels, trusted=new_trusted, reliability=reliability[e]))
    return out


def mahalanobis_reliability_batch(features: torch.Tensor, rows: torch.Tensor, group: torch.Tensor, counts: list[int],
                                  covariances: list[ShrunkCovariance]) -> torch.Tensor:
    """:func:`mahalanobis_reliability` of several experts' trusted samples at once.

    Args:
        features: float [N, D], L2-normalised.
        rows: int64 [P], the sample of each (expert, sample) pair, expert-major and ascending within an expert.
        group: int64 [P], each pair's ``expert * C + label``.
        counts: the pairs per group (``bincount(group, minlength=E * C)``, read on the host once).
        covariances: the C classes' :func:`anchor_covariances`.

    Returns:
        float32 [P]: each pair's reliability, min-max normalised within its group; equal to
        :func:`mahalanobis_reliability` of each expert's trusted rows (each group's distances are computed
        on exactly the rows that call takes, in the same order).
    """
    num_classes = len(covariances)
    dist = torch.empty(rows.numel(), dtype=torch.float64, device=features.device)
    for g, pos in enumerate(torch.argsort(group, stable=True).split(counts)):  # each group's pairs, ascending
        if counts[g]:
            dist[pos] = covariances[g % num_classes].squared_distance(features[rows[pos]]).sqrt()
    inf = torch.full((len(counts),), float("inf"), dtype=torch.float64, device=features.device)
    lo = inf.scatter_reduce(0, group, dist, "amin")[group]
    span = (-inf).scatter_reduce(0, group, dist, "amax")[group] - lo
    return torch.where(span > 0, 1.0 - (dist - lo) / span, 1.0).float()


def reference_sets(rows: torch.Tensor, group: torch.Tensor, counts: list[int], reliability: torch.Tensor,
                   top_k: int) -> torch.Tensor:
    """:func:`reference_set` of several experts at once (no host read).

    Args:
        rows, group, counts: as :func:`mahalanobis_reliability_batch`; reliability: float [P], per pair.

    Returns:
        int64 [R] sample indices, expert-major, each expert's part equal to its :func:`reference_set`
        (``sum(min(counts[e * C + c], top_k) for c)`` entries).
    """
    order = torch.argsort(reliability, descending=True, stable=True)
    order = order[torch.argsort(group[order], stable=True)]  # group-major, each group by reliability
    keep, start = [], 0
    for c in counts:
        keep.append(torch.arange(start, start + min(c, top_k)))
        start += c
    return rows[order[torch.cat(keep).to(rows.device)]]


def reference_set(trusted_idx: torch.Tensor, labels: torch.Tensor, reliability: torch.Tensor, num_classes: int,
                  top_k: int) -> torch.Tensor:
    """The ``top_k`` most reliable trusted samples of each class (ties: lower index first).

    Args:
        trusted_idx: int64 [T], ascending indices of the trusted samples.
        labels: int64 [N]; reliability: float [N] (read at ``trusted_idx``).

    Returns:
        int64 [R] sample indices, class-major, each class's in descending reliability.
    """
    y = labels[trusted_idx]
    order = torch.argsort(reliability[trusted_idx], descending=True, stable=True)
    order = order[torch.argsort(y[order], stable=True)]  # class-major, each class by reliability
    counts = torch.bincount(y, minlength=num_classes)
    rank = torch.arange(order.numel(), device=order.device) - (torch.cumsum(counts, 0) - counts)[y[order]]
    return trusted_idx[order[rank < top_k]]


def apply_vote(shares: torch.Tensor, labels: torch.Tensor, trusted: torch.Tensor, *, vote_threshold: Threshold,
               calibration_quantile: float, recall_confidence: float, sieve_confidence: float,
               sieve: bool, bar: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 6 of the module docstring: recall untrusted samples and sieve trusted ones by their vote.

    Args:
        shares: float [N, C], :func:`weighted_vote`'s output.
        labels: int64 [N]; trusted: bool [N].
        bar: the calibrated bar when the caller has it (:func:`calibrated_thresholds`); None computes it
            (``"calibrated"`` only).

    Returns:
        ``(labels, trusted)``: new int64 [N] and bool [N] tensors (the inputs are not modified).
    """
    share, best_class = shares.max(1)
    if vote_threshold == "calibrated":
        if bar is None:
            bar = calibrated_threshold(shares, labels, trusted, calibration_quantile)
        recall_bar, sieve_bar = max(bar, recall_confidence), max(bar, sieve_confidence)
    else:
        recall_bar, sieve_bar = recall_confidence, sieve_confidence
    recall = ~trusted & (share >= recall_bar) & (share > 0)
    new_labels = torch.where(recall, best_class, labels)  # no host read (a masked assignment would make one)
    new_trusted = trusted | recall
    if sieve:
        sieved = trusted & (best_class != labels) & (share >= sieve_bar)
        new_trusted &= ~sieved
    return new_labels, new_trusted


def _unit_features(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Check the samples' features [N, D] and L2-normalise them: ``feats`` float32 [N, D] (Mahalanobis
    and the vote's rows) and ``normalize(feats)`` (what the search compares; normalising twice keeps the
    search's inputs as :func:`tad_plugin.search.cosine_topk` makes them)."""
    check_features(features, "features")
    feats = torch.nn.functional.normalize(features.detach().float(), dim=1)
    return feats, torch.nn.functional.normalize(feats, dim=1)


def _unit_anchors(anchor_features: torch.Tensor, anchor_labels: torch.Tensor, num_classes: int,
                  dim: int) -> torch.Tensor:
    """Check the anchors (float [A, dim], labels int64 [A]) and L2-normalise them (float32 [A, dim])."""
    check_features(anchor_features, "anchor_features", dim=dim)
    check_labels(anchor_labels, num_classes, name="anchor_labels", n=anchor_features.shape[0])
    return torch.nn.functional.normalize(anchor_features.detach().float(), dim=1)


class _TensorCache:
    """Results of pure functions of some tensors, kept while those tensors live unmodified.

    The dual loop calls ``recalibrate`` for every expert and epoch with the same feature and anchor
    tensors; their checks, normalisation and covariances are computed once. An entry is valid only for
    the very tensor objects it was made from (weak references, so caching keeps nothing alive) at their
    current version counters (an in-place change bumps them), so a stale result is never returned.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[Any, ...], tuple[list[weakref.ref[torch.Tensor]], list[int], Any]] = {}

    def get(self, tensors: tuple[torch.Tensor, ...], name: object, compute: Callable[[], Any]) -> Any:
        """``compute()``, or its cached value for the same ``tensors`` (unmodified) and ``name``."""
        key = (name, *(id(t) for t in tensors))
        hit = self._entries.get(key)
        if hit is not None and all(r() is t for r, t in zip(hit[0], tensors)) \
                and hit[1] == [t._version for t in tensors]:
            return hit[2]
        value = compute()  # raises before anything is stored
        def forget(_: object) -> None:  # a tensor died: its entry can never hit again
            self._entries.pop(key, None)

        refs = [weakref.ref(t, forget) for t in tensors]
        self._entries[key] = (refs, [t._version for t in tensors], value)
        return value


_CACHE = _TensorCache()


def check_vote_settings(*, top_k: int, num_neighbors: int, vote_threshold: str, calibration_quantile: float,
                        recall_confidence: float, sieve_confidence: float) -> None:
    """Raise ``ValueError`` naming the first inner-loop vote setting out of its range."""
    if top_k < 1 or num_neighbors < 1:
        raise ValueError(f"top_k and num_neighbors must be >= 1, got {top_k} and {num_neighbors}")
    if vote_threshold not in ("calibrated", "fixed"):
        raise ValueError(f"vote_threshold must be 'calibrated' or 'fixed', got {vote_threshold!r}")
    if not 0.0 <= calibration_quantile <= 1.0:
        raise ValueError(f"calibration_quantile must lie in [0, 1], got {calibration_quantile}")
    for name, value in (("recall_confidence", recall_confidence), ("sieve_confidence", sieve_confidence)):
        if not 0.5 < value <= 1.0:
            raise ValueError(f"{name} must lie in (0.5, 1], got {value}")

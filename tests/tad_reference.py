"""A frozen copy of tad_plugin/division.py and tad_plugin/recalibration.py before the speed-up (commit
7219f29): the reference the optimised code is tested against (tests/test_speedup_equivalence.py)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from tad_plugin.checks import check_bool_mask, check_features, check_float_vector, check_labels
from tad_plugin.division import DegenerateLossWarning
from tad_plugin.results import Recalibration, TrustSplit
from tad_plugin.search import Backend, cosine_topk


def divide_by_loss(losses: torch.Tensor, labels: torch.Tensor, num_classes: int, *, random_state: int = 0,
                   max_iter: int = 100, tol: float = 1e-3, reg_covar: float = 5e-4) -> TrustSplit:
    """Divide samples into trusted and untrusted spaces from their losses (Eqs. 4-5).

    1. Min-max normalise the losses to [0, 1].
    2. Fit a 2-component ``sklearn.mixture.GaussianMixture`` (fixed ``random_state``) to them.
    3. ``w_i`` = posterior of the component with the lower mean (the low-loss, trusted mode).
    4. ``tau_c`` = mean of ``w_i`` over the samples whose given label is ``c`` (Eq. 5).
    5. trusted = ``w_i >= tau_{y_i}``.

    Degenerate inputs: if all losses are equal (nothing to divide on), every sample gets ``w_i = 1``
    and is trusted, with a :class:`DegenerateLossWarning`. A class with one sample has
    ``tau_c = w_i`` and so that sample is trusted. A class with no samples gets ``tau_c = NaN``.

    Args:
        losses: float tensor [N], finite (NaN/inf raise ``ValueError``).
        labels: int64 tensor [N] in [0, num_classes).
        num_classes: C.
        random_state, max_iter, tol, reg_covar: passed to ``GaussianMixture``; ``reg_covar = 5e-4``
            follows DivideMix and keeps a collapsed component from producing a singular variance.

    Returns:
        A :class:`TrustSplit` on the device of ``losses`` (confidence float32).
    """
    check_float_vector(losses, "losses")
    n = losses.shape[0]
    if n == 0:
        raise ValueError("losses is empty: there is nothing to divide")
    check_labels(labels, num_classes, n=n)
    device = losses.device
    x = losses.detach().double().cpu().numpy()
    lo, hi = x.min(), x.max()
    if hi - lo <= 1e-12 * max(1.0, abs(hi)) or n < 2:
        warnings.warn(f"all {n} losses are equal ({lo:.6g}): no division is possible, keeping every sample "
                      f"trusted", DegenerateLossWarning, stacklevel=2)
        w = np.ones(n)
    else:
        w = low_loss_posterior((x - lo) / (hi - lo), random_state=random_state, max_iter=max_iter, tol=tol,
                               reg_covar=reg_covar)
    confidence = torch.as_tensor(w, dtype=torch.float32)
    thresholds, trusted = class_thresholds(confidence, labels.detach().cpu(), num_classes)
    return TrustSplit(trusted=trusted.to(device), confidence=confidence.to(device),
                      thresholds=thresholds.to(device))


def low_loss_posterior(x: np.ndarray, *, random_state: int, max_iter: int, tol: float,
                       reg_covar: float) -> np.ndarray:
    """Posterior of the low-mean component of a 2-component GMM fitted to ``x`` (float64 [N] in [0, 1])."""
    from sklearn.mixture import GaussianMixture

    gmm = GaussianMixture(n_components=2, max_iter=max_iter, tol=tol, reg_covar=reg_covar,
                          random_state=random_state)
    gmm.fit(x[:, None])
    return gmm.predict_proba(x[:, None])[:, int(np.argmin(gmm.means_.ravel()))]


def class_thresholds(confidence: torch.Tensor, labels: torch.Tensor,
                     num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 5's class-wise thresholds and the trusted mask.

    Args:
        confidence: float32 [N], w_i.
        labels: int64 [N] on the device of ``confidence``.

    Returns:
        ``(thresholds, trusted)``: float32 [C] (NaN for empty classes) and bool [N] (``w_i >= tau_{y_i}``).
    """
    counts = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    sums = torch.zeros(num_classes, dtype=torch.float64, device=confidence.device).index_add_(
        0, labels, confidence.double())
    tau = sums / counts  # NaN for empty classes (0 / 0)
    # A tiny tolerance keeps a class whose samples share one w whole despite rounding in the mean.
    trusted = confidence.double() >= tau[labels] - 1e-9
    return tau.float(), trusted


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

    def squared_distance(self, x: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance of the rows of ``x`` [M, D] (float64 [M], on x's device)."""
        v = x.double() - self.mean.to(x.device)
        if self.a <= 0:  # all anchors identical: no spread to scale by, fall back to Euclidean
            return (v * v).sum(1)
        xc = self.centred.to(x.device)
        proj = v @ xc.T  # [M, n]
        # Woodbury: Sigma^-1 = (I - b Xc^T (a I_n + b Xc Xc^T)^-1 Xc) / a
        k = self.a * torch.eye(xc.shape[0], dtype=torch.float64, device=x.device) + self.b * (xc @ xc.T)
        correction = (proj * torch.linalg.solve(k, proj.T).T).sum(1)
        return (((v * v).sum(1) - self.b * correction) / self.a).clamp_min(0)


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
    device = features.device
    reliability = torch.ones(features.shape[0], dtype=torch.float32, device=device)
    for c in range(num_classes):
        rows = torch.nonzero(labels == c).flatten()
        if rows.numel() == 0:
            continue
        dist = covariances[c].squared_distance(features[rows]).sqrt()
        span = dist.max() - dist.min()
        if float(span) > 0:
            reliability[rows] = (1.0 - (dist - dist.min()) / span).float()
    return reliability


def weighted_vote(features: torch.Tensor, labels: torch.Tensor, reliability: torch.Tensor, refs: torch.Tensor,
                  num_classes: int, num_neighbors: int, backend: Backend = "auto") -> torch.Tensor:
    """Eq. 8's vote of every sample by its ``num_neighbors`` most similar references, as class shares.

    Args:
        features: float [N, D], L2-normalised.
        labels: int64 [N], the references' labels are read from it.
        reliability: float [N], the references' weights (other rows are not read).
        refs: int64 [R], indices of the reference samples.

    Returns:
        float [N, C]: each row the classes' shares of the sample's vote (weights ``r * max(sim, 0)``),
        summing to 1, or all 0 where no reference carries weight. A reference never votes for itself.
    """
    n = features.shape[0]
    sims, nbr = cosine_topk(features, features[refs], num_neighbors + 1, backend=backend)
    nbr_global = refs[nbr]
    valid = nbr_global != torch.arange(n, device=features.device)[:, None]
    valid &= torch.cumsum(valid.int(), dim=1) <= num_neighbors
    weights = torch.where(valid, reliability[nbr_global] * sims.clamp_min(0), torch.zeros_like(sims))
    votes = torch.zeros(n, num_classes, device=features.device)
    votes.scatter_add_(1, labels[nbr_global], weights)
    return votes / votes.sum(1, keepdim=True).clamp_min(1e-12)


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
    check_features(features, "features")
    n, d = features.shape
    check_labels(labels, num_classes, n=n)
    check_bool_mask(trusted, "trusted", n)
    check_features(anchor_features, "anchor_features", dim=d)
    check_labels(anchor_labels, num_classes, name="anchor_labels", n=anchor_features.shape[0])
    check_vote_settings(top_k=top_k, num_neighbors=num_neighbors, vote_threshold=vote_threshold,
                        calibration_quantile=calibration_quantile, recall_confidence=recall_confidence,
                        sieve_confidence=sieve_confidence)
    device = features.device
    feats = torch.nn.functional.normalize(features.detach().float(), dim=1)
    anchors = torch.nn.functional.normalize(anchor_features.detach().float(), dim=1)
    labels = labels.to(device)
    trusted = trusted.to(device)

    reliability = torch.full((n,), float("nan"), device=device)
    trusted_idx = torch.nonzero(trusted).flatten()
    if trusted_idx.numel() == 0:
        return Recalibration(labels=labels.clone(), trusted=trusted.clone(), reliability=reliability)

    covariances = anchor_covariances(anchors, anchor_labels, num_classes)
    reliability[trusted_idx] = mahalanobis_reliability(feats[trusted_idx], labels[trusted_idx], covariances,
                                                       num_classes)

    refs = reference_set(trusted_idx, labels, reliability, num_classes, top_k)
    shares = weighted_vote(feats, labels, reliability, refs, num_classes, num_neighbors, backend)
    new_labels, new_trusted = apply_vote(shares, labels, trusted, vote_threshold=vote_threshold,
                                         calibration_quantile=calibration_quantile,
                                         recall_confidence=recall_confidence, sieve_confidence=sieve_confidence,
                                         sieve=sieve)
    return Recalibration(labels=new_labels, trusted=new_trusted, reliability=reliability)


def reference_set(trusted_idx: torch.Tensor, labels: torch.Tensor, reliability: torch.Tensor, num_classes: int,
                  top_k: int) -> torch.Tensor:
    """The ``top_k`` most reliable trusted samples of each class (ties: lower index first).

    Args:
        trusted_idx: int64 [T], ascending indices of the trusted samples.
        labels: int64 [N]; reliability: float [N] (read at ``trusted_idx``).

    Returns:
        int64 [R] sample indices, class-major, each class's in descending reliability.
    """
    ref_parts = []
    for c in range(num_classes):
        members = trusted_idx[labels[trusted_idx] == c]
        if members.numel():
            order = torch.argsort(reliability[members], descending=True, stable=True)
            ref_parts.append(members[order[:top_k]])
    return torch.cat(ref_parts)


def apply_vote(shares: torch.Tensor, labels: torch.Tensor, trusted: torch.Tensor, *, vote_threshold: Threshold,
               calibration_quantile: float, recall_confidence: float, sieve_confidence: float,
               sieve: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 6 of the module docstring: recall untrusted samples and sieve trusted ones by their vote.

    Args:
        shares: float [N, C], :func:`weighted_vote`'s output.
        labels: int64 [N]; trusted: bool [N].

    Returns:
        ``(labels, trusted)``: new int64 [N] and bool [N] tensors (the inputs are not modified).
    """
    share, best_class = shares.max(1)
    if vote_threshold == "calibrated":
        bar = calibrated_threshold(shares, labels, trusted, calibration_quantile)
        recall_bar, sieve_bar = max(bar, recall_confidence), max(bar, sieve_confidence)
    else:
        recall_bar, sieve_bar = recall_confidence, sieve_confidence
    new_labels, new_trusted = labels.clone(), trusted.clone()
    recall = ~trusted & (share >= recall_bar) & (share > 0)
    new_labels[recall] = best_class[recall]
    new_trusted |= recall
    if sieve:
        sieved = trusted & (best_class != labels) & (share >= sieve_bar)
        new_trusted &= ~sieved
    return new_labels, new_trusted


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

"""The outer loop's division (Sec. 4.1): a two-component GMM on per-sample losses, class-wise thresholds."""

from __future__ import annotations

import math
import warnings

import torch

from .checks import check_float_vector, check_labels
from .results import TrustSplit

__all__ = ["divide_by_loss", "low_loss_posterior", "class_thresholds", "DegenerateLossWarning"]


class DegenerateLossWarning(UserWarning):
    """The losses carry no information to divide on (e.g. all equal); every sample was kept trusted."""


def divide_by_loss(losses: torch.Tensor, labels: torch.Tensor, num_classes: int, *, random_state: int = 0,
                   max_iter: int = 100, tol: float = 1e-3, reg_covar: float = 5e-4) -> TrustSplit:
    """Divide samples into trusted and untrusted spaces from their losses (Eqs. 4-5).

    1. Min-max normalise the losses to [0, 1].
    2. Fit a 2-component Gaussian mixture to them: scikit-learn's ``GaussianMixture`` (k-means
       initialisation with ``random_state``, full covariances, EM until the mean log-likelihood changes
       by less than ``tol``), its EM computed in torch on the losses' device (:func:`low_loss_posterior`).
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
        random_state, max_iter, tol, reg_covar: scikit-learn's ``GaussianMixture`` settings;
            ``reg_covar = 5e-4`` follows DivideMix and keeps a collapsed component from producing a
            singular variance.

    Returns:
        A :class:`TrustSplit` on the device of ``losses`` (confidence float32).
    """
    check_float_vector(losses, "losses")
    n = losses.shape[0]
    if n == 0:
        raise ValueError("losses is empty: there is nothing to divide")
    check_labels(labels, num_classes, n=n)
    x = losses.detach().double()
    lo, hi = torch.stack(torch.aminmax(x)).tolist()  # one host read
    if hi - lo <= 1e-12 * max(1.0, abs(hi)) or n < 2:
        warnings.warn(f"all {n} losses are equal ({lo:.6g}): no division is possible, keeping every sample "
                      f"trusted", DegenerateLossWarning, stacklevel=2)
        w = torch.ones_like(x)
    else:
        w = low_loss_posterior((x - lo) / (hi - lo), random_state=random_state, max_iter=max_iter, tol=tol,
                               reg_covar=reg_covar)
    confidence = w.float()
    thresholds, trusted = class_thresholds(confidence, labels.detach().to(x.device), num_classes)
    return TrustSplit(trusted=trusted, confidence=confidence, thresholds=thresholds)


def low_loss_posterior(x: torch.Tensor, *, random_state: int, max_iter: int, tol: float,
                       reg_covar: float) -> torch.Tensor:
    """Posterior of the low-mean component of a 2-component GMM fitted to ``x``, as scikit-learn's
    ``GaussianMixture(n_components=2, max_iter, tol, reg_covar, random_state)`` fits it and
    ``predict_proba`` reports it (same initialisation, same EM steps and stopping rule; the sums run
    in torch, so values agree to rounding, ~1e-12).

    Args:
        x: float64 [N], N >= 2, not all equal (the min-max normalised losses), on any device.
        random_state: seeds scikit-learn's ``KMeans`` initialisation (run on the CPU).
        max_iter, tol, reg_covar: EM iterations (>= 0), stopping tolerance on the mean log-likelihood
            (>= 0), and the variance floor added to each component (>= 0).

    Returns:
        float64 [N] on the device of ``x``.

    Raises:
        ValueError: a setting is out of range, or a component's variance is not positive (only
            possible with ``reg_covar = 0``).
    """
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    if max_iter < 0 or tol < 0 or reg_covar < 0:
        raise ValueError(f"max_iter, tol and reg_covar must be >= 0, got {max_iter}, {tol}, {reg_covar}")
    init = KMeans(n_clusters=2, n_init=1, random_state=random_state).fit(x.cpu().numpy()[:, None]).labels_
    resp = torch.nn.functional.one_hot(torch.as_tensor(init, dtype=torch.int64, device=x.device), 2).double()
    weights, means, precisions = _gmm_m_step(x, resp, reg_covar)
    weights = weights / x.shape[0]  # scikit-learn's initialisation divides by N, its M-step by the sum
    lower_bound, converged = -math.inf, False
    for _ in range(max_iter):
        previous = lower_bound
        log_prob_norm, log_resp = _gmm_e_step(x, weights, means, precisions)
        weights, means, precisions = _gmm_m_step(x, log_resp.exp(), reg_covar)
        weights = weights / weights.sum()
        lower_bound = float(log_prob_norm.mean())
        if abs(lower_bound - previous) < tol:
            converged = True
            break
    if max_iter > 0 and not converged:
        warnings.warn("Best performing initialization did not converge. Try different init parameters, or "
                      "increase max_iter, tol, or check for degenerate data.", ConvergenceWarning, stacklevel=3)
    _, log_resp = _gmm_e_step(x, weights, means, precisions)
    return log_resp[:, int(torch.argmin(means))].exp()


def _gmm_m_step(x: torch.Tensor, resp: torch.Tensor,
                reg_covar: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's ``_estimate_gaussian_parameters`` for 1-D data and full covariances.

    Args:
        x: float64 [N]; resp: float64 [N, 2], the responsibilities.

    Returns:
        ``(nk, means, precisions_cholesky)``, each float64 [2]: the components' soft counts (unnormalised
        weights), means and ``1 / sqrt(variance + reg_covar)``.
    """
    nk = resp.sum(0) + 10 * torch.finfo(torch.float64).eps
    means = (resp.T @ x) / nk
    diff = x[:, None] - means  # [N, 2]
    variances = (resp * diff * diff).sum(0) / nk + reg_covar
    # with reg_covar > 0 a variance is >= reg_covar, so only reg_covar = 0 needs the (host-syncing) check
    if reg_covar <= 0 and not bool((variances > 0).all()):
        raise ValueError("Fitting the mixture model failed because some components have ill-defined empirical "
                         "covariance (for instance caused by singleton or collapsed samples). Try to decrease "
                         "the number of components, increase reg_covar, or scale the input data.")
    return nk, means, 1.0 / variances.sqrt()


def _gmm_e_step(x: torch.Tensor, weights: torch.Tensor, means: torch.Tensor,
                precisions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's E-step for 1-D data: per-sample log-likelihood and log-responsibilities.

    Args:
        x: float64 [N]; weights, means, precisions: float64 [2] (``precisions`` = ``1 / std``).

    Returns:
        ``(log_prob_norm, log_resp)``: float64 [N] and [N, 2].
    """
    y = x[:, None] * precisions - means * precisions
    log_prob = -0.5 * (math.log(2 * math.pi) + y * y) + precisions.log() + weights.log()
    log_prob_norm = torch.logsumexp(log_prob, dim=1)
    return log_prob_norm, log_prob - log_prob_norm[:, None]


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

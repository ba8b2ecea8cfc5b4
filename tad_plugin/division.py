"""The outer loop's division (Sec. 4.1): a two-component GMM on per-sample losses, class-wise thresholds.

Every function here takes one row of losses [N] or a batch of rows [E, N] (one per expert) and treats
the rows independently: a batch gives, row by row, what the rows give one at a time (up to float
rounding), fitted together on the losses' device with a host read every few iterations instead of one
per iteration and row.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import torch

from .checks import check_float_vector, check_labels, check_tensors, is_integer
from .results import TrustSplit

__all__ = ["divide_by_loss", "divide_by_loss_batch", "low_loss_posterior", "class_thresholds",
           "DegenerateLossWarning"]

#: iterations between the host reads that ask whether every row of a batched fit has converged
_CHECK_EVERY = 4


class DegenerateLossWarning(UserWarning):
    """The losses carry no information to divide on (e.g. all equal); every sample was kept trusted."""


def divide_by_loss(losses: torch.Tensor, labels: torch.Tensor, num_classes: int, *, random_state: int = 0,
                   max_iter: int = 100, tol: float = 1e-3, reg_covar: float = 5e-4) -> TrustSplit:
    """Divide samples into trusted and untrusted spaces from their losses (Eqs. 4-5).

    1. Min-max normalise the losses to [0, 1].
    2. Fit a 2-component Gaussian mixture to them: scikit-learn's ``GaussianMixture`` (k-means
       initialisation with ``random_state``, full covariances, EM until the mean log-likelihood changes
       by less than ``tol``), computed in torch on the losses' device (:func:`low_loss_posterior`).
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
    if losses.shape[0] == 0:
        raise ValueError("losses is empty: there is nothing to divide")
    check_labels(labels, num_classes, n=losses.shape[0])
    return _divide(losses.unsqueeze(0), labels.unsqueeze(0), num_classes, random_state=random_state,
                   max_iter=max_iter, tol=tol, reg_covar=reg_covar)[0]


def divide_by_loss_batch(losses: torch.Tensor, labels: torch.Tensor, num_classes: int, *, random_state: int = 0,
                         max_iter: int = 100, tol: float = 1e-3, reg_covar: float = 5e-4) -> list[TrustSplit]:
    """:func:`divide_by_loss` for E rows of losses at once (one row per expert), fitted together.

    Row ``e`` of the result is ``divide_by_loss(losses[e], labels[e], ...)`` up to float rounding (same
    initialisation, EM steps and stopping rule per row; the trusted masks agree unless a sample sits
    within rounding of its threshold). No host read per row or per EM iteration: one per few iterations
    and one at the end (for the warnings).

    Args:
        losses: float tensor [E, N], E >= 1, N >= 1, finite.
        labels: int64 tensor [E, N] (each row's labels) or [N] (shared by the rows), in [0, num_classes).
        num_classes, random_state, max_iter, tol, reg_covar: as :func:`divide_by_loss`.

    Returns:
        E :class:`TrustSplit` (row views of [E, N] / [E, C] tensors) on the device of ``losses``.
    """
    if not isinstance(losses, torch.Tensor) or losses.dim() != 2 or not losses.is_floating_point():
        got = f"{losses.dtype} {tuple(losses.shape)}" if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise ValueError(f"losses must be a float tensor [E, N] (one row per expert), got {got}")
    e, n = losses.shape
    if e == 0 or n == 0:
        raise ValueError(f"losses {tuple(losses.shape)} is empty: there is nothing to divide")
    if not bool(torch.isfinite(losses).all()):
        raise ValueError("losses contains NaN or inf; check the model or the loss computation")
    check_tensors("divide_by_loss_batch", labels=labels)
    if labels.dim() == 1:
        labels = labels.unsqueeze(0).expand(e, n)
    if labels.shape != (e, n):
        raise ValueError(f"labels must be [E, N] = {(e, n)} or [N], got {tuple(labels.shape)}")
    check_labels(labels.reshape(-1), num_classes)  # one host read for all rows
    return _divide(losses, labels, num_classes, random_state=random_state, max_iter=max_iter, tol=tol,
                   reg_covar=reg_covar)


def _divide(losses: torch.Tensor, labels: torch.Tensor, num_classes: int, *, random_state: int, max_iter: int,
            tol: float, reg_covar: float) -> list[TrustSplit]:
    """The division of checked losses [E, N] and labels [E, N]; one host read at the end."""
    _check_settings(max_iter, tol, reg_covar, random_state)
    x = losses.detach().double()
    lo, hi = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
    degenerate = (hi - lo <= 1e-12 * hi.abs().clamp_min(1.0)).squeeze(1)
    if x.shape[1] < 2:
        degenerate = torch.ones_like(degenerate)
    span = torch.where(degenerate[:, None], torch.ones_like(hi), hi - lo)
    w, converged = _fit_posterior((x - lo) / span, degenerate, random_state=random_state, max_iter=max_iter, tol=tol,
                                  reg_covar=reg_covar)
    confidence = torch.where(degenerate[:, None], torch.ones_like(w), w).float()
    thresholds, trusted = class_thresholds(confidence, labels.detach().to(x.device), num_classes)
    flags = torch.stack([degenerate.double(), converged.double(), lo.squeeze(1)], 1).tolist()  # the one host read
    for row, (is_degenerate, _, low) in enumerate(flags):
        if is_degenerate:
            which = "" if len(flags) == 1 else f" of row {row}"
            warnings.warn(f"all {x.shape[1]} losses{which} are equal ({low:.6g}): no division is possible, keeping "
                          f"every sample trusted", DegenerateLossWarning, stacklevel=3)
    _warn_not_converged(max_iter, [not (d or c) for d, c, _ in flags])
    return [TrustSplit(trusted=trusted[i], confidence=confidence[i], thresholds=thresholds[i])
            for i in range(x.shape[0])]


def low_loss_posterior(x: torch.Tensor, *, random_state: int, max_iter: int, tol: float,
                       reg_covar: float) -> torch.Tensor:
    """Posterior of the low-mean component of a 2-component GMM fitted to ``x``, as scikit-learn's
    ``GaussianMixture(n_components=2, max_iter, tol, reg_covar, random_state)`` fits it and
    ``predict_proba`` reports it: the same k-means initialisation (``KMeans(n_clusters=2, n_init=1,
    random_state)``: k-means++ seeding from NumPy's ``RandomState(random_state)``, Lloyd iterations on the
    mean-centred data until the labels repeat or the centres move less than ``1e-4`` times the variance),
    the same EM steps and stopping rule, all in torch on the device of ``x`` (values agree to rounding,
    ~1e-12; only a sample within rounding of the k-means midpoint could be assigned differently).

    Args:
        x: float64 [N] or [E, N] (rows fitted independently), N >= 2, each row not all equal (the min-max
            normalised losses), on any device.
        random_state: seeds the k-means++ draws (two centres; the draws depend on N only).
        max_iter, tol, reg_covar: EM iterations (>= 0), stopping tolerance on the mean log-likelihood
            (>= 0), and the variance floor added to each component (>= 0).

    Returns:
        float64 of the shape of ``x``, on its device.

    Raises:
        ValueError: a setting is out of range, ``x`` breaks the conditions above (fewer than 2 values, a
            constant row, NaN or inf), or a component's variance is not positive (only possible with
            ``reg_covar = 0``).
    """
    _check_settings(max_iter, tol, reg_covar, random_state)
    rows = x.unsqueeze(0) if x.dim() == 1 else x
    if rows.dim() != 2 or rows.shape[1] < 2:
        raise ValueError(f"low_loss_posterior needs x [N] or [E, N] with N >= 2, got {tuple(x.shape)}")
    if not bool(torch.isfinite(rows).all()) or bool((rows.amax(1) == rows.amin(1)).any()):
        raise ValueError("low_loss_posterior needs finite rows that are not all equal (two components cannot be "
                         "told apart otherwise); divide_by_loss handles those cases")
    w, converged = _fit_posterior(rows, torch.zeros(rows.shape[0], dtype=torch.bool, device=rows.device),
                                  random_state=random_state, max_iter=max_iter, tol=tol, reg_covar=reg_covar)
    _warn_not_converged(max_iter, (~converged).tolist())
    return w.view_as(x)


def _check_settings(max_iter: int, tol: float, reg_covar: float, random_state: int) -> None:
    if max_iter < 0 or tol < 0 or reg_covar < 0:
        raise ValueError(f"max_iter, tol and reg_covar must be >= 0, got {max_iter}, {tol}, {reg_covar}")
    seed = random_state
    if not is_integer(seed) or not 0 <= seed < 2**32:
        raise ValueError(f"random_state must be an integer in [0, 2**32) (NumPy's seed range), got {random_state!r}")


def _warn_not_converged(max_iter: int, not_converged: list[bool]) -> None:
    from sklearn.exceptions import ConvergenceWarning

    if max_iter > 0 and any(not_converged):
        warnings.warn("Best performing initialization did not converge. Try different init parameters, or "
                      "increase max_iter, tol, or check for degenerate data.", ConvergenceWarning, stacklevel=4)


def _fit_posterior(x: torch.Tensor, skip: torch.Tensor, *, random_state: int, max_iter: int, tol: float,
                   reg_covar: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The GMM fit of the rows of ``x`` (float64 [E, N]); rows where ``skip`` (bool [E]) is True are not
    fitted (their outputs are meaningless). Returns the low-mean posterior float64 [E, N] and whether each
    row's EM converged, bool [E] (no host read besides the every-few-iterations "all done?")."""
    resp = _kmeans_responsibilities(x, skip, random_state)
    weights, means, precisions = _gmm_m_step(x, resp, reg_covar)
    weights = weights / x.shape[1]  # scikit-learn's initialisation divides by N, its M-step by the sum
    lower_bound = torch.full((x.shape[0],), -math.inf, dtype=torch.float64, device=x.device)
    converged = torch.zeros_like(skip)
    done = skip.clone()
    for it in range(max_iter):
        log_prob_norm, log_resp = _gmm_e_step(x, weights, means, precisions)
        new_weights, new_means, new_precisions = _gmm_m_step(x, log_resp.exp(), reg_covar)
        new_weights = new_weights / new_weights.sum(1, keepdim=True)
        new_bound = log_prob_norm.mean(1)
        active = ~done
        keep = active[:, None]
        weights = torch.where(keep, new_weights, weights)
        means = torch.where(keep, new_means, means)
        precisions = torch.where(keep, new_precisions, precisions)
        now = active & ((new_bound - lower_bound).abs() < tol)
        lower_bound = torch.where(active, new_bound, lower_bound)
        converged |= now
        done |= now
        if it % _CHECK_EVERY == _CHECK_EVERY - 1 and bool(done.all()):
            break
    _, log_resp = _gmm_e_step(x, weights, means, precisions)
    low = means.argmin(1)  # [E]
    posterior = log_resp.gather(2, low[:, None, None].expand(-1, x.shape[1], 1)).squeeze(2).exp()
    return posterior, converged


@functools.lru_cache(maxsize=16)
def _kmeans_plusplus_draws(random_state: int, n: int) -> tuple[int, tuple[float, float]]:
    """What scikit-learn's ``_kmeans_plusplus`` (2 clusters, unit sample weights) draws from
    ``RandomState(random_state)``: the first centre's index and the two uniform numbers that pick the
    second centre's candidates. They depend on ``random_state`` and N only, not on the data."""
    rng = np.random.RandomState(random_state)
    first = int(rng.choice(n, p=np.ones(n) / n))
    u = rng.uniform(size=2)  # n_local_trials = 2 + int(log(2)) = 2
    return first, (float(u[0]), float(u[1]))


def _sq_distances(centres: torch.Tensor, xc: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
    """scikit-learn's ``_euclidean_distances(centres, X, Y_norm_squared, squared=True)`` for 1-D rows:
    centres [E, K], xc and its squares sq [E, N] -> [E, K, N], in its order of operations."""
    c = centres[:, :, None]
    return ((-2.0 * (c * xc[:, None, :])) + c * c + sq[:, None, :]).clamp_min(0)


def _assign(xc: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Lloyd's E-step as scikit-learn's dense chunk computes it (``||c||^2 - 2 x.c``, the first centre
    on ties): True where a sample of ``xc`` [E, N] belongs to centre 1 of ``centres`` [E, 2]."""
    c0, c1 = centres[:, :1], centres[:, 1:]
    return c1 * c1 + -2.0 * (xc * c1) < c0 * c0 + -2.0 * (xc * c0)


def _kmeans_responsibilities(x: torch.Tensor, skip: torch.Tensor, random_state: int) -> torch.Tensor:
    """One-hot responsibilities float64 [E, N, 2] of ``KMeans(n_clusters=2, n_init=1, random_state).fit``'s
    labels for each row of ``x`` [E, N] (scikit-learn >= 1.3's k-means++ seeding and Lloyd iterations,
    reproduced step by step and batched over the rows; rows in ``skip`` are not iterated)."""
    e, n = x.shape
    first, (u0, u1) = _kmeans_plusplus_draws(int(random_state), n)
    xc = x - x.mean(1, keepdim=True)  # scikit-learn centres the data before clustering
    sq = xc * xc
    closest = _sq_distances(xc[:, first:first + 1], xc, sq)[:, 0]  # [E, N]
    pot = closest.sum(1, keepdim=True)
    rand = torch.tensor([u0, u1], dtype=torch.float64, device=x.device) * pot  # [E, 2]
    candidates = torch.searchsorted(closest.cumsum(1), rand).clamp_max(n - 1)
    to_candidates = torch.minimum(closest[:, None, :], _sq_distances(xc.gather(1, candidates), xc, sq))
    best = candidates.gather(1, to_candidates.sum(2).argmin(1, keepdim=True))  # [E, 1]
    centres = torch.cat([xc[:, first:first + 1], xc.gather(1, best)], 1)  # [E, 2]

    tol = x.var(1, unbiased=False) * 1e-4  # KMeans(tol=1e-4) scaled by the data's variance
    done = skip.clone()
    previous: torch.Tensor | None = None
    for it in range(300):  # KMeans' max_iter
        labels = _assign(xc, centres)
        ones = labels.double()
        counts = torch.stack([n - ones.sum(1), ones.sum(1)], 1)
        sums = torch.stack([(xc * (1.0 - ones)).sum(1), (xc * ones).sum(1)], 1)
        new = torch.where(counts > 0, sums * (1.0 / counts.clamp_min(1.0)), centres)
        shift = (new - centres).square().sqrt()
        settled = (shift * shift).sum(1) <= tol
        if previous is not None:
            settled |= (labels == previous).all(1)  # strict convergence: the labels repeat
        centres = torch.where(done[:, None], centres, new)
        done |= settled
        previous = labels
        if it % _CHECK_EVERY == _CHECK_EVERY - 1 and bool(done.all()):
            break
    final = _assign(xc, centres).double()
    return torch.stack([1.0 - final, final], 2)


def _gmm_m_step(x: torch.Tensor, resp: torch.Tensor,
                reg_covar: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's ``_estimate_gaussian_parameters`` for 1-D data and full covariances, per row.

    Args:
        x: float64 [E, N]; resp: float64 [E, N, 2], the responsibilities.

    Returns:
        ``(nk, means, precisions_cholesky)``, each float64 [E, 2]: the components' soft counts (unnormalised
        weights), means and ``1 / sqrt(variance + reg_covar)``.
    """
    nk = resp.sum(1) + 10 * torch.finfo(torch.float64).eps
    means = (resp * x[:, :, None]).sum(1) / nk
    diff = x[:, :, None] - means[:, None, :]  # [E, N, 2]
    variances = (resp * diff * diff).sum(1) / nk + reg_covar
    # with reg_covar > 0 a variance is >= reg_covar, so only reg_covar = 0 needs the (host-syncing) check
    if reg_covar <= 0 and not bool((variances > 0).all()):
        raise ValueError("Fitting the mixture model failed because some components have ill-defined empirical "
                         "covariance (for instance caused by singleton or collapsed samples). Try to decrease "
                         "the number of components, increase reg_covar, or scale the input data.")
    return nk, means, 1.0 / variances.sqrt()


def _gmm_e_step(x: torch.Tensor, weights: torch.Tensor, means: torch.Tensor,
                precisions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's E-step for 1-D data, per row: per-sample log-likelihood and log-responsibilities.

    Args:
        x: float64 [E, N]; weights, means, precisions: float64 [E, 2] (``precisions`` = ``1 / std``).

    Returns:
        ``(log_prob_norm, log_resp)``: float64 [E, N] and [E, N, 2].
    """
    p = precisions[:, None, :]
    y = x[:, :, None] * p - means[:, None, :] * p
    log_prob = -0.5 * (math.log(2 * math.pi) + y * y) + p.log() + weights[:, None, :].log()
    log_prob_norm = torch.logsumexp(log_prob, dim=2)
    return log_prob_norm, log_prob - log_prob_norm[:, :, None]


def class_thresholds(confidence: torch.Tensor, labels: torch.Tensor,
                     num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 5's class-wise thresholds and the trusted mask, for one row [N] or each row of [E, N].

    Args:
        confidence: float32 [N] or [E, N], w_i.
        labels: int64 of the same shape, on the device of ``confidence``.

    Returns:
        ``(thresholds, trusted)``: float32 [C] or [E, C] (NaN for empty classes) and bool of ``confidence``'s
        shape (``w_i >= tau_{y_i}``).
    """
    rows_c = confidence.reshape(-1, confidence.shape[-1])
    rows_y = labels.reshape(-1, labels.shape[-1])
    e = rows_c.shape[0]
    flat = (rows_y + num_classes * torch.arange(e, device=labels.device)[:, None]).flatten()
    counts = torch.bincount(flat, minlength=e * num_classes).to(torch.float64)
    sums = torch.zeros(e * num_classes, dtype=torch.float64, device=confidence.device).index_add_(
        0, flat, rows_c.double().flatten())
    tau = (sums / counts).view(e, num_classes)  # NaN for empty classes (0 / 0)
    # A tiny tolerance keeps a class whose samples share one w whole despite rounding in the mean.
    trusted = rows_c.double() >= tau.gather(1, rows_y) - 1e-9
    shape = confidence.shape[:-1] + (num_classes,)
    return tau.float().view(shape), trusted.view(confidence.shape)

"""The outer loop's division (Sec. 4.1): a two-component GMM on per-sample losses, class-wise thresholds."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .checks import check_float_vector, check_labels
from .results import TrustSplit

__all__ = ["divide_by_loss", "DegenerateLossWarning"]


class DegenerateLossWarning(UserWarning):
    """The losses carry no information to divide on (e.g. all equal); every sample was kept trusted."""


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

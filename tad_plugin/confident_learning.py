"""Confident learning (cleanlab) as a ``filter_dataset`` plugin: another method's division through TAD's hook.

:func:`confident_split` turns out-of-sample predicted probabilities into a
:class:`~tad_plugin.results.TrustSplit` with ``cleanlab.filter.find_label_issues`` (trusted = not flagged).
:class:`ConfidentLearning` is the plugin: its ``filter_dataset`` ignores the per-sample losses the hook
receives and divides by confident learning on out-of-sample probabilities that it computes itself, by
K-fold cross-validation of a logistic regression on fixed sample features (self-supervised embeddings,
or pixels) given at construction.

Why the plugin computes its own probabilities instead of the hook passing the expert's: confident learning
needs *out-of-sample* probabilities (an expert's outputs on its own training samples are in-sample), and
the hook's contract (losses, labels, num_classes) stays as it is, so TAD's division, the expert trainer and
``tad wrap`` are untouched. The probabilities depend only on the features and the current labels, so they
are computed once per label vector (cached) and reused by every expert and epoch that divides with it.

Loading it like any plugin: a package of yours declares it in the ``tad_plugin`` entry-point group, e.g. a
module ``my_cleanlab.py`` with ``plugin = ConfidentLearning(features=torch.load("features.pt"))`` and the
entry point ``[tad_plugin] cleanlab = my_cleanlab:plugin``. tad_plugin itself does not declare it (an entry
point is loaded in every process, and this plugin needs the features of one dataset). Needs the
``cleanlab`` extra: ``pip install 'tad_plugin[cleanlab]'``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .checks import check_features, check_labels
from .hookspecs import hookimpl
from .results import TrustSplit

__all__ = ["ConfidentLearning", "confident_split", "out_of_sample_probabilities", "require_cleanlab"]


def require_cleanlab() -> Any:
    """The ``cleanlab.filter`` module; ImportError naming the extra when cleanlab is not installed."""
    try:
        import cleanlab.filter
    except ImportError as exc:
        raise ImportError("confident learning needs cleanlab: pip install 'tad_plugin[cleanlab]'") from exc
    return cleanlab.filter


def confident_split(labels: torch.Tensor, pred_probs: torch.Tensor, num_classes: int,
                    filter_by: str = "prune_by_noise_rate") -> TrustSplit:
    """Confident learning's division of a labelled set.

    Args:
        labels: int64 [N], the given labels, in [0, num_classes).
        pred_probs: float [N, num_classes], out-of-sample predicted probabilities (rows sum to 1).
        num_classes: C.
        filter_by: ``find_label_issues``' rule; the default is cleanlab's own.

    Returns:
        A :class:`TrustSplit` on ``labels``' device: ``trusted`` = not flagged by ``find_label_issues``;
        ``confidence`` = the self-confidence ``pred_probs[i, labels[i]]``; ``thresholds`` = cleanlab's
        per-class confident thresholds (the mean self-confidence of the samples labelled c; NaN for a class
        without samples).
    """
    check_labels(labels, num_classes)
    if pred_probs.shape != (labels.shape[0], num_classes) or not pred_probs.is_floating_point():
        raise ValueError(f"pred_probs must be float [N={labels.shape[0]}, C={num_classes}], got "
                         f"{pred_probs.dtype} {tuple(pred_probs.shape)}")
    if not bool(torch.isfinite(pred_probs).all()) or bool((pred_probs < 0).any()):
        raise ValueError("pred_probs holds NaN, inf or negative values: give probabilities (a softmax of finite "
                         "logits); a diverged fold model gives NaN")
    cl_filter = require_cleanlab()
    y = labels.cpu().numpy()
    p = pred_probs.detach().double().cpu().numpy()
    issues = cl_filter.find_label_issues(y, p, filter_by=filter_by)
    self_conf = p[np.arange(len(y)), y]
    counts = np.bincount(y, minlength=num_classes)
    sums = np.bincount(y, weights=self_conf, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        thresholds = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    dev = labels.device
    return TrustSplit(trusted=torch.from_numpy(~issues).to(dev), confidence=torch.from_numpy(self_conf).float().to(dev),
                      thresholds=torch.from_numpy(thresholds).float().to(dev))


def out_of_sample_probabilities(features: torch.Tensor, labels: torch.Tensor, num_classes: int, folds: int = 5,
                                seed: int = 0) -> torch.Tensor:
    """K-fold out-of-sample class probabilities of a standardised multinomial logistic regression on ``features``.

    Args:
        features: float [N, D]; labels: int64 [N] in [0, num_classes).
        folds: K (stratified, shuffled with ``seed``); 5 is cleanlab's own default.

    Returns:
        float32 [N, num_classes] on the CPU; each row from the model that did not see that sample. A class
        absent from the labels gets probability 0.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    check_features(features, "features")
    check_labels(labels, num_classes, n=features.shape[0])
    y = labels.cpu().numpy()
    smallest = int(np.bincount(y)[np.unique(y)].min())
    if folds < 2 or smallest < folds:
        raise ValueError(f"{folds}-fold cross-validation needs folds >= 2 and at least {folds} samples in every "
                         f"labelled class (the smallest has {smallest}); lower folds")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    probs = cross_val_predict(model, features.detach().double().cpu().numpy(), y, cv=cv, method="predict_proba")
    full = np.zeros((len(y), num_classes))
    full[:, np.unique(y)] = probs
    return torch.from_numpy(full).float()


@dataclass(eq=False)
class ConfidentLearning:
    """The ``filter_dataset`` plugin: confident learning on K-fold out-of-sample probabilities of ``features``.

    Attributes:
        features: float [N, D], fixed features of the N training samples (in the training set's order).
        folds: K of the cross-validation.
        seed: the folds' shuffling seed.
        filter_by: ``find_label_issues``' rule.
    """

    features: torch.Tensor
    folds: int = 5
    seed: int = 0
    filter_by: str = "prune_by_noise_rate"
    _cache: dict[bytes, torch.Tensor] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        check_features(self.features, "features")
        require_cleanlab()

    @hookimpl
    def filter_dataset(self, losses: torch.Tensor, labels: torch.Tensor, num_classes: int) -> TrustSplit:
        if labels.shape[0] != self.features.shape[0]:
            raise ValueError(f"ConfidentLearning was given features of {self.features.shape[0]} samples but the "
                             f"training set has {labels.shape[0]}; build it with the features of this training set")
        key = labels.cpu().numpy().tobytes()
        if key not in self._cache:  # one label vector at a time: a recalibration replaces it
            self._cache.clear()
            self._cache[key] = out_of_sample_probabilities(self.features, labels, num_classes, self.folds, self.seed)
        split = confident_split(labels.cpu(), self._cache[key], num_classes, self.filter_by)
        return TrustSplit(split.trusted.to(losses.device), split.confidence.to(losses.device),
                          split.thresholds.to(losses.device))

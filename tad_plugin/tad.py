"""TAD's implementation of the three hooks: an ordinary plugin, registered as ``tad``, that users can replace."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .checks import is_integer
from .division import divide_by_loss, divide_by_loss_batch
from .hookspecs import hookimpl
from .losses import ce_rce_loss
from .recalibration import Threshold, check_vote_settings, recalibrate_batch_with_anchors, recalibrate_with_anchors
from .results import Recalibration, TrustSplit
from .search import Backend

__all__ = ["TrustAwareDiversion"]


@dataclass(frozen=True, kw_only=True)
class TrustAwareDiversion:
    """Trust-Aware Diversion's configuration and hook implementations.

    The paper gives no values for these knobs; each default below is the project's own choice, with its
    reason.

    Attributes:
        reg_weight: lambda in Eq. 6. Default 1.0: with ``log_zero = -4`` the regulariser adds at most 4
            to a sample's loss (``4 * (1 - p_y)``), the same order as CE early in training, so neither term
            swamps the other; ``0`` gives plain CE.
        log_zero: the negative constant standing for log 0 in the reverse CE. Default -4.0, the value
            of A in the symmetric cross-entropy paper (SCE); SCE's public code effectively uses
            ln(1e-4) = -9.21, i.e. a 2.3x stronger regulariser at the same lambda.
        gmm_random_state: seed of the GMM's initialisation, fixed so that a division is reproducible.
        gmm_max_iter, gmm_tol, gmm_reg_covar: EM settings. 100 iterations and tol 1e-3 are scikit-learn's
            defaults (the fit, its k-means initialisation included, runs in torch on the losses' device, all
            experts of a group together);
            reg_covar 5e-4 is DivideMix's and keeps a collapsed component from a singular variance.
        top_k: reference samples per class in the inner loop (the most reliable trusted ones). Default
            100: large enough that each class has neighbours in every mode of its appearance, small
            enough that only samples close to the anchors vote. The CIFAR-10 configs (5000 samples per
            class) use 500 with ``num_neighbors`` 50.
        num_neighbors: nearest references that vote for a sample. Default 30: enough voters that a few
            neighbours of another class cannot carry the vote. Keep it below the trusted samples per class:
            a class with fewer references than voters never wins unanimously, so on tiny data the calibrated
            bar (floored at 0.9) recalls little.
        vote_threshold: which votes act. Default ``"calibrated"``: the bar is the
            ``calibration_quantile`` of the trusted samples' leave-one-out vote share for their own
            label (:func:`tad_plugin.recalibration.calibrated_threshold`), never below
            ``recall_confidence`` / ``sieve_confidence``; an untrusted sample is recalled, and a trusted
            one sieved, only if its vote is at least as supported as that. The bar adapts to the features and
            the round (near-unanimity for tight clusters such as digits' pixels, lower for diffuse ones), so
            recalls do not lower the trusted space's precision where fixed thresholds would. ``"fixed"``
            uses ``recall_confidence`` / ``sieve_confidence`` instead.
        calibration_quantile: the quantile of the trusted samples' own-label shares used as the bar.
            Default 0.75: stricter than the median, which lets a few wrong recalls in.
        recall_confidence: the vote share needed to recall an untrusted sample with its pseudo-label
            (``"fixed"``), or the calibrated bar's floor. Default 0.9 (near-unanimous): where classes
            overlap the calibrated bar sinks towards a bare majority; the floor keeps weak votes from acting.
        sieve_confidence: the vote share of another class needed to sieve a trusted sample (``"fixed"``),
            or the calibrated bar's floor. Default 0.9, for the same reason.
        sieve: whether trusted samples are sieved at all.
        search_backend: ``"auto"`` (FAISS if installed, else torch), ``"faiss"`` or ``"torch"``.
    """

    reg_weight: float = 1.0
    log_zero: float = -4.0
    gmm_random_state: int = 0
    gmm_max_iter: int = 100
    gmm_tol: float = 1e-3
    gmm_reg_covar: float = 5e-4
    top_k: int = 100
    num_neighbors: int = 30
    vote_threshold: Threshold = "calibrated"
    calibration_quantile: float = 0.75
    recall_confidence: float = 0.9
    sieve_confidence: float = 0.9
    sieve: bool = True
    search_backend: Backend = "auto"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.reg_weight) and self.reg_weight >= 0):
            raise ValueError(f"reg_weight must be a finite number >= 0, got {self.reg_weight}")
        if not (math.isfinite(self.log_zero) and self.log_zero < 0):
            raise ValueError(f"log_zero must be a finite negative number (it stands for log 0), got {self.log_zero}")
        check_vote_settings(top_k=self.top_k, num_neighbors=self.num_neighbors, vote_threshold=self.vote_threshold,
                            calibration_quantile=self.calibration_quantile,
                            recall_confidence=self.recall_confidence, sieve_confidence=self.sieve_confidence)
        if self.gmm_max_iter < 1 or not self.gmm_tol > 0 or not self.gmm_reg_covar >= 0:
            raise ValueError(f"gmm_max_iter must be >= 1, gmm_tol > 0 and gmm_reg_covar >= 0, got {self.gmm_max_iter}, "
                             f"{self.gmm_tol} and {self.gmm_reg_covar}")
        if not isinstance(self.sieve, bool):
            raise TypeError(f"sieve must be true or false, got {self.sieve!r}")
        seed = self.gmm_random_state
        if not is_integer(seed) or not 0 <= seed < 2**32:
            raise ValueError(f"gmm_random_state must be an integer in [0, 2**32) (NumPy's seed range), got {seed!r}")
        if self.search_backend not in ("auto", "faiss", "torch"):
            raise ValueError(f"search_backend must be 'auto', 'faiss' or 'torch', got {self.search_backend!r}")

    @hookimpl
    def filter_dataset(self, losses: torch.Tensor, labels: torch.Tensor, num_classes: int) -> TrustSplit:
        return divide_by_loss(losses, labels, num_classes, random_state=self.gmm_random_state,
                              max_iter=self.gmm_max_iter, tol=self.gmm_tol, reg_covar=self.gmm_reg_covar)

    @hookimpl
    def filter_dataset_batch(self, losses: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[TrustSplit]:
        return divide_by_loss_batch(losses, labels, num_classes, random_state=self.gmm_random_state,
                                    max_iter=self.gmm_max_iter, tol=self.gmm_tol, reg_covar=self.gmm_reg_covar)

    @hookimpl
    def expert_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return ce_rce_loss(logits, targets, self.reg_weight, self.log_zero)

    @hookimpl
    def recalibrate(self, features: torch.Tensor, labels: torch.Tensor, trusted: torch.Tensor,
                    anchor_features: torch.Tensor, anchor_labels: torch.Tensor,
                    num_classes: int) -> Recalibration:
        return recalibrate_with_anchors(
            features, labels, trusted, anchor_features, anchor_labels, num_classes, top_k=self.top_k,
            num_neighbors=self.num_neighbors, vote_threshold=self.vote_threshold,
            calibration_quantile=self.calibration_quantile, recall_confidence=self.recall_confidence,
            sieve_confidence=self.sieve_confidence, sieve=self.sieve, backend=self.search_backend)

    @hookimpl
    def recalibrate_batch(self, features: torch.Tensor, labels: torch.Tensor, trusted: torch.Tensor,
                          anchor_features: torch.Tensor, anchor_labels: torch.Tensor,
                          num_classes: int) -> list[Recalibration]:
        return recalibrate_batch_with_anchors(
            features, labels, trusted, anchor_features, anchor_labels, num_classes, top_k=self.top_k,
            num_neighbors=self.num_neighbors, vote_threshold=self.vote_threshold,
            calibration_quantile=self.calibration_quantile, recall_confidence=self.recall_confidence,
            sieve_confidence=self.sieve_confidence, sieve=self.sieve, backend=self.search_backend)

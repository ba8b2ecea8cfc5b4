"""What the hooks return: :class:`TrustSplit` (outer loop) and :class:`Recalibration` (inner loop)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import check_tensors

__all__ = ["TrustSplit", "Recalibration"]


@dataclass(frozen=True)
class TrustSplit:
    """The outer loop's division of the training set into trusted and untrusted spaces.

    Attributes:
        trusted: bool tensor [N]; **True = trusted** (the opposite polarity of cleanlab's issue mask).
        confidence: float tensor [N]; w_i, the posterior of the low-loss GMM component, in [0, 1].
        thresholds: float tensor [num_classes]; tau_c, the class-wise threshold (Eq. 5). A class
            with no samples has threshold NaN.
    """

    trusted: torch.Tensor
    confidence: torch.Tensor
    thresholds: torch.Tensor

    def __post_init__(self) -> None:
        check_tensors("TrustSplit", trusted=self.trusted, confidence=self.confidence, thresholds=self.thresholds)
        n = self.trusted.shape[0]
        if self.trusted.dtype != torch.bool or self.trusted.dim() != 1:
            raise TypeError(f"TrustSplit.trusted must be a bool tensor [N], got {self.trusted.dtype} "
                            f"{tuple(self.trusted.shape)}")
        if self.confidence.shape != (n,) or not self.confidence.is_floating_point():
            raise TypeError(f"TrustSplit.confidence must be a float tensor [{n}], got "
                            f"{self.confidence.dtype} {tuple(self.confidence.shape)}")
        if self.thresholds.dim() != 1 or not self.thresholds.is_floating_point():
            raise TypeError("TrustSplit.thresholds must be a float tensor [num_classes]")

    @property
    def trusted_indices(self) -> torch.Tensor:
        """int64 indices of the trusted samples, ascending."""
        return torch.nonzero(self.trusted, as_tuple=False).flatten()

    @property
    def untrusted_indices(self) -> torch.Tensor:
        """int64 indices of the untrusted samples, ascending."""
        return torch.nonzero(~self.trusted, as_tuple=False).flatten()


@dataclass(frozen=True)
class Recalibration:
    """The inner loop's result.

    Attributes:
        labels: int64 tensor [N]; the labels to use from now on. Untrusted samples that were recalled
            carry their pseudo-label; every other sample keeps the label it came in with.
        trusted: bool tensor [N]; the new trusted space (recalled samples added, sieved ones removed).
        reliability: float tensor [N]; in [0, 1] for samples that were trusted on entry
            (1 = most reliable, i.e. closest to its class's anchors), NaN for the others.
    """

    labels: torch.Tensor
    trusted: torch.Tensor
    reliability: torch.Tensor

    def __post_init__(self) -> None:
        check_tensors("Recalibration", labels=self.labels, trusted=self.trusted, reliability=self.reliability)
        n = self.labels.shape[0]
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise TypeError(f"Recalibration.labels must be an int64 tensor [N], got {self.labels.dtype} "
                            f"{tuple(self.labels.shape)}")
        if self.trusted.dtype != torch.bool or self.trusted.shape != (n,):
            raise TypeError(f"Recalibration.trusted must be a bool tensor [{n}]")
        if self.reliability.shape != (n,) or not self.reliability.is_floating_point():
            raise TypeError(f"Recalibration.reliability must be a float tensor [{n}]")

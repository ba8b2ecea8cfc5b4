"""TAD's expert criterion (Eq. 6): cross-entropy plus lambda times the reverse cross-entropy; and the warm-up's
optional confidence penalty."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .checks import check_tensors

__all__ = ["ce_rce_loss", "confidence_penalty"]


def ce_rce_loss(logits: torch.Tensor, targets: torch.Tensor, reg_weight: float, log_zero: float) -> torch.Tensor:
    """Mean over the batch of ``CE + reg_weight * RCE``.

    ``RCE = -sum_k p_k * log(y_k)`` with ``p = softmax(logits)`` and one-hot ``y``, where ``log 1 = 0``
    and ``log 0`` is replaced by the negative constant ``log_zero``; so ``RCE = -log_zero * (1 - p_y)``.
    With ``reg_weight = 0`` this is plain cross-entropy.

    Pure (no state), so SAM-style optimisers may evaluate it twice per step. To keep training free of
    host syncs the label range is not checked here; check labels once per dataset
    (:func:`tad_plugin.checks.check_labels`).

    Args:
        logits: float tensor [B, C], B >= 1.
        targets: int64 tensor [B] with class indices in [0, C).
        reg_weight: lambda >= 0.
        log_zero: the constant standing for log 0; must be negative.

    Returns:
        A scalar tensor, differentiable w.r.t. ``logits``.

    Raises:
        ValueError: an empty batch (B = 0), whose mean would be NaN.
    """
    check_tensors("ce_rce_loss", logits=logits, targets=targets)
    if logits.dim() != 2 or not logits.is_floating_point():
        raise TypeError(f"logits must be a float tensor [B, C], got {logits.dtype} {tuple(logits.shape)}")
    if targets.dtype != torch.int64 or targets.shape != logits.shape[:1]:
        raise TypeError(f"targets must be an int64 tensor [{logits.shape[0]}] of class indices, got "
                        f"{targets.dtype} {tuple(targets.shape)}")
    if logits.shape[0] == 0:  # the mean of nothing would be NaN, silently poisoning the expert
        raise ValueError("ce_rce_loss of an empty batch (0 samples) has no mean: skip the step, or check why the "
                         "batch is empty (an empty trusted space?)")
    if not (math.isfinite(reg_weight) and reg_weight >= 0):
        raise ValueError(f"reg_weight (lambda) must be a finite number >= 0, got {reg_weight}")
    if not (math.isfinite(log_zero) and log_zero < 0):
        raise ValueError(f"log_zero must be a finite negative number (it stands for log 0), got {log_zero}")
    ce = F.cross_entropy(logits, targets)
    if reg_weight == 0:
        return ce
    p_y = torch.softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
    rce = -log_zero * (1.0 - p_y)
    return ce + reg_weight * rce.mean()


def confidence_penalty(logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``sum_k p_k log p_k`` with ``p = softmax(logits)``: minus the mean entropy.

    Adding ``w * confidence_penalty`` to a loss keeps predictions from becoming confident (it is 0 for
    one-hot predictions and ``-log C`` for uniform ones). DivideMix (Li et al., 2020) adds it during the
    warm-up under asymmetric noise, so the network does not fit the systematic flips before the first loss
    division; TAD's engine offers it as ``tad.warmup_confidence_penalty``.

    Args:
        logits: float tensor [B, C].

    Returns:
        A scalar tensor in ``[-log C, 0]``, differentiable w.r.t. ``logits``.
    """
    check_tensors("confidence_penalty", logits=logits)
    if logits.dim() != 2 or not logits.is_floating_point():
        raise TypeError(f"logits must be a float tensor [B, C], got {logits.dtype} {tuple(logits.shape)}")
    log_p = F.log_softmax(logits, dim=1)
    return (log_p.exp() * log_p).sum(1).mean()

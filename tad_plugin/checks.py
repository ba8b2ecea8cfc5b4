"""Argument checks shared by the core algorithms: one place for the messages users see on bad input."""

from __future__ import annotations

import numbers

import numpy as np
import torch

__all__ = ["is_integer", "is_flag", "check_tensors", "check_labels", "check_hard_or_soft_labels", "check_float_vector",
           "check_features", "check_bool_mask", "short_classes"]


def is_integer(value: object) -> bool:
    """Whether ``value`` is an integer count or seed: a Python or NumPy integer, not a bool (True is an ``int``,
    and a flag given where a number is expected is a mistake)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_flag(value: object) -> bool:
    """Whether ``value`` is a switch: a Python or NumPy bool (a string such as "no" is truthy: taken as a
    switch it would turn the part on)."""
    return isinstance(value, (bool, np.bool_))


def check_tensors(where: str, **named: object) -> None:
    """Raise ``TypeError`` naming the first of ``named`` (argument name -> value) that is not a torch tensor
    (a NumPy array, a list), with the conversion; None values are skipped. ``where`` names the caller."""
    for name, value in named.items():
        if value is not None and not isinstance(value, torch.Tensor):
            raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(value).__name__}; convert with "
                            f"torch.as_tensor")


def check_labels(labels: torch.Tensor, num_classes: int, name: str = "labels", n: int | None = None) -> None:
    """Raise ``ValueError``/``TypeError`` unless ``labels`` is int64 [n] with values in [0, num_classes).

    This reads the tensor's min and max (one host sync): call it once per dataset operation, not per
    training step.
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype != torch.int64 or labels.dim() != 1:
        raise TypeError(f"{name} must be an int64 tensor [N], got {labels.dtype} {tuple(labels.shape)}; "
                        f"convert with .long() / flatten it")
    if n is not None and labels.shape[0] != n:
        raise ValueError(f"{name} has {labels.shape[0]} entries but {n} were expected (one per sample)")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{name} must lie in [0, {num_classes}) but span [{lo}, {hi}] "
                             f"(num_classes={num_classes}); remap your labels or fix num_classes")


def check_hard_or_soft_labels(labels: torch.Tensor, n: int, num_classes: int) -> None:
    """Raise ``ValueError`` unless ``labels`` is int64 [n] in [0, num_classes) (hard) or a finite float
    [n, num_classes] (soft labels as logits, DATM)."""
    if labels.is_floating_point() and labels.shape == (n, num_classes):
        if not bool(torch.isfinite(labels).all()):
            raise ValueError("soft labels (logits) contain NaN or inf")
        return
    if labels.dtype == torch.int64 and labels.shape == (n,):
        check_labels(labels, num_classes, n=n)
        return
    raise ValueError(f"labels must be int64 [{n}] (hard) or float [{n}, {num_classes}] (soft logits), got "
                     f"{labels.dtype} {tuple(labels.shape)}")


def check_float_vector(x: torch.Tensor, name: str, n: int | None = None, finite: bool = True) -> None:
    """Raise unless ``x`` is a 1-D floating tensor (of length ``n``), all finite if ``finite``."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 1:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{name} must be a float tensor [N], got {got}")
    if n is not None and x.shape[0] != n:
        raise ValueError(f"{name} has {x.shape[0]} entries but {n} were expected (one per sample)")
    if finite and x.numel() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} NaN/inf values; the expert has diverged or the input is "
                         f"corrupt -- lower the learning rate or check the data before dividing")


def check_features(x: torch.Tensor, name: str, dim: int | None = None) -> None:
    """Raise unless ``x`` is a finite 2-D floating tensor [M, D] (with D == ``dim`` if given)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 2:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{name} must be a float tensor [M, D], got {got}")
    if x.shape[1] < 1:
        raise ValueError(f"{name} has no feature dimensions ({tuple(x.shape)}): give at least one per row")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has feature dimension {x.shape[1]} but {dim} was expected; embed both "
                         f"with the same extractor")
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN/inf values; check the feature extractor's input range")


def check_bool_mask(x: torch.Tensor, name: str, n: int) -> None:
    """Raise unless ``x`` is a bool tensor [n]."""
    if not isinstance(x, torch.Tensor) or x.dtype != torch.bool or x.shape != (n,):
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{name} must be a bool tensor [{n}] (True = trusted), got {got}")


def short_classes(labels: torch.Tensor, num_classes: int, need: int) -> str | None:
    """The classes with fewer than ``need`` samples among ``labels`` (int64 [M], class indices in [0, num_classes)),
    listed for an error message (``"class 3: 2, class 7: 0"``, the first ten), or None when every class has enough."""
    counts = torch.bincount(labels.cpu(), minlength=num_classes).tolist()
    short = [(c, k) for c, k in enumerate(counts) if k < need]
    if not short:
        return None
    return ", ".join(f"class {c}: {k}" for c, k in short[:10]) + (" ..." if len(short) > 10 else "")

"""Label noise: synthetic (symmetric, asymmetric) with a seed, and the real-world CIFAR-10N / CIFAR-100N sets.

Definitions (fixed here, since the paper does not spell them out):

* ``"symmetric"``: in each class c, exactly ``round(rate * N_c)`` samples, chosen uniformly, get a label
  drawn uniformly from the *other* classes (the flip rate is exactly ``rate``, unlike DivideMix's variant
  that may redraw the true class).
* ``"asymmetric-cifar10"``: the paper's map truck -> automobile, bird -> airplane, deer -> horse,
  cat -> dog; in each listed source class exactly ``round(rate * N_c)`` samples flip (dog does not flip
  back to cat). The overall noise rate is therefore about ``0.4 * rate`` on CIFAR-10.
* ``"asymmetric-cifar100"``: each class flips to the next class within its super-class (classes of a
  super-class in ascending order, cyclically), for exactly ``round(rate * N_c)`` samples of every class;
  the super-classes come from the official coarse labels (``coarse_labels``).

The paper defines asymmetric noise for CIFAR-10 and CIFAR-100 only (its Tiny ImageNet rows are symmetric), so
each asymmetric kind refuses any other number of classes (Tiny ImageNet's 200 included) with an error.
"""

from __future__ import annotations

import importlib
import logging
import numbers
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checks import check_labels, is_integer
from .errors import TADError
from .files import not_a_zip, torch_load

__all__ = [
    "CIFAR10_ASYMMETRIC_MAP",
    "CIFAR100_COARSE",
    "NOISE_KINDS",
    "LabelSetError",
    "corrupt_labels",
    "load_cifar_n",
    "make_noisy_labels",
    "noise_rate",
]

log = logging.getLogger("tad_plugin.noise")

NOISE_KINDS = ("symmetric", "asymmetric-cifar10", "asymmetric-cifar100")
#: CIFAR-10 class indices: 0 airplane, 1 automobile, 2 bird, 3 cat, 4 deer, 5 dog, 7 horse, 9 truck.
CIFAR10_ASYMMETRIC_MAP = {9: 1, 2: 0, 4: 7, 3: 5}
#: The official CIFAR-100 super-class of each fine class (fine classes in the official/torchvision order).
CIFAR100_COARSE = (4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15,
                   3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4,
                   2, 0, 17, 4, 18, 17, 10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
                   16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13)


def noise_rate(noisy: torch.Tensor, clean: torch.Tensor) -> float:
    """Fraction of samples whose noisy label differs from the clean one."""
    if noisy.shape != clean.shape:
        raise ValueError(f"noisy {tuple(noisy.shape)} and clean {tuple(clean.shape)} labels differ in shape")
    return float((noisy != clean).double().mean()) if noisy.numel() else 0.0


def make_noisy_labels(labels: torch.Tensor, kind: str, rate: float, *, num_classes: int, seed: int,
                      coarse_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Return noisy labels (int64 [N], CPU); the same arguments always give the same labels.

    Args:
        labels: clean int64 labels [N] in [0, num_classes), on any device.
        kind: one of :data:`NOISE_KINDS` (see the module docstring for the exact definitions).
        rate: fraction of each affected class to flip, in [0, 1].
        num_classes: C (10 for ``asymmetric-cifar10``, 100 for ``asymmetric-cifar100``).
        seed: seed of the noise; the generator is numpy's PCG64, so labels match across machines.
        coarse_labels: int64 [N] super-class of every sample, required for ``asymmetric-cifar100``
            (e.g. CIFAR-100's official ``train_coarse`` labels); ignored (may be None) for the other kinds.

    Raises:
        TypeError: ``labels`` not int64 [N], or ``num_classes`` not an integer.
        ValueError: a label outside [0, num_classes), a rate outside [0, 1], an unknown kind, a negative seed,
            fewer than 2 classes, an asymmetric kind with the wrong class count, or coarse labels missing or
            not one int64 super-class per sample.
    """
    labels = torch.as_tensor(labels).cpu()
    if not is_integer(num_classes):
        raise TypeError(f"num_classes must be an integer, got {num_classes!r}")
    check_labels(labels, num_classes)
    if not isinstance(rate, numbers.Real) or isinstance(rate, bool) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise rate must be a number in [0, 1], got {rate!r}")
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; choose one of {', '.join(NOISE_KINDS)}")
    if not is_integer(seed) or seed < 0:
        raise ValueError(f"the noise seed must be an integer >= 0 (NumPy's generator takes no negative seed), got "
                         f"{seed!r}")
    num_classes, seed = int(num_classes), int(seed)
    y = labels.cpu().numpy().copy()
    rng = np.random.default_rng(seed)
    if kind == "symmetric":
        if num_classes < 2:
            raise ValueError("symmetric noise needs at least 2 classes")
        for c in range(num_classes):
            flip = _pick(rng, np.flatnonzero(labels.numpy() == c), rate)
            offsets = rng.integers(1, num_classes, size=len(flip))  # 1..C-1: never the true class
            y[flip] = (c + offsets) % num_classes
    else:
        needed = 10 if kind == "asymmetric-cifar10" else 100
        if num_classes != needed:
            raise ValueError(f"{kind} noise needs {needed} classes, got {num_classes}: asymmetric noise is defined "
                             f"for CIFAR-10 and CIFAR-100 only; use symmetric noise")
        mapping = CIFAR10_ASYMMETRIC_MAP if kind == "asymmetric-cifar10" else _next_in_superclass(
            labels, coarse_labels, num_classes)
        for src, dst in mapping.items():
            y[_pick(rng, np.flatnonzero(labels.numpy() == src), rate)] = dst
    noisy = torch.from_numpy(y.astype(np.int64))
    log.info("%s noise at rate %.3f (seed %d): measured noise rate %.4f", kind, rate, seed,
             noise_rate(noisy, labels.cpu()))
    return noisy


def _pick(rng: np.random.Generator, idx: np.ndarray, rate: float) -> np.ndarray:
    return rng.choice(idx, size=int(round(rate * len(idx))), replace=False) if len(idx) else idx


def _next_in_superclass(labels: torch.Tensor, coarse_labels: torch.Tensor | None, num_classes: int) -> dict[int, int]:
    if coarse_labels is None:
        raise ValueError("asymmetric-cifar100 noise needs coarse_labels (the super-class of every sample, e.g. "
                         "CIFAR-100's official train_coarse labels)")
    coarse = torch.as_tensor(coarse_labels).cpu()
    if coarse.is_floating_point() or coarse.is_complex() or coarse.dtype == torch.bool:
        raise ValueError(f"coarse_labels must hold integer super-class ids, got {coarse.dtype}")
    if coarse.shape != labels.shape:
        raise ValueError(f"coarse_labels {tuple(coarse.shape)} must align with labels {tuple(labels.shape)}")
    groups: dict[int, set[int]] = {}
    fine_to_coarse: dict[int, int] = {}
    for f, c in zip(labels.cpu().tolist(), coarse.tolist()):
        if fine_to_coarse.setdefault(f, c) != c:
            raise ValueError(f"class {f} appears in super-classes {fine_to_coarse[f]} and {c}; coarse_labels must "
                             f"map every class to exactly one super-class")
        groups.setdefault(c, set()).add(f)
    single = [c for c, members in groups.items() if len(members) < 2]
    if single:
        raise ValueError(f"coarse_labels put {len(single)} super-class(es) over a single class (e.g. {single[0]}), "
                         f"where asymmetric noise would flip nothing; give super-classes of >= 2 classes each "
                         f"(CIFAR-100: 20 of 5)")
    mapping = {}
    for members in groups.values():
        ordered = sorted(members)
        for i, f in enumerate(ordered):
            mapping[f] = ordered[(i + 1) % len(ordered)]
    return mapping


def corrupt_labels(clean: torch.Tensor, data: Any, num_classes: int, name: str = "the train set") -> torch.Tensor:
    """``clean`` with the noise ``data`` configures; ``clean`` itself when it configures none.

    Args:
        clean: int64 [N], the clean labels.
        data: the data settings (a ``DataConfig``: ``noise`` / ``noise_rate`` / ``noise_seed``, or ``cifar_n`` with
            ``label_set``; ``cifar_n`` wins).
        num_classes: C.
        name: the data's name, for messages.

    Returns:
        int64 [N] labels in [0, C), CPU.

    Raises:
        ValueError: a CIFAR-N file of another length or with labels outside [0, C), or asymmetric-cifar100 noise
            on a dataset without CIFAR-100's 100 classes.
    """
    if data.cifar_n is not None:
        labels = load_cifar_n(data.cifar_n, data.label_set)
        if labels.shape != clean.shape:
            raise ValueError(f"{data.cifar_n}[{data.label_set!r}] has {len(labels)} labels but {name} has "
                             f"{len(clean)} training images; use the CIFAR-N file of this dataset")
        if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
            raise ValueError(f"{data.cifar_n}[{data.label_set!r}] holds labels {int(labels.min())} to "
                             f"{int(labels.max())} but {name} has {num_classes} classes; use the CIFAR-N file of "
                             f"this dataset")
        return labels
    if data.noise is None:
        return clean
    coarse = None
    if data.noise == "asymmetric-cifar100":
        if num_classes != 100:
            raise ValueError(f"asymmetric-cifar100 noise needs CIFAR-100's 100 classes; {name} has {num_classes}: "
                             f"use symmetric noise instead")
        coarse = torch.tensor(CIFAR100_COARSE)[clean]
    return make_noisy_labels(clean, data.noise, data.noise_rate, num_classes=num_classes, seed=data.noise_seed,
                             coarse_labels=coarse)


class LabelSetError(TADError, KeyError):
    """A CIFAR-N label file without the label set asked for."""

    def __str__(self) -> str:  # the message, not KeyError's quoted repr
        return str(self.args[0]) if self.args else ""


def load_cifar_n(path: str | os.PathLike[str], label_set: str) -> torch.Tensor:
    """Read one label set of CIFAR-10N / CIFAR-100N: int64 [N], in the file's order (the official files hold
    50,000 labels in the official train order; the length is checked against the dataset where it is used).

    Args:
        path: the official ``CIFAR-10_human.pt`` / ``CIFAR-100_human.pt`` (a ``torch.save`` dict of numpy
            arrays), or an ``.npz`` with the same arrays.
        label_set: a key of that file: CIFAR-10N ``aggre_label``, ``worse_label``, ``random_label1``,
            ``random_label2``, ``random_label3``, ``clean_label``; CIFAR-100N ``noisy_label``,
            ``clean_label``, ``noisy_coarse_label``, ``clean_coarse_label``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file does not read as a torch or ``.npz`` file, or the label set is not a 1-D
            integer array.
        LabelSetError: the file has no such label set (the message lists the ones it has).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-N label file {path} does not exist; get CIFAR-10_human.pt / "
                                f"CIFAR-100_human.pt from the CIFAR-N release (UCSC-REAL/cifar-10-100n, data/)")
    if (why := not_a_zip(path)) is not None:  # numpy's own message would ask for allow_pickle
        raise ValueError(f"cannot read CIFAR-N label file {path}: not an .npz or torch file ({why}); copy it again")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
        else:
            data = _load_cifar_n_pt(path)
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise ValueError(f"cannot read CIFAR-N label file {path}: {exc}") from exc
    if label_set not in data:
        raise LabelSetError(f"{path.name} has no label set {label_set!r}; available: {', '.join(sorted(data))}; "
                            f"pick one with --label-set (data.label_set)")
    arr = np.asarray(data[label_set])
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{path.name}[{label_set!r}] is not a 1-D integer label array ({arr.dtype} {arr.shape}); "
                         f"store one class index per training image, in the training set's order")
    return torch.from_numpy(arr.astype(np.int64))


def _load_cifar_n_pt(path: Path) -> dict[str, object]:
    # The official files pickle numpy arrays (and, in CIFAR-100N, Python lists). Allow exactly the numpy
    # reconstruction functions so that loading stays weights_only (no arbitrary code).
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")  # numpy >= 2
    except ImportError:
        multiarray = importlib.import_module("numpy.core.multiarray")
    reconstruct = multiarray._reconstruct
    safe: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [
        np.ndarray, np.dtype, type(np.dtype(np.int64)),
        (reconstruct, "numpy.core.multiarray._reconstruct"), (reconstruct, "numpy._core.multiarray._reconstruct")]
    with torch.serialization.safe_globals(safe):
        data = torch_load(path)
    if not isinstance(data, dict):
        raise ValueError(f"expected a dict of label arrays, got {type(data).__name__}")
    return data

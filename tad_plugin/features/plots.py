"""Plots of SimCLR training records (the ``features_<name>.json`` files of ``reproduction/train_features.py``:
``history``, a list of per-epoch dicts with ``epoch``, ``seconds`` and ``knn<k>`` test accuracies as fractions;
``knn``, the final accuracy per k; ``commit``, ``device``, ``epochs``): one run's kNN curve, or several runs side
by side. Needs the ``plot`` extra (matplotlib)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..plotting import pyplot, save_png

#: the kNN accuracy (percent) an extractor is meant to reach, drawn dotted on every plot
KNN_TARGET = 80
_PURPOSE = "the feature-training plots"


def _figure(size: tuple[float, float]) -> tuple[Any, Any]:
    """A fresh figure and axes (matplotlib on the Agg backend: no display needed)."""
    return pyplot(_PURPOSE).subplots(figsize=size)


def _save(fig: Any, ax: Any, path: Path, **legend: Any) -> None:
    """The :data:`KNN_TARGET` line dotted, grid and legend (``legend``: its options); written atomically as a
    PNG."""
    ax.axhline(KNN_TARGET, color="grey", ls=":", lw=1, label=f"{KNN_TARGET}% target")
    ax.grid(alpha=0.3)
    ax.legend(**legend)
    save_png(fig, path)


def _epoch_to_minutes(evals: Sequence[dict[str, float]]) -> tuple[Any, Any]:
    """The epoch -> training minutes map of ``evals`` and its inverse (piecewise linear through 0), for a
    secondary axis."""
    import numpy as np

    e = np.array([0.0] + [h["epoch"] for h in evals])
    m = np.array([0.0] + [h["seconds"] / 60 for h in evals])
    return (lambda x: np.interp(x, e, m)), (lambda y: np.interp(y, m, e))


def plot_history(history: Sequence[dict[str, float]], ks: Sequence[int], title: str, path: Path) -> None:
    """One run's kNN test accuracy for each k of ``ks`` against epochs (bottom axis) and training minutes (top),
    from its ``history``, written to ``path`` as a PNG."""
    evals = [h for h in history if f"knn{ks[0]}" in h]
    fig, ax = _figure((6.4, 4.0))
    for k in ks:
        ax.plot([h["epoch"] for h in evals], [100 * h[f"knn{k}"] for h in evals], marker="o", ms=3,
                label=f"kNN k={k}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title, fontsize=9)
    top = ax.secondary_xaxis("top", functions=_epoch_to_minutes(evals))
    top.set_xlabel("training minutes")
    _save(fig, ax, path)


def compare_runs(records: Sequence[Path], path: Path, k: int = 10) -> None:
    """kNN@k against training minutes of several runs (their ``features_<name>.json`` records) on one plot, each
    labelled with its file's name, commit, device, final accuracy and epoch count, written to ``path`` as a PNG.

    Raises:
        ValueError: a file of ``records`` is not such a record with kNN@k (named; nothing is written).
    """
    fig, ax = _figure((7.2, 4.4))
    for record_path in records:
        try:
            rec = json.loads(record_path.read_text())
            evals = [h for h in rec["history"] if f"knn{k}" in h]
            final = 100 * rec["knn"][str(k)]
        except (OSError, ValueError, KeyError) as exc:
            pyplot(_PURPOSE).close(fig)
            raise ValueError(f"{record_path}: not a training record of reproduction/train_features.py with "
                             f"kNN@{k} ({exc!r}); pass the features_<name>.json files it writes") from exc
        label = (f"{record_path.stem.removeprefix('features_')} ({rec['commit'][:7]}, "
                 f"{rec['device'].replace('NVIDIA ', '')}): {final:.2f}%, {rec['epochs']} ep")
        ax.plot([h["seconds"] / 60 for h in evals], [100 * h[f"knn{k}"] for h in evals], marker="o", ms=2.5,
                lw=1.2, label=label)
    ax.set_xlabel("training minutes")
    ax.set_ylabel(f"kNN k={k} test top-1 (%)")
    ax.set_title("SimCLR ResNet-18 on the CIFAR-10 JPEG copy: runs side by side", fontsize=9)
    _save(fig, ax, path, fontsize=7, loc="lower right")

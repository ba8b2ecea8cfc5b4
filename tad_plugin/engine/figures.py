"""Figures of a distillation run: the distilled images as a grid, and the evaluation curve.

Both need matplotlib (``pip install 'tad_plugin[plot]'``); without it they raise ImportError, and ``tad
run`` / ``tad distill`` skip them (the run's JSON and ``distilled.pt`` hold the same content).
"""

from __future__ import annotations

import math
import os

import torch

from ..plotting import pyplot, save_png
from .matching import DistillResult
from .preprocess import Preprocessor

__all__ = ["save_image_grid", "save_curve"]

#: At most this many classes (rows) and images per class (columns) are drawn; CIFAR-100 at IPC 50 would be
#: 5,000 tiles.
MAX_ROWS, MAX_COLS = 20, 10


def save_image_grid(images: torch.Tensor, labels: torch.Tensor, preprocess: Preprocessor,
                    path: str | os.PathLike[str], class_names: tuple[str, ...] | None = None,
                    title: str = "distilled images") -> None:
    """One row per class, its images side by side, as a PNG (written atomically).

    Args:
        images: float [M, C, H, W] in model-input space (normalised or ZCA-whitened, as distillation keeps
            them); ``preprocess.to_unit`` maps them back to [0, 1] pixels.
        labels: int64 [M] class ids, or float soft labels [M, K] (a row's class: its argmax).
        preprocess: the run's preprocessor (``distilled.pt`` stores it).
        path: the PNG to write.
        class_names: row titles (None: class ids). The first :data:`MAX_ROWS` classes and :data:`MAX_COLS`
            images of each are drawn.
    Raises:
        ValueError: mismatched or malformed images / labels. ImportError: no matplotlib.
    """
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"images must be float [M, C, H, W], got {images.dtype} {tuple(images.shape)}")
    hard = labels.argmax(1) if labels.dim() == 2 else labels
    if hard.dim() != 1 or len(hard) != len(images):
        raise ValueError(f"labels must be [M] or [M, K] with M = {len(images)}, got {tuple(labels.shape)}")
    plt = pyplot("the run figures")
    pixels = preprocess.to_unit(images.detach().float().cpu()).permute(0, 2, 3, 1)  # [M, H, W, C] in [0, 1]
    classes = sorted(set(hard.tolist()))[:MAX_ROWS]
    cols = min(MAX_COLS, max(int((hard == c).sum()) for c in classes))
    fig, axes = plt.subplots(len(classes), cols, figsize=(0.9 * cols + 1.2, 0.9 * len(classes) + 0.5),
                             squeeze=False)
    for row, c in enumerate(classes):
        members = torch.nonzero(hard == c).flatten()[:cols]
        for col in range(cols):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if col < len(members):
                tile = pixels[members[col]].numpy()
                ax.imshow(tile[..., 0] if tile.shape[-1] == 1 else tile, cmap="gray", vmin=0, vmax=1,
                          interpolation="nearest")
        name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
        axes[row][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=9)
    save_png(fig, path, dpi=100)


def save_curve(result: DistillResult, path: str | os.PathLike[str], title: str = "distillation") -> bool:
    """Test accuracy of the evaluation nets (mean +- std; the EMA images' too when evaluated) and the learned
    step size against the iteration, as a PNG (written atomically). Returns False, writing nothing, when the
    run made no evaluation (``distill.eval_every`` 0). Raises ImportError without matplotlib."""
    rows = [h for h in result.history if "eval" in h]
    if not rows:
        return False
    plt = pyplot("the run figures")
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label, style in (("eval", "images", "o-"), ("eval_ema", "EMA images", "s--")):
        pts = [(h["iteration"], 100 * h[key]["mean"], 100 * h[key]["std"]) for h in rows if key in h]
        if pts:
            x, m, s = zip(*pts)
            ax.errorbar(x, m, yerr=s, fmt=style, capsize=3, label=f"test accuracy, {label}")
    if result.best is not None:
        ax.axhline(100 * result.best["mean"], color="grey", lw=0.8, ls=":",
                   label=f"best {100 * result.best['mean']:.1f}% @ {result.best['iteration']}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    lr = [(h["iteration"], h["syn_lr"]) for h in rows if isinstance(h.get("syn_lr"), (int, float))
          and math.isfinite(h["syn_lr"])]
    if lr:
        twin = ax.twinx()
        twin.plot(*zip(*lr), color="tab:red", alpha=0.6, lw=1, label="learned step size")
        twin.set_ylabel("learned step size (syn_lr)", color="tab:red")
        twin.legend(fontsize=8, loc="lower center")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title)
    save_png(fig, path)
    return True

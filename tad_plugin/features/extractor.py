"""Wrap any feature network as a :class:`FeatureExtractor`; save, load and locate trained extractors.

The inner loop calls ``features = extractor.embed(images)``. Images are always given in pixel space:

* uint8 [N, C, H, W] with values 0..255, or
* float [N, C, H, W] with values in [0, 1].

Distillers often work in ZCA-whitened or mean/std-normalised space; such images (synthetic anchors,
say) must be mapped back to [0, 1] first (the inverse ZCA, or ``x * std + mean``). A float input outside
[0, 1] is refused with an error that says so, rather than embedded silently wrong.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import TADError
from ..files import atomic_torch_save, torch_load
from .resnet import cifar_resnet18

__all__ = [
    "FeatureExtractor",
    "ExtractorFileError",
    "save_extractor",
    "load_extractor",
    "default_extractor_path",
    "CHECKPOINT_FORMAT",
]

#: Value of the ``"format"`` key of an extractor file written by :func:`save_extractor`.
CHECKPOINT_FORMAT = "tad_plugin.features.extractor/1"
_RANGE_TOLERANCE = 1e-3


class ExtractorFileError(TADError, ValueError):
    """An extractor file is missing, corrupt or of an unknown format; the message says how to fix it."""


class FeatureExtractor:
    """Embeds images with any ``torch.nn.Module`` that returns one feature vector per image.

    Args:
        module: maps float images [B, C', H', W'] to features [B, D] (outputs with more dimensions are
            flattened to [B, -1]). DINO, CLIP image towers, torchvision backbones and our SimCLR
            ResNet-18 all qualify. It is run in eval mode, without gradients.
        normalize: per-channel ``(mean, std)`` applied to [0, 1] images before ``module`` (``None``: the
            module receives [0, 1] images as they are).
        input_size: ``(H', W')`` (or one int for square) the module expects; other sizes are resized
            bilinearly (``None``: no resizing).
        in_channels: channels the module expects (``None``: whatever the images have). Grey images are
            repeated to 3 channels and RGB images reduced to luma when this asks for it.
        batch_size: images per forward pass.
        amp: run the module under bfloat16 autocast on CUDA (features are returned as float32).
        meta: free-form description (training data, kNN accuracy, ...) kept with the extractor.
    """

    def __init__(self, module: nn.Module, normalize: tuple[Sequence[float], Sequence[float]] | None = None,
                 input_size: int | tuple[int, int] | None = None, in_channels: int | None = None,
                 batch_size: int = 1024, amp: bool = True, meta: Mapping[str, Any] | None = None) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"FeatureExtractor needs a torch.nn.Module, got {type(module).__name__}")
        if normalize is not None:
            mean, std = (torch.as_tensor(v, dtype=torch.float32).flatten() for v in normalize)
            if mean.shape != std.shape or not bool(torch.isfinite(mean).all()) or not bool((std > 0).all()) \
                    or not bool(torch.isfinite(std).all()):
                raise ValueError(f"normalize must be (mean, std) of equal length, finite, with std > 0, got "
                                 f"{normalize}")
            self._mean: torch.Tensor | None = mean
            self._std: torch.Tensor | None = std
        else:
            self._mean = self._std = None
        self.input_size = ((int(input_size), int(input_size)) if isinstance(input_size, (int, np.integer))
                           else input_size)
        if self.input_size is not None and (len(self.input_size) != 2 or min(self.input_size) < 1):
            raise ValueError(f"input_size must be a side or (height, width) >= 1 pixel, or None, got {input_size}")
        if in_channels is not None and in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1, 3 or None, got {in_channels}")
        if self._mean is not None and in_channels is not None and len(self._mean) not in (1, in_channels):
            raise ValueError(f"normalize has {len(self._mean)} channels but in_channels is {in_channels}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.module = module
        self.in_channels = in_channels
        self.batch_size = batch_size
        self.amp = amp
        self.meta: dict[str, Any] = dict(meta or {})

    @property
    def device(self) -> torch.device:
        """Device of the module's first parameter (CPU for a parameter-free module)."""
        return next(self.module.parameters(), torch.empty(0)).device

    def to(self, device: str | torch.device) -> FeatureExtractor:
        """Move the module to ``device``; returns ``self``."""
        self.module.to(device)
        return self

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Validated, module-ready float32 batch: channels adapted, resized, normalised (no range check)."""
        x = images.to(self.device, non_blocking=True)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if self.in_channels == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif self.in_channels == 1 and x.shape[1] == 3:
            x = (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        if self.input_size is not None and tuple(x.shape[-2:]) != tuple(self.input_size):
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
        if self._mean is not None and self._std is not None:  # both or neither
            mean = self._mean.to(x.device).view(1, -1, 1, 1)
            std = self._std.to(x.device).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def embed(self, images: torch.Tensor, progress: str | None = None) -> torch.Tensor:
        """Features of ``images``.

        Args:
            images: uint8 [N, C, H, W] (0..255) or float [N, C, H, W] in [0, 1], on any device. Not
                ZCA-whitened and not mean/std-normalised: undo that first.
            progress: None = silent; a string = a tqdm bar over the images with that description.

        Returns:
            float32 [N, D] on ``images.device``, in input order (not L2-normalised).

        Raises:
            ValueError: wrong rank, dtype, channel count, a float value outside [0, 1], or NaN.
        """
        self._check(images)
        was_training = self.module.training
        self.module.eval()
        bar = tqdm(total=images.shape[0], desc=progress, unit="img", disable=progress is None)
        try:
            chunks = []
            use_amp = self.amp and self.device.type == "cuda"
            for start in range(0, images.shape[0], self.batch_size):
                x = self.prepare(images[start:start + self.batch_size])
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                    out = self.module(x)
                if not isinstance(out, torch.Tensor) or out.dim() < 2 or out.shape[0] != x.shape[0]:
                    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                    raise TypeError(f"the feature module must return one feature row per image, a tensor "
                                    f"[{x.shape[0]}, D] for {x.shape[0]} images, got {got}")
                chunks.append(out.float().flatten(1).to(images.device))
                bar.update(x.shape[0])
        finally:
            bar.close()
            self.module.train(was_training)
        if not chunks:
            raise ValueError("embed got 0 images; pass images [N, C, H, W] with N >= 1")
        return torch.cat(chunks)

    def _check(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"embed expects images [N, C, H, W], got {shape}")
        if images.dtype != torch.uint8 and not images.dtype.is_floating_point:
            raise ValueError(f"embed expects uint8 (0..255) or float ([0, 1]) images, got {images.dtype}: convert "
                             f"0..255 values with .to(torch.uint8), or divide by 255 for floats")
        c = images.shape[1]
        if self.in_channels is not None and c not in (1, 3):
            raise ValueError(f"images have {c} channels; the extractor takes 1 or 3 (NCHW layout expected: "
                             f"is the channel axis last?)")
        if self.in_channels is None and self._mean is not None and len(self._mean) not in (1, c):
            raise ValueError(f"images have {c} channels but normalize has {len(self._mean)}")
        if images.dtype.is_floating_point and images.numel():
            lo_t, hi_t = torch.aminmax(images.detach())
            lo, hi = float(lo_t), float(hi_t)
            if lo != lo or hi != hi:
                raise ValueError("images contain NaN")
            if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
                raise ValueError(
                    f"float images must lie in [0, 1] but span [{lo:.3g}, {hi:.3g}]. If they are ZCA-whitened, "
                    f"apply the inverse ZCA first; if mean/std-normalised, compute x * std + mean; if they are "
                    f"0..255 values, divide by 255 or pass uint8"
                )


def default_extractor_path(dataset: str) -> Path:
    """Where ``tad features train`` stores the extractor for ``dataset`` by default:
    ``$TAD_PLUGIN_FEATURES/<dataset>.pt``, with ``TAD_PLUGIN_FEATURES`` defaulting to
    ``~/.cache/tad_plugin/features``. ``dataset`` is a name (``cifar10``) or a path, whose stem is used."""
    root = Path(os.environ.get("TAD_PLUGIN_FEATURES", Path.home() / ".cache" / "tad_plugin" / "features"))
    name = Path(dataset).stem if any(s in dataset for s in "/\\.") else dataset
    return root.expanduser() / f"{name}.pt"


def save_extractor(backbone: nn.Module, path: str | os.PathLike[str], *, in_channels: int,
                   image_size: tuple[int, int], mean: Sequence[float], std: Sequence[float],
                   meta: Mapping[str, Any] | None = None) -> None:
    """Write a :func:`cifar_resnet18` backbone as a weights-only torch file (atomically).

    ``meta`` must hold only JSON-like values (str, int, float, bool, None, lists, dicts)."""
    state = {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}
    # Through JSON, so that only plain types reach the file (torch.__version__, say, is a str subclass
    # that weights-only loading refuses).
    plain_meta = json.loads(json.dumps(dict(meta or {}), default=str))
    atomic_torch_save({
        "format": CHECKPOINT_FORMAT,
        "architecture": "cifar_resnet18",
        "in_channels": int(in_channels),
        "image_size": [int(s) for s in image_size],
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "state_dict": state,
        "meta": plain_meta,
    }, path)


def load_extractor(path: str | os.PathLike[str], device: str | torch.device = "cpu",
                   batch_size: int = 1024, dataset: str | None = None, wait_s: float = 0.0) -> FeatureExtractor:
    """Load an extractor written by :func:`save_extractor` (``tad features train``).

    Returns a :class:`FeatureExtractor` on ``device`` whose ``meta`` holds the training record (dataset,
    epochs, kNN accuracy, ...). Input images of another size are resized to the training size. ``dataset``
    (the caller's dataset source, None = unknown) only fills in the command a missing file's error gives.
    ``wait_s`` > 0: a missing file is waited for up to that many seconds (polled every few seconds), for an
    extractor that a concurrently running ``tad features train`` has not written yet (it writes atomically);
    0 = fail at once.

    Raises:
        ExtractorFileError: the file is missing (after ``wait_s``), unreadable, or not an extractor file.
    """
    path = Path(path).expanduser()
    deadline = time.monotonic() + wait_s
    while not path.is_file() and time.monotonic() < deadline:
        time.sleep(min(5.0, max(deadline - time.monotonic(), 0.0)))
    if not path.is_file() and wait_s > 0:
        raise ExtractorFileError(
            f"no feature extractor at {path} after waiting {wait_s:g} s (tad.features_wait_s): the inner loop needs "
            f"it now. Check that `tad features train --dataset {dataset or '<name>'} --out {path}` is running and "
            f"how far it is, or raise tad.features_wait_s")
    if not path.is_file():
        raise ExtractorFileError(
            f"no feature extractor at {path}. Train one with `tad features train --dataset {dataset or '<name>'} "
            f"--out {path}` "
            f"(on a GPU; a few minutes for CIFAR-10) or pass the path of an existing one"
        )
    try:
        blob = torch_load(path)
    except Exception as exc:  # truncated zip, pickle refused, ...
        raise ExtractorFileError(f"cannot read feature extractor {path}: {exc}. Re-create it with "
                                 f"`tad features train`") from exc
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        found = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise ExtractorFileError(f"{path} is not a tad_plugin feature extractor (format {found!r}, expected "
                                 f"{CHECKPOINT_FORMAT!r}); a training-state file ends in .state.pt")
    backbone = cifar_resnet18(blob["in_channels"])
    try:
        backbone.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        raise ExtractorFileError(f"{path}: weights do not fit a CIFAR ResNet-18: {exc}") from exc
    backbone.to(device).to(memory_format=torch.channels_last)
    return FeatureExtractor(backbone, normalize=(blob["mean"], blob["std"]), input_size=tuple(blob["image_size"]),
                            in_channels=blob["in_channels"], batch_size=batch_size, meta=blob["meta"])

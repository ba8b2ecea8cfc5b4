"""What the inner loop of a wrapped buffer run embeds with, and what its distilled anchors need from upstream.

* :class:`PixelMap` -- upstream's model input back to [0, 1] pixels: the inverse of the kornia ZCA that
  ``get_dataset`` leaves in ``args.zca_trans`` (MTT, FTD, DATM and ATT alike), else ``x * std + mean``
  with the ``mean`` / ``std`` it returns.
* :func:`raw_images` -- the training images as uint8 [N, C, H, W] in ``dst_train``'s order: a
  torchvision dataset's ``.data`` (CIFAR), else the model-input images mapped back.
* :func:`resolve_embedding` -- ``tad.features``: an extractor (default: ``tad features train``'s file for
  the dataset), a fixed ``[N, D]`` file, or ``"expert"`` (the expert's own penultimate activations).
* :func:`convnet_config` -- whether upstream's network computes exactly the engine's ConvNet, so its
  parameters, flattened in ``parameters()`` order (the layout
  :meth:`~tad_plugin.engine.trajectories.TrajectoryStore.export_upstream` writes back), are a trajectory
  the engine's :class:`~tad_plugin.engine.matching.TrajectoryMatcher` can match.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..engine.convnet import ConvNet, ConvNetConfig, flatten, load_flat
from ..files import torch_load

__all__ = ["PixelMap", "Embedding", "raw_images", "resolve_embedding", "convnet_config", "EXPERT_FEATURES"]

log = logging.getLogger("tad_plugin.upstream")

#: ``tad.features`` value selecting the expert's own penultimate activations (chunk-mean anchors).
EXPERT_FEATURES = "expert"


class PixelMap:
    """Upstream model-input images float [M, C, H, W] -> [0, 1] pixels (clamped), on the input's device.

    Args:
        zca: upstream's fitted kornia ``ZCAWhitening`` (anything with ``inverse_transform``); wins over
            ``mean`` / ``std``.
        mean, std: per-channel statistics upstream normalised with (``get_dataset``'s 5th and 6th values).
    """

    def __init__(self, zca: Any = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        if zca is not None and not callable(getattr(zca, "inverse_transform", None)):
            raise TypeError(f"upstream's ZCA ({type(zca).__name__}) has no inverse_transform; fit it with "
                            f"compute_inv=True, as upstream's get_dataset does")
        self.zca = zca
        self.mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float32).flatten()
        self.std = None if std is None else torch.as_tensor(std, dtype=torch.float32).flatten()

    @classmethod
    def from_get_dataset(cls, returned: Sequence[Any], args: Any) -> PixelMap:
        """From ``get_dataset``'s return values and its ``args`` (``args.zca_trans`` under ``--zca``)."""
        zca = getattr(args, "zca_trans", None) if getattr(args, "zca", True) else None
        return cls(zca=zca, mean=returned[4], std=returned[5])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.zca is not None:
            where = getattr(self.zca, "mean_vector", x).device  # kornia keeps its matrices where it was fitted
            return self.zca.inverse_transform(x.float().to(where)).to(x.device).clamp(0.0, 1.0)
        if self.mean is None or self.std is None:
            raise ValueError("upstream's get_dataset returned neither a ZCA (args.zca_trans) nor mean/std, so "
                             "distilled anchors cannot be mapped back to pixels; pass tad.features=expert")
        view = (1, -1, 1, 1)
        return (x.float() * self.std.to(x.device).view(view) + self.mean.to(x.device).view(view)).clamp(0.0, 1.0)


def raw_images(dst_train: Any, to_unit: Callable[[torch.Tensor], torch.Tensor], chunk: int = 4096) -> torch.Tensor:
    """The images of upstream's ``dst_train`` as uint8 [N, C, H, W], in its item order.

    A torchvision dataset's uint8 ``.data`` (CIFAR's [N, H, W, C], grey [N, H, W]) is used as it is;
    otherwise the model-input images (upstream's ``TensorDataset.images`` under ZCA, else the items)
    are mapped back with ``to_unit`` and rounded to 0..255.
    """
    n = len(dst_train)
    data = getattr(dst_train, "data", None)
    if data is not None and len(data) == n:
        t = torch.as_tensor(np.asarray(data))
        if t.dtype == torch.uint8 and t.dim() == 3:
            return t.unsqueeze(1)
        if t.dtype == torch.uint8 and t.dim() == 4:
            return t.permute(0, 3, 1, 2).contiguous() if t.shape[-1] in (1, 3) else t
    images = getattr(dst_train, "images", None)
    out = []
    for start in range(0, n, chunk):
        if isinstance(images, torch.Tensor) and len(images) == n:
            x = images[start:start + chunk]
        else:
            x = torch.stack([torch.as_tensor(dst_train[i][0]) for i in range(start, min(n, start + chunk))])
        out.append(to_unit(x.float()).mul(255).round().to(torch.uint8).cpu())
    return torch.cat(out)


@dataclass
class Embedding:
    """What the wrapped inner loop embeds with.

    Attributes:
        features: float [N, D], fixed features of the training samples; None = the expert's own
            penultimate activations.
        embed: [0, 1] images [M, C, H, W] -> features [M, D], the extractor that made ``features``; None =
            no image embedder, so the anchors are chunk means of trusted features (the simplification).
        to_unit: upstream model input -> [0, 1] pixels, for the distilled anchors (None without ``embed``).
    """

    features: torch.Tensor | None = None
    embed: Callable[[torch.Tensor], torch.Tensor] | None = None
    to_unit: Callable[[torch.Tensor], torch.Tensor] | None = None


def resolve_embedding(choice: str | None, dataset: str, dst_train: Any, to_unit: PixelMap) -> Embedding:
    """``tad.features`` of a wrapped buffer run (see the module docstring).

    Args:
        choice: ``"expert"``; a ``.pt`` file holding a float tensor [N, D] (train order); a feature
            extractor file (``tad features train``); None = the extractor at
            ``default_extractor_path(dataset.lower())`` if that file exists, else ``"expert"`` with a
            logged warning.
        dataset: upstream's dataset name (``CIFAR10`` -> ``cifar10.pt``).
        dst_train: upstream's train set (N items).
        to_unit: the inverse of upstream's input transform.

    Raises:
        ValueError: a feature file of another length; ExtractorFileError: an unreadable extractor file.
    """
    from ..features import default_extractor_path, load_extractor

    if choice == EXPERT_FEATURES:
        return Embedding()
    if choice is None:
        path = default_extractor_path(dataset.lower())
        if not path.is_file():
            log.warning("tad wrap: no feature extractor at %s: the inner loop falls back to the expert's own "
                        "penultimate activations and chunk-mean anchors (not the paper's distilled anchors). "
                        "Train one with `tad features train --dataset %s --out %s`, or pass "
                        "--set tad.features=PATH (or =expert to silence this)", path, dataset.lower(), path)
            return Embedding()
    else:
        path = Path(choice).expanduser()
        if path.is_file():
            try:
                blob = torch_load(path)
            except ValueError as exc:
                raise ValueError(f"cannot read tad.features {path}: {exc}; give a `tad features train` file or "
                                 f"a float [N, D] tensor saved with torch.save") from exc
            if isinstance(blob, torch.Tensor):
                if blob.dim() != 2 or blob.shape[0] != len(dst_train) or not blob.is_floating_point():
                    raise ValueError(f"tad.features {path} must hold a float tensor [N={len(dst_train)}, D], got "
                                     f"{blob.dtype} {tuple(blob.shape)}")
                return Embedding(features=blob.float())
    extractor = load_extractor(path, device="cuda" if torch.cuda.is_available() else "cpu")
    print(f"tad wrap: embedding the {len(dst_train)} training images with the extractor {path}", flush=True)
    features = extractor.embed(raw_images(dst_train, to_unit)).cpu()
    return Embedding(features=features, embed=extractor.embed, to_unit=to_unit)


def convnet_config(net: nn.Module, images: torch.Tensor) -> tuple[ConvNetConfig | None, str]:
    """The engine's :class:`ConvNetConfig` of upstream's ``net`` when it is that network, else ``(None, why)``.

    ``net`` qualifies when its parameters have the engine's shapes in ``parameters()`` order, it holds no
    buffers (no batch norm), and the engine's ConvNet loaded with its flattened parameters gives the same
    logits on ``images[:8]`` (model-input float [B, C, H, W]): upstream's ConvNet (instance norm, ReLU,
    average pooling; any width and depth) does, its other nets and norms do not. ``net``'s mode is kept.
    """
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    heads = [m for m in net.modules() if isinstance(m, nn.Linear)]
    name = type(net).__name__
    if not convs or len(heads) != 1:
        return None, f"{name} is not upstream's ConvNet (convolutions followed by one linear layer)"
    try:
        cfg = ConvNetConfig(convs[0].in_channels, heads[0].out_features, (images.shape[-2], images.shape[-1]),
                            width=convs[0].out_channels, depth=len(convs))
    except ValueError as exc:
        return None, f"{name} is not the engine's ConvNet ({exc})"
    if [tuple(p.shape) for p in net.parameters()] != list(cfg.param_shapes) or any(True for _ in net.buffers()):
        return None, (f"{name}'s parameters or buffers differ from the engine's ConvNet-D{cfg.depth} (width "
                      f"{cfg.width}, instance norm): another norm or architecture")
    device = next(net.parameters()).device
    x = images[:8].float().to(device)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            theirs = net(x).float()
            ours = load_flat(ConvNet(cfg).to(device), flatten(net))(x)
    finally:
        net.train(was_training)
    if theirs.shape != ours.shape or not torch.allclose(theirs, ours, rtol=1e-3, atol=1e-3):
        return None, (f"{name} computes another function than the engine's ConvNet-D{cfg.depth} (width "
                      f"{cfg.width}): another norm, activation, pooling or padding")
    return cfg, ""

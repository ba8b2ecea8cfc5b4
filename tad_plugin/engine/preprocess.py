"""uint8 images -> the float model input of the trajectory-matching code bases, and back.

Two modes, as upstream's ``get_dataset``:

* ``"normalize"`` (upstream without ``--zca``): ``x / 255`` then per-channel ``(x - mean) / std``.
  CIFAR-10/100 use upstream's constants mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010);
  other datasets use the per-channel mean/std of their training images.
* ``"zca"`` (upstream ``--zca``): ``x / 255`` then :class:`~tad_plugin.engine.zca.ZCA` (eps 0.1)
  fitted on all training images.

:meth:`Preprocessor.to_unit` is the inverse, clamped to [0, 1]: it hands distilled images (which
live in model-input space) to viewers and to the SSL feature extractor. A :meth:`state_dict` makes
expert training, distillation and evaluation share exactly one transform.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..data import channel_stats
from .zca import ZCA

if TYPE_CHECKING:
    from ..data import ImageDataset

__all__ = ["Preprocessor", "CIFAR_MEAN", "CIFAR_STD", "MODES"]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
MODES = ("normalize", "zca")


class Preprocessor:
    """uint8 [..., C, H, W] -> float model input; see the module docstring for the two modes.

    Args:
        mode: ``"normalize"`` or ``"zca"``.
        mean, std: per-channel statistics of x / 255 (``"normalize"`` only), float [C].
        zca: a fitted :class:`ZCA` (``"zca"`` only).
    """

    def __init__(self, mode: str, mean: Tensor | None = None, std: Tensor | None = None,
                 zca: ZCA | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown preprocessing mode {mode!r}; use one of {MODES}")
        if mode == "normalize":
            if mean is None or std is None or mean.shape != std.shape or mean.dim() != 1:
                raise ValueError("mode 'normalize' needs per-channel mean and std tensors [C] of equal shape")
            if bool((std <= 0).any()):
                raise ValueError(f"std must be > 0 in every channel, got {std.tolist()}")
        if mode == "zca" and (zca is None or not zca.fitted):
            raise ValueError("mode 'zca' needs a fitted ZCA (use Preprocessor.for_dataset(ds, zca=True))")
        self.mode = mode
        self.mean = None if mean is None else mean.float()
        self.std = None if std is None else std.float()
        self.zca = zca

    @classmethod
    def for_dataset(cls, ds: ImageDataset, zca: bool = False, device: torch.device | str | None = None
                    ) -> Preprocessor:
        """The upstream transform for ``ds`` (ZCA fitted on ``device``, then kept there)."""
        images = ds.train_images
        if zca:
            dev = torch.device(device) if device is not None else images.device
            return cls("zca", zca=ZCA(0.1).fit(images.to(dev).float().div_(255)))
        if ds.name.lower().replace("-", "").replace("_", "") in ("cifar10", "cifar100") and ds.channels == 3:
            mean, std = torch.tensor(CIFAR_MEAN), torch.tensor(CIFAR_STD)
        else:
            mean, std = channel_stats(images)
        return cls("normalize", mean=mean, std=std).to(device) if device is not None else cls(
            "normalize", mean=mean, std=std)

    @property
    def channels(self) -> int:
        return int(self.mean.numel()) if self.mean is not None else int(self.zca.shape[0])  # type: ignore[index,union-attr]

    def to(self, device: torch.device | str) -> Preprocessor:
        """Move the statistics / ZCA matrices to ``device`` (in place); returns self."""
        if self.mean is not None:
            self.mean, self.std = self.mean.to(device), self.std.to(device)  # type: ignore[union-attr]
        if self.zca is not None:
            self.zca.to(device)
        return self

    def __call__(self, x: Tensor) -> Tensor:
        """uint8 [N, C, H, W] -> float32 [N, C, H, W] model input on x's device."""
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"Preprocessor expects uint8 images [N, C, H, W], got {x.dtype} {tuple(x.shape)}")
        if x.shape[1] != self.channels:
            raise ValueError(f"Preprocessor was built for {self.channels} channels, got {x.shape[1]}")
        f = x.float().div_(255)
        if self.mode == "zca":
            return self.zca.transform(f)  # type: ignore[union-attr]
        m = self.mean.to(x.device).view(1, -1, 1, 1)  # type: ignore[union-attr]
        s = self.std.to(x.device).view(1, -1, 1, 1)  # type: ignore[union-attr]
        return f.sub_(m).div_(s)

    def to_unit(self, x: Tensor) -> Tensor:
        """Model-input float [N, C, H, W] -> float images in [0, 1] (the inverse, clamped)."""
        if not x.is_floating_point() or x.dim() != 4:
            raise ValueError(f"to_unit expects float images [N, C, H, W], got {x.dtype} {tuple(x.shape)}")
        if self.mode == "zca":
            f = self.zca.inverse(x)  # type: ignore[union-attr]
        else:
            f = x * self.std.to(x.device).view(1, -1, 1, 1) + self.mean.to(x.device).view(1, -1, 1, 1)  # type: ignore[union-attr]
        return f.clamp(0.0, 1.0)

    def state_dict(self) -> dict[str, Any]:
        """CPU tensors, strings and numbers only (``torch.load(weights_only=True)`` loads it)."""
        return {"mode": self.mode,
                "mean": None if self.mean is None else self.mean.cpu(),
                "std": None if self.std is None else self.std.cpu(),
                "zca": None if self.zca is None else self.zca.state_dict()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Preprocessor:
        try:
            zca = None if state["zca"] is None else ZCA.from_state_dict(state["zca"])
            return cls(state["mode"], mean=state["mean"], std=state["std"], zca=zca)
        except KeyError as exc:
            raise ValueError(f"not a Preprocessor state_dict (missing {exc}); save one with "
                             f"Preprocessor.state_dict()") from exc

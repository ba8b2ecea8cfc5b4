"""Differentiable Siamese Augmentation (DSA), batched and seedable, as the trajectory-matching papers use it.

Faithful to upstream ``DiffAugment`` with ``ParamDiffAug`` defaults in aug_mode ``'S'``: each call
draws ONE operation type uniformly from the strategy (``color_crop_cutout_flip_scale_rotate`` by
default) and applies it with independent random parameters per sample:

==========  =====================================================================================
color       brightness ``x + (u - 0.5) * 1.0``, then saturation ``(x - mean_c) * (2u) + mean_c``
            (mean over channels), then contrast ``(x - mean) * (u + 0.5) + mean`` (mean over C, H, W)
crop        integer translation by ``t ~ U{-s..s}`` rows and columns, ``s = int(0.125 * size + 0.5)``,
            zeros shifted in
cutout      a ``int(0.5 * size + 0.5)`` square zeroed, centre offset ``~ U{0..size - (size mod 2 == 1)}``
            (clipped at the border)
flip        horizontal flip with probability 0.5
scale       ``affine_grid`` with diag(sx, sy), ``s ~ U(1/1.2, 1.2)``, bilinear, zero padding,
            ``align_corners=True``
rotate      ``affine_grid`` rotation by ``U(-15, 15)`` degrees, bilinear, zero padding
==========  =====================================================================================

Everything is differentiable w.r.t. the input images (the distilled images are learned through it).
The operation type is drawn on a CPU generator and the parameters on a generator on the images'
device, so a call makes no host-device synchronisation. ``groups=E`` treats the batch as E stacked
independent batches (E experts or evaluation nets trained together) and draws one operation per
group, exactly as E separate upstream runs would.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DSA", "DEFAULT_STRATEGY", "OPS"]

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"

# ParamDiffAug defaults.
_FLIP_P = 0.5
_SCALE = 1.2
_ROTATE_DEG = 15.0
_CROP = 0.125
_CUTOUT = 0.5
_BRIGHTNESS = 1.0
_SATURATION = 2.0
_CONTRAST = 0.5


def _rand(x: Tensor, g: torch.Generator) -> Tensor:
    """One U(0, 1) per sample, shaped [B, 1, 1, 1] for broadcasting."""
    return torch.rand(x.shape[0], 1, 1, 1, generator=g, device=x.device, dtype=x.dtype)


def _color(x: Tensor, g: torch.Generator) -> Tensor:
    x = x + (_rand(x, g) - 0.5) * _BRIGHTNESS
    m = x.mean(dim=1, keepdim=True)
    x = (x - m) * (_rand(x, g) * _SATURATION) + m
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * (_rand(x, g) + _CONTRAST) + m


def _crop(x: Tensor, g: torch.Generator) -> Tensor:
    b, _, h, w = x.shape
    sh, sw = int(h * _CROP + 0.5), int(w * _CROP + 0.5)
    ty = torch.randint(-sh, sh + 1, (b, 1), generator=g, device=x.device)
    tx = torch.randint(-sw, sw + 1, (b, 1), generator=g, device=x.device)
    xp = F.pad(x, (sw, sw, sh, sh))  # zeros around; output pixel (i, j) reads input (i + ty, j + tx)
    rows = (torch.arange(h, device=x.device) + sh + ty)  # [B, H]
    cols = (torch.arange(w, device=x.device) + sw + tx)  # [B, W]
    c = x.shape[1]
    xp = xp.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * sw))
    return xp.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def _cutout(x: Tensor, g: torch.Generator) -> Tensor:
    b, _, h, w = x.shape
    ch, cw = int(h * _CUTOUT + 0.5), int(w * _CUTOUT + 0.5)
    oy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), generator=g, device=x.device) - ch // 2
    ox = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), generator=g, device=x.device) - cw // 2
    r = torch.arange(h, device=x.device).view(1, h, 1)
    c = torch.arange(w, device=x.device).view(1, 1, w)
    hole = (r >= oy) & (r < oy + ch) & (c >= ox) & (c < ox + cw)
    return x * (~hole).unsqueeze(1).to(x.dtype)


def _flip(x: Tensor, g: torch.Generator) -> Tensor:
    return torch.where(_rand(x, g) < _FLIP_P, x.flip(3), x)


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def _scale(x: Tensor, g: torch.Generator) -> Tensor:
    b = x.shape[0]
    s = torch.rand(2, b, generator=g, device=x.device, dtype=x.dtype) * (_SCALE - 1.0 / _SCALE) + 1.0 / _SCALE
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = s[0]
    theta[:, 1, 1] = s[1]
    return _affine(x, theta)


def _rotate(x: Tensor, g: torch.Generator) -> Tensor:
    b = x.shape[0]
    a = (torch.rand(b, generator=g, device=x.device, dtype=x.dtype) - 0.5) * (2 * _ROTATE_DEG / 180 * math.pi)
    cos, sin = torch.cos(a), torch.sin(a)
    zero = torch.zeros_like(a)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    return _affine(x, theta)


OPS: dict[str, Callable[[Tensor, torch.Generator], Tensor]] = {
    "color": _color, "crop": _crop, "cutout": _cutout, "flip": _flip, "scale": _scale, "rotate": _rotate,
}
"""The operation types a strategy string may name (joined by ``_``)."""


class DSA:
    """Seedable, batched DSA augmentation (upstream ``DiffAugment``, aug_mode 'S').

    Args:
        strategy: operation names joined by ``_`` (see :data:`OPS`); ``"none"`` or ``""`` disables it.
        seed: seeds both generators (op choice on the CPU, parameters on the device); None draws a
            fresh random seed.
        device: device of the parameter generator; None means "the device of the first batch".
    """

    def __init__(self, strategy: str = DEFAULT_STRATEGY, seed: int | None = None,
                 device: torch.device | str | None = None) -> None:
        names = [] if strategy in ("", "none", "None") else strategy.split("_")
        unknown = [n for n in names if n not in OPS]
        if unknown:
            raise ValueError(f"unknown DSA operation(s) {unknown} in strategy {strategy!r}; "
                             f"choose from {sorted(OPS)} joined by '_'")
        self.strategy = strategy
        self.ops = [OPS[n] for n in names]
        self.seed = int(torch.randint(0, 2**62, (1,)).item()) if seed is None else int(seed)
        self._cpu = torch.Generator().manual_seed(self.seed)
        self._dev: torch.Generator | None = None
        if device is not None:
            self._device_generator(torch.device(device))

    def _device_generator(self, device: torch.device) -> torch.Generator:
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if self._dev is None:
            self._dev = torch.Generator(device=device).manual_seed(self.seed + 1)
        elif self._dev.device != device:
            raise ValueError(f"this DSA draws its parameters on {self._dev.device}, but the images are on "
                             f"{device}; use one DSA per device")
        return self._dev

    def __call__(self, x: Tensor, groups: int = 1) -> Tensor:
        """Augment ``x``: float [B, C, H, W] -> float [B, C, H, W] (a new tensor; differentiable).

        ``groups`` = E > 1: x is E stacked batches of B / E images each; each draws its own operation.
        """
        if x.dim() != 4 or not x.is_floating_point():
            raise ValueError(f"DSA expects float images [B, C, H, W], got {x.dtype} {tuple(x.shape)}")
        if groups < 1 or x.shape[0] % groups:
            raise ValueError(f"groups={groups} must divide the batch size {x.shape[0]}")
        if not self.ops:
            return x
        g = self._device_generator(x.device)
        choice = torch.randint(0, len(self.ops), (groups,), generator=self._cpu).tolist()
        kinds = sorted(set(choice))
        if len(kinds) == 1:
            return self.ops[kinds[0]](x, g)
        xs = x.view(groups, x.shape[0] // groups, *x.shape[1:])
        out = torch.empty_like(xs)
        for k in kinds:
            idx = torch.tensor([i for i, c in enumerate(choice) if c == k])
            if x.device.type == "cuda":  # a pageable host->device copy would synchronise the host
                idx = idx.pin_memory().to(x.device, non_blocking=True)
            sub = xs.index_select(0, idx)
            out.index_copy_(0, idx, self.ops[k](sub.flatten(0, 1), g).reshape(sub.shape))
        return out.view_as(x)

    def state_dict(self) -> dict[str, Any]:
        """Strategy, seed and both generator states (for resuming a run bit-for-bit)."""
        return {"strategy": self.strategy, "seed": self.seed, "cpu_state": self._cpu.get_state(),
                "device_state": None if self._dev is None else self._dev.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the device generator is restored once its device is known)."""
        if state["strategy"] != self.strategy:
            raise ValueError(f"state is for strategy {state['strategy']!r}, this DSA uses {self.strategy!r}")
        self.seed = int(state["seed"])
        self._cpu.set_state(state["cpu_state"])
        if state["device_state"] is not None:
            if self._dev is None:
                raise ValueError("create the DSA with device=... before loading a state with a device generator")
            self._dev.set_state(state["device_state"])

"""SimCLR's CIFAR augmentations, done on the GPU for a whole batch with independent random draws per sample.

Every sample gets its own crop, flip, colour-jitter factors and order, and grey-scale decision (torchvision's
transforms, applied to a batched tensor, would reuse one draw for the whole batch). The crop and the
flip are one affine resampling (``affine_grid`` + ``grid_sample``); the colour operations are
vectorised tensor arithmetic. Nothing here reads a value back to the host, so a call never stalls the
GPU. There is no Gaussian blur: at 32 px it hurts (lightly's and dkobak's CIFAR recipes drop it).

The random draws (a few numbers per sample, :func:`draw`) and the pixel work (:func:`render`, built from
the six pure operations of :class:`AugmentOps`) are kept apart: :func:`compiled_render` hands the whole
pixel work of a view to ``torch.compile``, so that its ~200 element-wise kernels (the hue rotation alone is
~40, and the per-sample jitter order runs every operation in each of four slots) become a few fused ones;
eager and compiled give the same views for the same draws.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["AugmentConfig", "AugmentDraws", "AugmentOps", "EAGER_OPS", "Renderer", "augment_batch", "compiled_render",
           "draw", "grayscale", "render", "to_unit_float"]

_GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class AugmentConfig:
    """Parameters of the SimCLR augmentation (defaults: the standard CIFAR recipe without blur).

    Attributes:
        crop_scale: RandomResizedCrop's range of crop area as a fraction of the image area.
        crop_ratio: range of crop aspect ratios (width / height), sampled log-uniformly.
        flip_p: probability of a horizontal flip.
        jitter_p: probability that a sample gets colour jitter at all.
        brightness, contrast, saturation: jitter strengths s; factors are drawn from U(1 - s, 1 + s).
        hue: hue shift drawn from U(-hue, hue) (fraction of the colour circle, at most 0.5).
        grayscale_p: probability of converting a sample to grey (kept with 3 channels).
    """

    # torchvision's and SimCLR's (0.08, 1)
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale (the crop's smallest and largest area share; --crop-min-scale sets the "
                             f"smallest) must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio}")
        for name in ("flip_p", "jitter_p", "grayscale_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a probability and must lie in [0, 1], got {getattr(self, name)}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue must lie in [0, 0.5], got {self.hue}")

    def to_dict(self) -> dict[str, object]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (0..255) -> float32 in [0, 1]; float images are returned as float32 unchanged."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """Luma of float RGB images [B, 3, H, W] -> [B, 1, H, W] (grey images [B, 1, H, W] pass through)."""
    if images.shape[1] == 1:
        return images
    w = images.new_tensor(_GREY_WEIGHTS).view(1, 3, 1, 1)
    return (images * w).sum(dim=1, keepdim=True)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of RGB images in [0, 1] by ``shift`` [B, 1, 1, 1] (fraction of a turn), via HSV."""
    r, g, b = x.unbind(dim=1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(maxc == r, ((g - b) / safe) % 6,
                      torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(delta > 0, hue / 6, torch.zeros_like(hue))
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    hue = (hue + shift.squeeze(1)) % 1.0
    # HSV -> RGB, branch-free: channel n takes v - v*s*clamp(min(k, 4 - k), 0, 1) with k = (n + 6h) mod 6.
    n = x.new_tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)
    k = (n + 6 * hue.unsqueeze(1)) % 6
    weight = torch.minimum(k, 4 - k).clamp(0, 1)
    v, s = maxc.unsqueeze(1), sat.unsqueeze(1)
    return v - v * s * weight


class AugmentOps(NamedTuple):
    """The pixel work of one view, as pure functions of float images [B, C, H, W] and per-sample
    parameters (``[B, 1, 1, 1]`` factors, ``[B, 2, 3]`` affine matrices, a ``[B]`` bool mask)."""

    resample: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    brightness: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    contrast: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    saturation: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    hue: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    grey: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _resample(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _brightness(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (x * b).clamp(0, 1)


def _contrast(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return (c * x + (1 - c) * grayscale(x).mean(dim=(2, 3), keepdim=True)).clamp(0, 1)


def _saturation(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return (s * x + (1 - s) * grayscale(x)).clamp(0, 1)


def _grey(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)


#: The operations run as they are (no compiler needed).
EAGER_OPS = AugmentOps(_resample, _brightness, _contrast, _saturation, _shift_hue, _grey)


class AugmentDraws(NamedTuple):
    """The random draws of one view per sample (a few numbers each; ``None``: the step is off).

    Attributes:
        theta: float [B, 2, 3] affine matrices of the crop + flip.
        brightness, contrast, saturation: float [B, 1, 1, 1] jitter factors (1 where a sample has no jitter).
        hue: float [B, 1, 1, 1] hue shifts (0 where a sample has no jitter); ``None`` for grey images or hue 0.
        order: long [B, 4], each row a permutation of (0 brightness, 1 contrast, 2 saturation, 3 hue): the
            sample's colour-jitter order; ``None`` when jitter is off.
        grey: bool [B], which samples turn grey; ``None`` for grey images or ``grayscale_p`` 0.
    """

    theta: torch.Tensor
    brightness: torch.Tensor | None
    contrast: torch.Tensor | None
    saturation: torch.Tensor | None
    hue: torch.Tensor | None
    order: torch.Tensor | None
    grey: torch.Tensor | None


def draw(x: torch.Tensor, config: AugmentConfig = AugmentConfig(),
         generator: torch.Generator | None = None) -> AugmentDraws:
    """Every sample's random draws for one view of float images ``x`` [B, C, H, W] (on x's device; no host
    sync)."""
    theta = _crop_flip_theta(x, config, generator)
    rgb = x.shape[1] == 3
    b = c = s = shift = order = None
    if config.jitter_p > 0:
        on = (_rand(x, generator) < config.jitter_p).float()

        def factor(strength: float) -> torch.Tensor:
            f = _uniform(x, 1 - strength, 1 + strength, generator)
            return (1 + on * (f - 1)).view(-1, 1, 1, 1)

        b, c = factor(config.brightness), factor(config.contrast)
        s = factor(config.saturation) if rgb else None
        if rgb and config.hue > 0:
            shift = (on * _uniform(x, -config.hue, config.hue, generator)).view(-1, 1, 1, 1)
        order = _rand(x, generator, 4).argsort(dim=1)
    grey = _rand(x, generator) < config.grayscale_p if rgb and config.grayscale_p > 0 else None
    return AugmentDraws(theta, b, c, s, shift, order, grey)


def render(x: torch.Tensor, draws: AugmentDraws, ops: AugmentOps = EAGER_OPS) -> torch.Tensor:
    """The pixel work of one view: crop + flip, colour jitter in each sample's own order, grey-scale.

    A pure function of float images ``x`` [B, C, H, W] in [0, 1] and their :class:`AugmentDraws`; returns
    float [B, C, H, W] in [0, 1]. :func:`compiled_render` is this function under ``torch.compile``.
    """
    x = ops.resample(x, draws.theta)
    if draws.order is not None:
        def identity(t: torch.Tensor) -> torch.Tensor:
            return t

        brightness, contrast = draws.brightness, draws.contrast
        assert brightness is not None and contrast is not None  # drawn with the order (see draw)
        ops_of = (lambda t: ops.brightness(t, brightness), lambda t: ops.contrast(t, contrast),
                  (lambda t: ops.saturation(t, draws.saturation)) if draws.saturation is not None else identity,
                  (lambda t: ops.hue(t, draws.hue)) if draws.hue is not None else identity)
        # Slot k applies all four operations to the batch and keeps, per sample, the one its order puts in
        # slot k: four times the pixel work of one shared order, which left every image of a batch with the
        # same clamping pattern.
        # Compiled, the four slots are a few fused kernels: the arithmetic is cheap, kernel launches are not.
        for slot in range(4):
            pick = draws.order[:, slot].view(-1, 1, 1, 1)
            out = [op(x) for op in ops_of]
            x = torch.where(pick == 0, out[0], torch.where(pick == 1, out[1], torch.where(pick == 2, out[2], out[3])))
    if draws.grey is not None:
        x = ops.grey(x, draws.grey)
    return x


Renderer = Callable[[torch.Tensor, AugmentDraws], torch.Tensor]


@functools.cache
def compiled_render() -> Renderer:
    """:func:`render` under ``torch.compile``: one graph for the whole view (compiled at its first call, once
    per input shape and per set of steps that are on; on a CPU this needs a C++ compiler, as inductor does).
    Gives the same views as :func:`render` for the same draws."""
    return torch.compile(render, dynamic=False)


def augment_batch(images: torch.Tensor, config: AugmentConfig = AugmentConfig(),
                  generator: torch.Generator | None = None, renderer: Renderer = render) -> torch.Tensor:
    """One random SimCLR view of every image.

    Args:
        images: uint8 [B, C, H, W] (0..255) or float [B, C, H, W] in [0, 1], C in {1, 3}, on any device.
        config: augmentation parameters.
        generator: random generator on ``images.device`` (``None``: the global one).
        renderer: the pixel work: :func:`render`, or :func:`compiled_render` for fused kernels (the same
            views from the same draws).

    Returns:
        float32 [B, C, H, W] in [0, 1] on ``images.device``. Grey images (C = 1) get crop, flip,
        brightness and contrast only.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"augment_batch expects images [B, C, H, W] with C in (1, 3), got {tuple(images.shape)}")
    x = to_unit_float(images)
    return renderer(x, draw(x, config, generator))


def _rand(x: torch.Tensor, generator: torch.Generator | None, *extra: int) -> torch.Tensor:
    return torch.rand(x.shape[0], *extra, device=x.device, generator=generator)


def _uniform(x: torch.Tensor, lo: float, hi: float, generator: torch.Generator | None) -> torch.Tensor:
    return lo + (hi - lo) * _rand(x, generator)


def _crop_flip_theta(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator | None) -> torch.Tensor:
    """The affine matrices [B, 2, 3] of a per-sample RandomResizedCrop + horizontal flip (resampled
    bilinearly back to the input size by ``AugmentOps.resample``).

    Like torchvision, up to 10 (area, ratio) draws are tried per sample and the first crop that fits
    inside the image is used; when none fits, the crop is clipped to the image.
    """
    attempts = 10
    h_img, w_img = x.shape[-2:]
    area = cfg.crop_scale[0] + (cfg.crop_scale[1] - cfg.crop_scale[0]) * _rand(x, gen, attempts)
    log_lo, log_hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * _rand(x, gen, attempts))
    # Crop width/height as fractions of the image width/height (ratio is in pixels: w_px / h_px).
    aspect = w_img / h_img
    w = torch.sqrt(area * ratio / aspect)
    h = torch.sqrt(area / ratio * aspect)
    fits = (w <= 1) & (h <= 1)
    first = fits.float().argmax(dim=1, keepdim=True)  # first fitting attempt (0 when none fits)
    w = w.gather(1, first).squeeze(1).clamp(max=1.0)
    h = h.gather(1, first).squeeze(1).clamp(max=1.0)
    cx = w / 2 + (1 - w) * _rand(x, gen)  # crop centre, fraction of the image
    cy = h / 2 + (1 - h) * _rand(x, gen)
    flip = torch.where(_rand(x, gen) < cfg.flip_p, -1.0, 1.0)
    theta = torch.zeros(x.shape[0], 2, 3, device=x.device)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = 2 * cx - 1
    theta[:, 1, 1] = h
    theta[:, 1, 2] = 2 * cy - 1
    return theta

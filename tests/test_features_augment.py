"""GPU-style batch augmentation: per-sample randomness, shapes, ranges, exact geometry and colour maths."""

import functools

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from tad_plugin.features.augment import AugmentConfig, _shift_hue, augment_batch, compiled_render

IDENTITY = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)


def _images(n=6, c=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_dtype_and_range(channels):
    x = _images(c=channels)
    for images in (x, x.float() / 255):
        out = augment_batch(images, generator=torch.Generator().manual_seed(1))
        assert out.shape == x.shape and out.dtype == torch.float32
        assert out.min() >= 0 and out.max() <= 1


def test_each_sample_gets_its_own_draw():
    same = _images(n=1).expand(32, -1, -1, -1).contiguous()
    out = augment_batch(same, generator=torch.Generator().manual_seed(0))
    flat = out.flatten(1)
    distinct = torch.cdist(flat, flat) > 1e-3
    assert distinct.fill_diagonal_(True).all(), "two samples of one image got the same augmentation"
    again = augment_batch(same, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(out, again)


def test_seeded_generator_reproduces():
    x = _images()
    a = augment_batch(x, generator=torch.Generator().manual_seed(5))
    b = augment_batch(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_identity_config_returns_the_image():
    x = _images()
    assert torch.allclose(augment_batch(x, IDENTITY), x.float() / 255, atol=1e-5)


def test_flip_mirrors_width():
    x = _images()
    cfg = AugmentConfig(**{**IDENTITY.__dict__, "flip_p": 1.0})
    assert torch.allclose(augment_batch(x, cfg), x.float().flip(-1) / 255, atol=1e-5)


def test_crop_keeps_the_requested_area_share():
    # A horizontal ramp 0..1: a crop a quarter of the area (half the width, ratio 1) spans half the ramp.
    size = 64
    ramp = torch.linspace(0, 1, size).expand(8, 3, size, size).contiguous()
    cfg = AugmentConfig(**{**IDENTITY.__dict__, "crop_scale": (0.25, 0.25)})
    out = augment_batch(ramp, cfg, generator=torch.Generator().manual_seed(0))
    span = out[:, 0, 0, -1] - out[:, 0, 0, 0]
    assert torch.allclose(span, torch.full_like(span, 0.5), atol=0.03)
    assert (out[:, 0, 0, 0] >= -1e-6).all() and (out[:, 0, 0, -1] <= 1 + 1e-6).all()  # inside the image


def test_grayscale_makes_channels_equal():
    cfg = AugmentConfig(**{**IDENTITY.__dict__, "grayscale_p": 1.0})
    out = augment_batch(_images(), cfg)
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])


def test_hue_shift_matches_torchvision():
    x = torch.rand(8, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    shift = torch.linspace(-0.45, 0.45, 8).view(-1, 1, 1, 1)
    ref = torch.stack([TF.adjust_hue(x[i], float(shift[i])) for i in range(8)])
    assert torch.allclose(_shift_hue(x, shift), ref, atol=1e-5)


def test_jitter_changes_colours_per_sample():
    cfg = AugmentConfig(**{**IDENTITY.__dict__, "jitter_p": 1.0})
    same = _images(n=1).expand(8, -1, -1, -1).contiguous()
    out = augment_batch(same, cfg, generator=torch.Generator().manual_seed(0))
    means = out.mean(dim=(2, 3))
    assert torch.cdist(means, means).fill_diagonal_(1).min() > 1e-4


@pytest.mark.parametrize("bad, message", [
    (dict(crop_scale=(0.0, 1.0)), r"--crop-min-scale sets the smallest\) must satisfy 0 < low <= high <= 1"),
    (dict(flip_p=1.5), r"flip_p is a probability and must lie in \[0, 1\], got 1.5"),
    (dict(hue=0.7), r"hue must lie in \[0, 0.5\], got 0.7"),
    (dict(contrast=-0.1), r"contrast must lie in \[0, 1\), got -0.1"),
])
def test_config_rejects_bad_values(bad, message):
    with pytest.raises(ValueError, match=message):
        AugmentConfig(**bad)


def test_rejects_wrong_layout():
    with pytest.raises(ValueError, match="C in"):
        augment_batch(torch.zeros(2, 16, 16, 3, dtype=torch.uint8))


def test_compiled_operations_give_the_same_views_as_eager_ones():
    x = _images()
    eager = augment_batch(x, generator=torch.Generator().manual_seed(3))
    fused = augment_batch(x, generator=torch.Generator().manual_seed(3), renderer=compiled_render())
    assert torch.allclose(fused, eager, atol=1e-5)
    grey = augment_batch(x[:, :1], generator=torch.Generator().manual_seed(4), renderer=compiled_render())
    assert torch.allclose(grey, augment_batch(x[:, :1], generator=torch.Generator().manual_seed(4)), atol=1e-5)


def test_every_sample_draws_its_own_jitter_order():
    """torchvision's ColorJitter shuffles its four operations per image. Tag each operation (x -> 10x + j,
    factors ignored) and read every sample's order back from its pixels."""
    from tad_plugin.features.augment import EAGER_OPS, render

    def tag(j):
        return lambda x, _factor: x * 10 + j
    ops = EAGER_OPS._replace(resample=lambda x, _theta: x, brightness=tag(0), contrast=tag(1), saturation=tag(2),
                             hue=tag(3), grey=lambda x, _mask: x)
    cfg = AugmentConfig(jitter_p=1.0, grayscale_p=0.0)
    out = augment_batch(torch.zeros(480, 3, 4, 4), cfg, torch.Generator().manual_seed(0),
                        functools.partial(render, ops=ops))
    codes = out[:, 0, 0, 0].round().long().tolist()
    orders = [tuple(int(d) for d in f"{code:04d}") for code in codes]
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders)  # each operation exactly once per sample
    assert (out == out[:, :1, :1, :1]).all()  # one order for all pixels of a sample
    counts = torch.bincount(torch.tensor([int("".join(map(str, o))) for o in orders]), minlength=3211)
    used = counts[counts > 0]
    assert len(used) == 24  # all 24 orders occur in 480 samples (a shared order would give 1)
    assert used.max() < 40  # and none dominates (20 expected each)

"""DSA: seeded determinism, differentiability, and each operation's upstream semantics."""

import pytest
import torch

from tad_plugin.engine.dsa import DSA, OPS


def test_seeded_calls_are_deterministic_and_differ_between_seeds():
    x = torch.rand(12, 3, 16, 16)
    a, b, c = DSA(seed=5), DSA(seed=5), DSA(seed=6)
    outs_a = [a(x, groups=3) for _ in range(4)]
    outs_b = [b(x, groups=3) for _ in range(4)]
    assert all(torch.equal(p, q) for p, q in zip(outs_a, outs_b))
    assert not all(torch.equal(p, q) for p, q in zip(outs_a, [c(x, groups=3) for _ in range(4)]))


@pytest.mark.parametrize("op", sorted(OPS))
def test_every_op_is_differentiable(op):
    x = torch.rand(6, 3, 16, 16, requires_grad=True)
    y = DSA(op, seed=0)(x)
    assert y.shape == x.shape
    (g,) = torch.autograd.grad((y * torch.randn_like(y)).sum(), x)
    assert g.abs().sum() > 0


def test_state_dict_resumes_the_random_stream():
    x = torch.rand(4, 3, 8, 8)
    d = DSA(seed=1, device="cpu")
    d(x)
    state = d.state_dict()
    expected = d(x)
    e = DSA(seed=99, device="cpu")
    e.load_state_dict(state)
    assert torch.equal(e(x), expected)


def test_crop_is_an_integer_translation_with_zero_fill():
    x = torch.rand(16, 1, 8, 8) + 1.0  # strictly positive, so zeros mark shifted-in pixels
    y = DSA("crop", seed=2)(x)
    s = 1  # int(8 * 0.125 + 0.5)
    for i in range(16):
        found = False
        for dy in range(-s, s + 1):
            for dx in range(-s, s + 1):
                ref = torch.zeros(8, 8)
                src = x[i, 0, max(dy, 0):8 + min(dy, 0), max(dx, 0):8 + min(dx, 0)]
                ref[max(-dy, 0):8 + min(-dy, 0), max(-dx, 0):8 + min(-dx, 0)] = src
                found |= torch.equal(ref, y[i, 0])
        assert found


def test_cutout_zeroes_one_clipped_half_size_square():
    y = DSA("cutout", seed=3)(torch.ones(32, 2, 8, 8))
    for img in y:
        hole = img[0] == 0
        assert torch.equal(hole, img[1] == 0)
        rows, cols = hole.any(1).nonzero().flatten(), hole.any(0).nonzero().flatten()
        assert 1 <= len(rows) <= 4 and 1 <= len(cols) <= 4  # size int(8 * 0.5 + 0.5) = 4, clipped
        assert hole.sum() == len(rows) * len(cols)  # a rectangle
        assert (len(rows) == 4 or rows[0] == 0 or rows[-1] == 7) and (len(cols) == 4 or cols[0] == 0 or cols[-1] == 7)


def test_flip_scale_rotate_and_color_ranges():
    x = torch.rand(64, 3, 8, 8)
    y = DSA("flip", seed=0)(x)
    flipped = (y == x.flip(3)).flatten(1).all(1)
    assert ((y == x).flatten(1).all(1) | flipped).all() and 10 < flipped.sum() < 54
    ones = torch.ones(64, 1, 9, 9)
    z = DSA("scale", seed=0)(ones)
    assert torch.allclose(z[:, :, 4, 4], torch.ones(64, 1))  # the centre stays, zoom only
    r = DSA("rotate", seed=0)(ones)
    assert torch.allclose(r[:, :, 4, 4], torch.ones(64, 1)) and (r[:, :, 0, 0] < 1).all()
    c = DSA("color", seed=0)(torch.full((256, 3, 4, 4), 0.5))
    shift = c[:, 0, 0, 0] - 0.5  # grey stays grey: only the brightness term moves it, by U(-0.5, 0.5)
    assert shift.min() > -0.5 and shift.max() < 0.5 and shift.std() > 0.2


def test_groups_draw_their_own_ops():
    torch.manual_seed(0)
    x = torch.rand(20 * 4, 3, 8, 8)
    y = DSA(seed=0)(x, groups=20).view(20, 4, 3, 8, 8)
    xs = x.view(20, 4, 3, 8, 8)
    per_group_change = [(y[i] - xs[i]).abs().mean().item() for i in range(20)]
    assert len({round(v, 6) for v in per_group_change}) > 3  # different ops/params per group


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="unknown DSA operation"):
        DSA("color_blur")
    with pytest.raises(ValueError, match="must divide"):
        DSA()(torch.rand(5, 3, 8, 8), groups=2)
    with pytest.raises(ValueError, match="float images"):
        DSA()(torch.zeros(5, 3, 8, 8, dtype=torch.uint8))
    assert torch.equal(DSA("none")(x := torch.rand(2, 1, 4, 4)), x)

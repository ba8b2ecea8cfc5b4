"""ZCA and Preprocessor: kornia's formula, round trips, serialisation, bad input."""

import io

import numpy as np
import pytest
import torch

from tad_plugin.data import channel_stats
from tad_plugin.engine.preprocess import CIFAR_MEAN, Preprocessor
from tad_plugin.engine.zca import ZCA


def _kornia_formula(x: np.ndarray, eps: float):
    """kornia.enhance.zca_mean + linear_transform written out in numpy float64."""
    flat = x.reshape(len(x), -1)
    mu = flat.mean(0, keepdims=True)
    c = flat - mu
    cov = c.T @ c / (len(x) - 1)  # unbiased
    u, s, _ = np.linalg.svd(cov)
    t = u @ (s[:, None] ** -0.5 * u.T) if eps == 0 else u @ ((s[:, None] + eps) ** -0.5 * u.T)
    t_inv = u @ (np.sqrt(s[:, None] + eps) * u.T)
    return mu, t, t_inv


def test_zca_matches_kornia_formula_and_round_trips():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(300, 3, 4, 4, generator=g) * torch.linspace(0.2, 1.0, 48).view(1, 3, 4, 4)
    z = ZCA(0.1).fit(x)
    mu, t, t_inv = _kornia_formula(x.double().numpy(), 0.1)
    y = z.transform(x)
    ref = (x.double().numpy().reshape(300, -1) - mu) @ t
    np.testing.assert_allclose(y.reshape(300, -1).numpy(), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(z.inverse_matrix.numpy(), t_inv, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(z.inverse(y), x, rtol=1e-4, atol=1e-5)


def test_zca_state_dict_and_errors():
    x = torch.rand(50, 1, 3, 3)
    z = ZCA().fit(x)
    buf = io.BytesIO()
    torch.save(z.state_dict(), buf)
    buf.seek(0)
    z2 = ZCA.from_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(z2.transform(x), z.transform(x))
    with pytest.raises(RuntimeError, match="not fitted"):
        ZCA().transform(x)
    with pytest.raises(ValueError, match="fitted on images"):
        z.transform(torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match="not a ZCA state_dict"):
        ZCA.from_state_dict({"eps": 0.1})


class _DS:
    def __init__(self, name, images):
        self.name, self.train_images = name, images
        self.channels = images.shape[1]


@pytest.mark.parametrize("zca", [False, True])
def test_preprocessor_round_trip_and_serialisation(zca):
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (200, 3, 4, 4), dtype=torch.uint8, generator=g)
    p = Preprocessor.for_dataset(_DS("cifar10", images), zca=zca)
    x = p(images)
    assert x.dtype == torch.float32 and x.shape == images.shape
    torch.testing.assert_close(p.to_unit(x), images.float() / 255, rtol=0, atol=1e-4)
    assert p.to_unit(x * 50).min() >= 0 and p.to_unit(x * 50).max() <= 1
    q = Preprocessor.from_state_dict(p.state_dict())
    assert torch.equal(q(images), x)
    if not zca:  # upstream's CIFAR constants, not the data's statistics
        torch.testing.assert_close(x[:, 0], (images[:, 0].float() / 255 - CIFAR_MEAN[0]) / 0.2023)


def test_other_datasets_use_their_own_statistics():
    images = torch.randint(0, 256, (100, 2, 3, 3), dtype=torch.uint8)
    mean, std = channel_stats(images)
    ref = images.double().div(255).transpose(0, 1).reshape(2, -1)
    torch.testing.assert_close(mean, ref.mean(1).float())
    torch.testing.assert_close(std, ref.std(1, unbiased=False).float())
    x = Preprocessor.for_dataset(_DS("mydata", images))(images)
    torch.testing.assert_close(x.transpose(0, 1).reshape(2, -1).mean(1), torch.zeros(2), atol=1e-5, rtol=0)


def test_preprocessor_rejects_bad_input():
    p = Preprocessor("normalize", torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="uint8"):
        p(torch.rand(2, 3, 4, 4))
    with pytest.raises(ValueError, match="3 channels"):
        p(torch.zeros(2, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="unknown preprocessing mode"):
        Preprocessor("whiten")
    with pytest.raises(ValueError, match="fitted ZCA"):
        Preprocessor("zca")

"""ConvNet: the batched functional forward equals the module, parameter order and init match upstream."""

import pytest
import torch

from tad_plugin.engine.convnet import ConvNet, ConvNetConfig, flatten, forward, init_params, load_flat, unflatten


def test_param_count_and_order_match_upstream():
    cfg = ConvNetConfig(3, 10, (32, 32))
    assert cfg.num_params == 320_010  # upstream ConvNet on CIFAR-10
    assert ConvNetConfig(3, 100, (32, 32)).num_params == 504_420
    net = ConvNet(cfg)
    names = [n for n, _ in net.named_parameters()]
    assert names[:4] == ["features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias"]
    assert names[-2:] == ["classifier.weight", "classifier.bias"]
    assert [tuple(p.shape) for p in net.parameters()] == list(cfg.param_shapes)
    assert torch.equal(torch.cat([v.reshape(-1) for v in unflatten(cfg, flatten(net))]), flatten(net))


@pytest.mark.parametrize("e", [1, 3])
def test_functional_forward_equals_module(e):
    torch.manual_seed(0)
    cfg = ConvNetConfig(3, 7, (16, 16), width=8)
    params = init_params(cfg, e)
    x = torch.randn(e, 5, 3, 16, 16)
    out = forward(cfg, params, x)
    ref = torch.stack([load_flat(ConvNet(cfg), params[i])(x[i]) for i in range(e)])
    assert out.shape == (e, 5, 7)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(forward(cfg, params, x, channels_last=True), ref, rtol=1e-5, atol=1e-5)
    shared = forward(cfg, params, x[0])  # one batch for every network
    torch.testing.assert_close(shared, torch.stack([load_flat(ConvNet(cfg), p)(x[0]) for p in params]),
                               rtol=1e-5, atol=1e-5)


def test_forward_is_twice_differentiable():
    cfg = ConvNetConfig(1, 3, (8, 8), width=4)
    params = init_params(cfg, 1).requires_grad_()
    x = torch.randn(1, 6, 1, 8, 8, requires_grad=True)
    loss = forward(cfg, params, x).logsumexp(-1).sum()
    (g,) = torch.autograd.grad(loss, params, create_graph=True)
    (gx,) = torch.autograd.grad(g.pow(2).sum(), x)
    assert gx.abs().sum() > 0


def test_small_images_stop_pooling_at_one_pixel():
    cfg = ConvNetConfig(1, 10, (8, 8), depth=4)
    assert cfg.pools == (True, True, True, False) and cfg.feature_size == (1, 1)
    assert ConvNet(cfg)(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert ConvNetConfig(3, 10, (64, 64)).feature_size == (8, 8)


def test_for_dataset_depths():
    class DS:
        channels, num_classes = 3, 200

        def __init__(self, size):
            self.image_size = (size, size)

    assert ConvNetConfig.for_dataset(DS(32)).depth == 3
    assert ConvNetConfig.for_dataset(DS(8)).depth == 3
    assert ConvNetConfig.for_dataset(DS(64)).depth == 4


def test_init_matches_module_default_distribution():
    cfg = ConvNetConfig(3, 10, (8, 8), width=16, depth=2)
    g = torch.Generator().manual_seed(0)
    ours = unflatten(cfg, init_params(cfg, 200, generator=g))
    theirs = [torch.stack(t) for t in zip(*[list(ConvNet(cfg).parameters()) for _ in range(200)])]
    for a, b in zip(ours, theirs):
        b = b.detach()
        assert a.shape == b.shape
        assert abs(a.std().item() - b.std().item()) < 0.08 * max(b.std().item(), 1e-3) + 1e-6
        assert abs(a.mean().item() - b.mean().item()) < 0.1 * max(b.std().item(), 1e-3) + 1e-6
        assert torch.isclose(a.abs().max(), b.abs().max(), rtol=0.05)


def test_bad_shapes_are_named():
    cfg = ConvNetConfig(3, 10, (32, 32), width=8)
    with pytest.raises(ValueError, match="params must be"):
        forward(cfg, torch.zeros(2, 5), torch.zeros(2, 1, 3, 32, 32))
    with pytest.raises(ValueError, match="x must be"):
        forward(cfg, init_params(cfg, 2), torch.zeros(3, 1, 3, 32, 32))

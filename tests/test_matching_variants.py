"""The matcher's settings for FTD/DATM/ATT: DATM's loss gate and label momentum, and where the EMA
images are evaluated (fresh networks, or upstream's reuse of the networks trained on the raw images)."""

import pytest
import torch

from tad_plugin.engine.convnet import ConvNetConfig, init_params
from tad_plugin.engine.evaluate import Evaluator
from tad_plugin.engine.matching import MatchingConfig, TrajectoryMatcher

NET = ConvNetConfig(1, 2, (8, 8), width=4, depth=2)


def setup(**cfg):
    g = torch.Generator().manual_seed(0)
    start = init_params(NET, 1, generator=g)[0]
    traj = torch.stack([start + 0.01 * i * torch.randn(NET.num_params, generator=g) for i in range(4)])
    images = torch.randn(4, 1, 8, 8, generator=g)
    config = MatchingConfig(**{**dict(iterations=3, syn_steps=2, expert_epochs=1, max_start_epoch=2, lr_img=10.0,
                                      dsa_strategy="none", eval_every=0, checkpoint_every=0, log_every=3), **cfg})
    return config, [traj], images


def test_loss_gate_skips_every_update_above_it_and_counts_them():
    for gate in (0.0, -1.0, float("nan")):  # every iteration gated: the images would never change
        with pytest.raises(ValueError, match="loss_gate must be a finite number > 0 or None"):
            setup(loss_gate=gate)
    config, trajs, images = setup(loss_gate=1e-12)  # no matching loss is that small
    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    m = TrajectoryMatcher(NET, config, trajs, images, labels, progress=False)
    result = m.run()
    assert torch.equal(result.images, images) and torch.equal(result.labels, labels) and m.gated == 3
    assert result.history[-1]["gated"] == 3
    config, trajs, images = setup(loss_gate=1e9, lr_labels=1.0, label_momentum=0.9)
    m = TrajectoryMatcher(NET, config, trajs, images, labels, progress=False)
    result = m.run()
    assert m.gated == 0 and not torch.equal(result.images, images) and not torch.equal(result.labels, labels)
    assert m.opt_labels is not None and m.opt_labels.param_groups[0]["momentum"] == 0.9


class RecordingEvaluator(Evaluator):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.runs = []

    def run(self, images, labels, lr, init=None):
        result, params = super().run(images, labels, lr, init=init)
        self.runs.append((init, params))
        return result, params


def test_ema_images_are_evaluated_from_fresh_nets_unless_upstream_reuse_is_asked_for():
    test_x, test_y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1] * 3)
    for reuse in (False, True):
        config, trajs, images = setup(ema_decay=0.5, ema_eval_reuses_raw_net=reuse)
        ev = RecordingEvaluator(NET, test_x, test_y, num_nets=2, epochs=1, batch_size=4, dsa_strategy="none",
                                progress=False)
        m = TrajectoryMatcher(NET, config, trajs, images, torch.tensor([0, 0, 1, 1]), evaluator=ev, progress=False)
        entry = m.evaluate()
        assert "eval" in entry and "eval_ema" in entry
        (raw_init, raw_params), (ema_init, _) = ev.runs
        assert raw_init is None
        if reuse:  # upstream: the EMA images continue training the nets just trained on the raw images
            assert torch.equal(ema_init, raw_params)
        else:
            assert ema_init is None


def test_train_synthetic_continues_from_given_networks():
    from tad_plugin.engine.evaluate import train_synthetic

    start = init_params(NET, 2, torch.Generator().manual_seed(5))
    images, labels = torch.randn(4, 1, 8, 8), torch.tensor([0, 0, 1, 1])
    out = train_synthetic(NET, images, labels, 1e-9, num_nets=2, epochs=0, batch_size=4, init=start, progress=False)
    torch.testing.assert_close(out, start, rtol=0, atol=1e-6)  # a negligible step away from the given nets
    assert torch.equal(start, init_params(NET, 2, torch.Generator().manual_seed(5)))  # init is not modified
    fresh = train_synthetic(NET, images, labels, 1e-9, num_nets=2, epochs=0, batch_size=4, progress=False,
                            generator=torch.Generator().manual_seed(6))
    assert (fresh - start).abs().max() > 1e-3

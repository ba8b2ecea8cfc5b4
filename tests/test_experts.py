"""Expert training: hook calls and their contracts, the trusted space, resume, SGD, bad input."""

import pytest
import torch

from tad_plugin import Recalibration, TADHooks, TrustSplit, get_plugin_manager, hookimpl
from tad_plugin.engine.config import BufferConfig, ConfigError, TADConfig
from tad_plugin.engine.convnet import ConvNetConfig
from tad_plugin.engine.experts import (
    EpochState,
    ExpertError,
    ExpertTrainer,
    TrustUpdate,
    per_sample_losses,
    recalibrate_experts,
)
from tad_plugin.engine.phases import PHASES_FILE, load_phases
from tad_plugin.engine.preprocess import Preprocessor
from tad_plugin.engine.trajectories import TrajectoryStore
from tad_plugin.trust_loop import Schedule, TrustLoopError

N, M, C = 48, 16, 3
NET = ConvNetConfig(in_channels=1, num_classes=C, image_size=(8, 8), width=4, depth=2)
PRE = Preprocessor("normalize", mean=torch.tensor([0.5]), std=torch.tensor([0.25]))


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (N, 1, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.arange(N) % C
    tx = torch.randint(0, 256, (M, 1, 8, 8), dtype=torch.uint8, generator=g)
    return x, y, tx, torch.arange(M) % C


class Spy:
    """Records what each hook receives; trusts every sample whose label is not 0."""

    def __init__(self):
        self.filter_calls, self.loss_calls, self.recal_calls = [], [], []

    @hookimpl
    def filter_dataset(self, losses, labels, num_classes):
        self.filter_calls.append((losses.dtype, tuple(losses.shape), labels.dtype, tuple(labels.shape),
                                  num_classes, bool(torch.isfinite(losses).all())))
        trusted = labels != 0
        return TrustSplit(trusted=trusted, confidence=trusted.float(), thresholds=torch.full((num_classes,), 0.5))

    @hookimpl
    def expert_loss(self, logits, targets):
        self.loss_calls.append((logits.dtype, tuple(logits.shape), logits.requires_grad, targets.dtype,
                                tuple(targets.shape), set(targets.tolist())))
        return torch.nn.functional.cross_entropy(logits, targets)

    @hookimpl
    def recalibrate(self, features, labels, trusted, anchor_features, anchor_labels, num_classes):
        self.recal_calls.append((tuple(features.shape), labels.dtype, trusted.dtype, tuple(anchor_features.shape),
                                 anchor_labels.dtype, num_classes))
        new = torch.where(trusted, labels, torch.full_like(labels, 2))  # relabel untrusted as class 2
        return Recalibration(labels=new, trusted=torch.ones_like(trusted),
                             reliability=torch.full(labels.shape, float("nan")))


def trainer(spy=None, tad=True, epochs=3, experts_per_group=2, on_epoch=None, **tad_kw):
    hooks = TADHooks(get_plugin_manager(default=spy)) if spy is not None else None
    buf = BufferConfig(num_experts=2, epochs=epochs, batch_size=8, experts_per_group=experts_per_group,
                       eval_batch_size=20)
    return ExpertTrainer(NET, PRE, buf, TADConfig(enabled=tad, **tad_kw), hooks=hooks, on_epoch=on_epoch,
                         progress=False)


def store_at(path, epochs=3):
    return TrajectoryStore.create(path, param_shapes=NET.param_shapes, epochs=epochs, num_train=N, num_classes=C)


def test_hooks_receive_documented_shapes_and_trusted_space_restricts_training(tmp_path):
    spy = Spy()
    store = store_at(tmp_path)
    assert trainer(spy, warmup_epochs=1).train(store, *data()) == [0, 1]
    # per-expert split: one call per expert per division (before epochs 1 and 2)
    assert spy.filter_calls == [(torch.float32, (N,), torch.int64, (N,), C, True)] * 4
    steps_per_epoch = N // 8
    first, later = spy.loss_calls[:steps_per_epoch], spy.loss_calls[steps_per_epoch:]
    for dtype, shape, grad, tdtype, tshape, _ in spy.loss_calls:
        assert (dtype, shape, grad, tdtype, tshape) == (torch.float32, (2 * 8, C), True, torch.int64, (2 * 8,))
    assert any(0 in t for *_, t in first)           # warm-up: the whole training set
    assert all(0 not in t for *_, t in later)       # afterwards only the trusted space (label != 0)
    # with 32 trusted samples an epoch is 4 steps instead of 6
    assert len(later) == 2 * (32 // 8)
    rec = store.load_expert(1)
    assert rec.trusted[0].all() and torch.equal(rec.trusted[1], data()[1] != 0)
    assert torch.isnan(rec.thresholds[0]).all() and (rec.thresholds[1] == 0.5).all()
    assert rec.params.shape == (4, NET.num_params) and rec.test_acc.shape == (3,)


def test_shared_split_calls_filter_once_per_group(tmp_path):
    spy = Spy()
    trainer(spy, warmup_epochs=0, split="shared").train(store_at(tmp_path), *data())
    assert len(spy.filter_calls) == 3  # before epochs 0, 1, 2; one call for both experts
    assert all(0 not in t for *_, t in spy.loss_calls)


def test_no_tad_calls_no_hooks_and_uses_everything(tmp_path):
    spy = Spy()
    store = store_at(tmp_path)
    trainer(spy, tad=False).train(store, *data())
    assert spy.filter_calls == [] and spy.loss_calls == []
    assert store.load_expert(0).trusted is None
    phases = load_phases(store.root / PHASES_FILE)  # no trust loop timed: its page and time line have no TAD part
    assert set(phases) == {"train", "test"} and phases["train"]["calls"] == 3
    tad_store = store_at(tmp_path / "tad")
    trainer(Spy(), warmup_epochs=1).train(tad_store, *data())
    assert load_phases(tad_store.root / PHASES_FILE)["trust loop"]["calls"] == 3


def test_recalibrate_callback_changes_labels_and_trusted_space(tmp_path):
    spy = Spy()
    hooks = TADHooks(get_plugin_manager(default=spy))
    feats = torch.randn(N, 5)

    def anchors(state):
        if state.epoch != 0:
            return None
        return recalibrate_experts(hooks, feats, state, torch.randn(6, 5), torch.arange(6) % C)
    store = store_at(tmp_path)
    t = trainer(spy, warmup_epochs=1, recompute_every=100, on_epoch=anchors)
    t.hooks = hooks
    t.train(store, *data())
    # both experts reach the recalibration with the same labels and trusted space: one call serves both
    assert spy.recal_calls == [((N, 5), torch.int64, torch.bool, (6, 5), torch.int64, C)]
    rec = store.load_expert(0)
    y = data()[1]
    assert rec.label_epochs.tolist() == [0, 1]
    assert torch.equal(rec.labels_at(0), y) and torch.equal(rec.labels_at(1), torch.where(y != 0, y, 2))
    assert rec.trusted[1].all() and rec.trusted[2].all()  # recalibration trusted everything
    assert all(0 not in t for *_, t in spy.loss_calls[N // 8:])  # class 0 was relabelled to 2


def test_callback_result_is_checked(tmp_path):
    bad = trainer(None, tad=False, on_epoch=lambda s: TrustUpdate(trusted=torch.ones(N, dtype=torch.bool)))
    with pytest.raises(TrustLoopError, match=r"expected bool \(2, 48\)"):
        bad.train(store_at(tmp_path), *data())
    empty = trainer(None, tad=False, on_epoch=lambda s: TrustUpdate(trusted=torch.zeros(2, N, dtype=torch.bool)))
    with pytest.raises(TrustLoopError, match="trusted space is empty"):
        empty.train(store_at(tmp_path / "b"), *data())


def test_resume_retrains_only_missing_experts_identically(tmp_path):
    store = store_at(tmp_path)
    assert trainer(tad=False, experts_per_group=1).train(store, *data()) == [0, 1]
    first = store.load_expert(1).params
    store.expert_path(1).unlink()
    assert trainer(tad=False, experts_per_group=1).train(store, *data()) == [1]
    assert torch.equal(store.load_expert(1).params, first)
    assert trainer(tad=False, experts_per_group=1).train(store, *data()) == []


@pytest.mark.parametrize("tad", [False, True])
def test_cached_model_inputs_train_the_same_experts_with_one_preprocessing(tmp_path, tad):
    """``buffer.cache_inputs`` preprocesses each image set once (here a ZCA whitening) instead of every batch;
    the experts come out the same up to float rounding."""
    from tad_plugin.engine.zca import ZCA

    x, y, tx, ty = data()
    zca = Preprocessor("zca", zca=ZCA(0.1).fit(x.float() / 255))
    calls = []

    class Counting(Preprocessor):
        def __call__(self, images):
            calls.append(images.shape[0])
            return super().__call__(images)

    counting = Counting("zca", zca=zca.zca)
    records = {}
    for cache in (False, True):
        calls.clear()
        buf = BufferConfig(num_experts=2, epochs=3, batch_size=8, experts_per_group=2, eval_batch_size=20,
                           cache_inputs=cache)
        store = store_at(tmp_path / str(cache))
        ExpertTrainer(NET, counting, buf, TADConfig(enabled=tad, warmup_epochs=1), progress=False).train(
            store, x, y, tx, ty)
        records[cache] = store.load_expert(1)
        # cached: the training set and the test set once each (chunks of eval_batch_size 20)
        assert (sorted(calls) == sorted([20, 20, 8, 16])) == cache
    assert torch.allclose(records[True].params, records[False].params, rtol=1e-4, atol=1e-5)
    assert not torch.equal(records[True].params[0], records[True].params[-1])  # they trained


def test_experts_learn_and_trajectories_move(tmp_path):
    store = store_at(tmp_path, epochs=3)
    x, y, tx, ty = data()
    x = (y[:, None, None, None] * 100).to(torch.uint8).expand(N, 1, 8, 8).contiguous()  # separable classes
    tx = (ty[:, None, None, None] * 100).to(torch.uint8).expand(M, 1, 8, 8).contiguous()
    t = trainer(tad=False, epochs=3)
    t.buffer.dsa = False
    t._dsa_strategy = ""
    t.train(store, x, y, tx, ty)
    rec = store.load_expert(0)
    assert (rec.params[1:] - rec.params[:-1]).norm(dim=1).min() > 0
    assert rec.train_loss[-1] < rec.train_loss[0]


def test_sgd_matches_torch_optim():
    buf = BufferConfig(lr=0.1, momentum=0.9, weight_decay=0.01)
    t = ExpertTrainer(NET, PRE, buf, None, progress=False)
    p0 = torch.randn(2, 7)
    ref = torch.nn.Parameter(p0.clone())
    opt = torch.optim.SGD([ref], lr=0.1, momentum=0.9, weight_decay=0.01)
    ours, mom = p0.clone(), torch.zeros_like(p0)
    for _ in range(3):
        g = torch.randn(2, 7)
        ref.grad = g.clone()
        opt.step()
        ours, mom = t._sgd(ours, g, mom, None)
    torch.testing.assert_close(ours, ref.detach())
    # a masked expert takes no step and keeps its momentum
    frozen, mom2 = t._sgd(ours, torch.ones(2, 7), mom, torch.tensor([True, False]))
    assert torch.equal(frozen[1], ours[1]) and torch.equal(mom2[1], mom[1]) and not torch.equal(frozen[0], ours[0])


def test_epoch_order_covers_each_trusted_space_once():
    t = trainer(tad=True)
    trusted = torch.zeros(2, N, dtype=torch.bool)
    trusted[0, :10] = True
    trusted[1] = True
    labels = (torch.arange(N) % C).expand(2, N)
    idx, steps, s = t._epoch_order(trusted, labels, torch.Generator().manual_seed(0))
    assert steps.tolist() == [2, 6] and s == 6 and idx.shape == (2, 48)
    assert sorted(idx[0, :10].tolist()) == list(range(10))  # a permutation of the trusted indices first
    assert set(idx[0].tolist()) <= set(range(10))
    assert sorted(idx[1].tolist()) == list(range(N))


def test_balanced_epoch_draws_every_trusted_class_equally_often():
    n = 4000
    t = trainer(tad=True, balance_classes=True)
    labels = torch.zeros(2, n, dtype=torch.long)
    labels[:, 3000:3500] = 1  # class 0: 3000 samples, class 1: 500, class 2: 500
    labels[:, 3500:] = 2
    trusted = torch.ones(2, n, dtype=torch.bool)
    trusted[1, 3200:] = False  # expert 1: class 1 keeps 200 trusted samples, class 2 none
    trusted[1, 10] = False
    idx, steps, s = t._epoch_order(trusted, labels, torch.Generator().manual_seed(0))
    assert steps.tolist() == [500, 400] and idx.shape == (2, 500 * 8)
    drawn0 = labels[0, idx[0]].bincount(minlength=C)[:3] / idx.shape[1]
    torch.testing.assert_close(drawn0, torch.full((3,), 1 / 3), atol=0.02, rtol=0)  # 3000:500:500 -> 1:1:1
    used1 = idx[1, :400 * 8]  # the steps expert 1 takes
    assert bool(trusted[1, used1].all())  # only trusted samples, never sample 10 or the untrusted tail
    torch.testing.assert_close(labels[1, used1].bincount(minlength=C)[:3] / used1.numel(),
                               torch.tensor([0.5, 0.5, 0.0]), atol=0.02, rtol=0)
    assert len(set(idx[0].tolist())) < idx.shape[1]  # with replacement: the small classes repeat
    nothing = torch.zeros(1, n, dtype=torch.bool)  # an expert with an empty trusted space takes no step
    idx, steps, s = t._epoch_order(nothing, labels[:1], torch.Generator().manual_seed(0))
    assert steps.tolist() == [0] and s == 0 and idx.shape == (1, 0)


def test_the_noisy_arm_ignores_the_tad_only_remedies():
    """The asym40 config sets balance_classes and the warm-up penalty; its noisy arm (TAD off) must train
    exactly as plain MTT: every sample once per epoch in a random order, plain cross-entropy."""
    t = trainer(tad=False, balance_classes=True, warmup_confidence_penalty=1.0, warmup_epochs=2)
    labels = torch.zeros(1, N, dtype=torch.long)
    labels[:, : N // 4] = 1  # imbalanced labels: a balanced draw would repeat class 1's samples
    idx, steps, s = t._epoch_order(torch.ones(1, N, dtype=torch.bool), labels, torch.Generator().manual_seed(0))
    assert sorted(idx[0, :N].tolist()) == list(range(N))
    assert Schedule.of(t.tad).penalty(0) == 0.0 and Schedule.of(t.tad) == Schedule.off()
    assert Schedule.of(trainer(tad=True, warmup_confidence_penalty=1.0, warmup_epochs=2).tad).penalty(0) == 1.0


def test_bad_input_is_explained(tmp_path):
    x, y, tx, ty = data()
    t = trainer(tad=False)
    with pytest.raises(TypeError, match="uint8 tensor"):
        t.train(store_at(tmp_path), x.float(), y, tx, ty)
    with pytest.raises(ValueError, match=r"span \[0, 5\]"):
        t.train(store_at(tmp_path), x, y.clamp(max=5) + (y == 2) * 3, tx, ty)
    with pytest.raises(ExpertError, match="use another --out"):
        t.train(store_at(tmp_path / "o", epochs=9), x, y, tx, ty)
    diverge = trainer(tad=False)
    diverge.buffer.lr = 1e30
    with pytest.raises(ExpertError, match="diverged"):
        diverge.train(store_at(tmp_path / "d"), x, y, tx, ty)


def test_split_of_the_wrong_size_is_explained(tmp_path):
    class Short:
        @hookimpl
        def filter_dataset(self, losses, labels, num_classes):
            t = torch.ones(5, dtype=torch.bool)
            return TrustSplit(trusted=t, confidence=t.float(), thresholds=torch.zeros(num_classes))

    pm = get_plugin_manager()
    pm.register(Short())
    t = ExpertTrainer(NET, PRE, BufferConfig(num_experts=1, epochs=2, batch_size=8, experts_per_group=1),
                      TADConfig(warmup_epochs=1), hooks=TADHooks(pm), progress=False)
    with pytest.raises(TrustLoopError, match=r"the contract is \[N\] = \(48,\)"):
        t.train(store_at(tmp_path, epochs=2), *data())


def test_gsam_step_in_the_trainer_equals_a_hand_computation(tmp_path):
    """One GSAM step (one batch = the whole set, no DSA) per expert, computed by hand per expert."""
    from tad_plugin.engine.convnet import forward

    x, y, tx, ty = data(3)
    buf = BufferConfig(num_experts=2, epochs=1, batch_size=N, experts_per_group=2, dsa=False, lr=0.05,
                       weight_decay=0.01, optimizer="gsam", rho=0.05, alpha=0.3)
    store = store_at(tmp_path, epochs=1)
    ExpertTrainer(NET, PRE, buf, None, progress=False).train(store, x, y, tx, ty)
    inputs = PRE(x)

    def grad_at(w):
        w = w.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(forward(NET, w[None], inputs[None])[0], y)
        return torch.autograd.grad(loss, w)[0]

    for e in range(2):
        w0 = store.trajectory(e)[0]
        g = grad_at(w0)
        eps = 0.05 * g / (w0.abs() * g).norm() * w0 ** 2
        g2 = grad_at(w0 + eps)
        cos = (g * g2).sum() / (g.norm() * g2.norm())
        d = g2 - 0.3 * (g - cos * g.norm() * g2 / g2.norm())
        torch.testing.assert_close(store.trajectory(e)[1], w0 - 0.05 * (d + 0.01 * w0), rtol=1e-4, atol=1e-6)


def test_gsam_step_leaves_inactive_experts_alone():
    from tad_plugin.engine.experts import _gsam_step
    from tad_plugin.engine.gsam import GSAM

    p = torch.randn(2, 5, requires_grad=True)
    opt = GSAM([p], torch.optim.SGD, rho=0.1, alpha=0.3, independent_rows=True, lr=0.1, momentum=0.9)
    target = torch.randn(2, 5)
    calls = []

    def loss_of(w):
        calls.append(1)
        return ((w - target) ** 2).sum(), w
    _gsam_step(opt, loss_of, None)
    before = p.detach().clone()
    mom = opt.base_optimizer.state[p]["momentum_buffer"].clone()
    _gsam_step(opt, loss_of, torch.tensor([True, False]))
    assert len(calls) == 4  # the loss is evaluated twice per step
    assert torch.equal(p[1], before[1]) and not torch.equal(p[0], before[0])
    assert torch.equal(opt.base_optimizer.state[p]["momentum_buffer"][1], mom[1])


def test_recalibrate_experts_calls_the_hook_once_per_distinct_expert_state():
    spy = Spy()
    hooks = TADHooks(get_plugin_manager(default=spy))
    y = data()[1]
    labels = y.expand(3, N).clone()
    trusted = torch.stack([y != 0, y != 0, y != 1])  # experts 0 and 1 alike, expert 2 differs
    state = EpochState(experts=[0, 1, 2], epoch=0, params=torch.zeros(3, NET.num_params), labels=labels,
                       trusted=trusted, losses=None, splits=None, num_classes=C)
    update = recalibrate_experts(hooks, torch.randn(N, 5), state, torch.randn(6, 5), torch.arange(6) % C)
    assert len(spy.recal_calls) == 2
    assert torch.equal(update.labels[0], update.labels[1])
    assert torch.equal(update.labels[0], torch.where(y != 0, y, 2))  # the spy relabels the untrusted as 2
    assert torch.equal(update.labels[2], torch.where(y != 1, y, 2))


def test_test_pass_runs_under_the_training_autocast():
    from tad_plugin.engine.convnet import forward, init_params

    t = trainer(spy=Spy(), tad=True)
    t.device = torch.device("cpu")
    t._amp = True  # buffer.amp's effect on a CUDA device, here on the CPU's bf16 autocast
    seen = []

    def spy_forward(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return forward(*args, **kwargs)

    t._forward = spy_forward
    params = init_params(NET, 2, generator=torch.Generator().manual_seed(0))
    x, y, tx, ty = data()
    acc = t._test(params, tx, ty)
    assert acc.shape == (2,) and seen and all(seen)  # the accuracy monitor: bf16 like training
    t._amp = False
    seen.clear()
    t._test(params, tx, ty)
    assert seen and not any(seen)


def test_division_loss_pass_runs_in_the_training_precision_and_layout(tmp_path):
    from tad_plugin.engine.convnet import forward

    t = trainer(spy=Spy(), tad=True, warmup_epochs=1)
    t.buffer.channels_last = True
    t._eval_precision = lambda: torch.autocast("cpu", torch.bfloat16)  # buffer.amp's autocast, on the CPU
    seen = []

    def spy_forward(*args, **kwargs):
        seen.append((args[2].dim(), torch.is_autocast_enabled("cpu"), kwargs.get("channels_last")))
        return forward(*args, **kwargs)

    t._forward = spy_forward
    t.train(store_at(tmp_path), *data())
    passes = [s for s in seen if s[0] == 4]  # one batch shared by the experts: test and loss passes
    assert len(passes) >= 3 + 2 and all(amp and cl for _, amp, cl in passes)  # 3 test passes, 2 loss passes
    assert all(cl for *_, cl in seen)  # the training steps too


def test_warmup_confidence_penalty_applies_to_the_warmup_steps_only(tmp_path, monkeypatch):
    import tad_plugin.trust_loop as experts_module

    calls = []
    real = experts_module.confidence_penalty

    def spy(logits):
        calls.append(tuple(logits.shape))
        return real(logits)

    monkeypatch.setattr(experts_module, "confidence_penalty", spy)
    plain = store_at(tmp_path / "plain")
    trainer(warmup_epochs=2).train(plain, *data())
    assert calls == []  # off by default
    store = store_at(tmp_path / "penalised")
    trainer(warmup_epochs=2, warmup_confidence_penalty=1.0).train(store, *data())
    assert calls == [(2 * 8, C)] * (2 * (N // 8))  # every step of the two warm-up epochs, none after
    a, b = plain.load_expert(0), store.load_expert(0)
    assert torch.equal(a.params[0], b.params[0]) and not torch.allclose(a.params[1], b.params[1])
    with pytest.raises(ConfigError, match="warmup_confidence_penalty"):
        TADConfig(warmup_confidence_penalty=-1.0).validate()


class LossSpy(Spy):
    """Spy that keeps the loss tensors each division receives."""

    def __init__(self):
        super().__init__()
        self.losses = []

    @hookimpl
    def filter_dataset(self, losses, labels, num_classes):
        self.losses.append(losses.clone())
        return super().filter_dataset(losses, labels, num_classes)


def test_loss_average_divides_on_the_mean_of_the_last_snapshots_losses(tmp_path):
    # the spy's split ignores the losses, so both runs train the same trajectories
    runs = {}
    for k in (1, 2):
        spy = LossSpy()
        trainer(spy, warmup_epochs=1, experts_per_group=1, loss_average=k).train(store_at(tmp_path / str(k)), *data())
        runs[k] = spy.losses[:2]  # expert 0: divisions before epochs 1 and 2
    assert torch.equal(TrajectoryStore.open(tmp_path / "1").load_expert(0).params,
                       TrajectoryStore.open(tmp_path / "2").load_expert(0).params)
    after_epoch_0, after_epoch_1 = runs[1]
    assert torch.allclose(runs[2][1], (after_epoch_0 + after_epoch_1) / 2, atol=1e-6)
    assert not torch.allclose(runs[2][1], after_epoch_1)
    # the first division has the initialisation and epoch 0 to average
    x, y, *_ = data()
    init = TrajectoryStore.open(tmp_path / "2").load_expert(0).params[:1]
    at_init = per_sample_losses(NET, init, x, y, PRE, 20)[0][0]
    assert torch.allclose(runs[2][0], (at_init + after_epoch_0) / 2, atol=1e-6)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_loss_average_must_be_a_positive_integer(bad):
    with pytest.raises(ConfigError, match="tad.loss_average"):
        TADConfig(loss_average=bad).validate()

"""The MTT adapter: defaults table, buffer -> distill -> evaluate with TAD on/off, the trusted init pool."""

import pytest
import torch

from tad_plugin import TADHooks, TrustSplit, get_plugin_manager, hookimpl
from tad_plugin.adapters.mtt import MTT, MTT_TABLE, mtt_defaults
from tad_plugin.data import ImageDataset
from tad_plugin.engine.config import ConfigError, build_config
from tad_plugin.engine.pipeline import load_distilled, save_distilled
from tad_plugin.engine.trajectories import load_upstream_buffer
from tad_plugin.trust_report import TrustReport


def tiny_dataset(n=60, m=20, c=3):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % c
    x = (y[:, None, None, None] * 80 + torch.randint(0, 40, (n, 1, 8, 8), generator=g)).to(torch.uint8)
    ty = torch.arange(m) % c
    tx = (ty[:, None, None, None] * 80 + torch.randint(0, 40, (m, 1, 8, 8), generator=g)).to(torch.uint8)
    return ImageDataset("tiny", x, y, tx, ty, class_names=("a", "b", "c"))


def tiny_config(tad, **extra):
    sets = [f"tad.enabled={str(tad).lower()}", "device=cpu", "model.width=4", "model.depth=2",
            "buffer.num_experts=2", "buffer.epochs=3", "buffer.batch_size=10", "buffer.experts_per_group=2",
            "tad.warmup_epochs=1", "tad.inner_loop=false", "distill.ipc=2", "distill.iterations=3",
            "distill.syn_steps=2",
            "distill.max_start_epoch=1", "distill.expert_epochs=2", "eval.num_eval=2", "eval.epochs=3",
            *[f"{k}={v}" for k, v in extra.items()]]
    return build_config(mtt_defaults("tiny", 2), sets=sets)


class TrustLabelsNotZero:
    @hookimpl
    def filter_dataset(self, losses, labels, num_classes):
        t = labels != 0
        return TrustSplit(trusted=t, confidence=t.float(), thresholds=torch.zeros(num_classes))


def test_defaults_follow_the_mtt_table():
    d = mtt_defaults("cifar10", 10)
    assert d["buffer"] == {"num_experts": 100, "epochs": 50, "lr": 0.01, "momentum": 0.0, "weight_decay": 0.0,
                           "batch_size": 256, "dsa": True, "optimizer": "sgd"}
    assert d["distill"]["syn_steps"] == 30 and d["distill"]["max_start_epoch"] == 20
    assert d["distill"]["lr_teacher"] == 0.001 and d["data"]["zca"] is True
    assert mtt_defaults("CIFAR-100", 50)["distill"]["batch_syn"] == 125
    assert mtt_defaults("digits", 10)["data"]["zca"] is False  # ZCA only where MTT used it
    assert set(MTT_TABLE) == {(d, i) for d in ("cifar10", "cifar100", "tinyimagenet") for i in (1, 10, 50)}
    build_config(mtt_defaults("cifar100", 1))  # every table row is a valid config


def test_buffer_distill_evaluate_with_tad_uses_trusted_pool(tmp_path):
    ds = tiny_dataset()
    labels = ds.train_labels.clone()
    pm = get_plugin_manager()
    pm.register(TrustLabelsNotZero())  # overrides TAD's division; TAD's expert_loss stays
    mtt = MTT(tiny_config(True), hooks=TADHooks(pm), progress=False)
    store = mtt.buffer(ds, labels, tmp_path / "buffer")
    assert store.finished() == [0, 1]
    pool, pool_labels = mtt.init_pool(store, labels)
    assert torch.equal(pool, torch.nonzero(labels != 0).flatten())
    # class 0 has no trusted sample, so a real initialisation of class 0 cannot be drawn: clear error
    with pytest.raises(ValueError, match="class 0: 0"):
        mtt.distill(store, ds, labels)
    mtt.config.distill.pix_init = "noise"
    result = mtt.distill(store, ds, labels, checkpoint=tmp_path / "ckpt.pt")
    assert result.images.shape == (6, 1, 8, 8) and torch.equal(result.labels, torch.tensor([0, 0, 1, 1, 2, 2]))
    ev = mtt.evaluate(result, ds)
    assert len(ev.accuracies) == 2 and all(0 <= a <= 1 for a in ev.accuracies)
    # distilled sets round-trip with their transform
    save_distilled(result, tmp_path / "d.pt", mtt.preprocessor(ds, store), settings={"a": 1})
    back, pre = load_distilled(tmp_path / "d.pt")
    assert torch.equal(back.images, result.images) and back.syn_lr == result.syn_lr and pre.mode == "normalize"
    # and the experts export to the upstream layout
    paths = store.export_upstream(tmp_path / "up")
    assert torch.equal(load_upstream_buffer(paths[0])[1], store.trajectory(1))


def test_the_initial_images_come_from_the_consensus_level_asked_for():
    from types import SimpleNamespace

    votes = torch.tensor([1.0, 0.5, 0.75, 0.25, 1.0])
    labels = torch.tensor([0, 1, 2, 0, 1])
    store = SimpleNamespace(final_trust=lambda: (votes, labels))
    mtt = MTT(tiny_config(True), progress=False)
    assert mtt.config.distill.init_consensus == 0.5  # the majority unless asked
    pool, pool_labels = mtt.init_pool(store, torch.zeros(5, dtype=torch.long))
    assert pool.tolist() == [0, 1, 2, 4] and torch.equal(pool_labels, labels)
    mtt.config.distill.init_consensus = 1.0
    assert mtt.init_pool(store, labels)[0].tolist() == [0, 4]
    for bad in (0.0, 1.5):
        mtt.config.distill.init_consensus = bad
        with pytest.raises(ConfigError, match="init_consensus must lie in"):
            mtt.config.distill.validate()


def test_without_tad_the_pool_is_everything(tmp_path):
    ds = tiny_dataset()
    mtt = MTT(tiny_config(False), progress=False)
    assert mtt.hooks is None
    store = mtt.buffer(ds, ds.train_labels, tmp_path / "b")
    pool, labels = mtt.init_pool(store, ds.train_labels)
    assert torch.equal(pool, torch.arange(60)) and torch.equal(labels, ds.train_labels)
    result = mtt.distill(store, ds)
    assert result.images.shape == (6, 1, 8, 8)


def test_resuming_with_other_labels_is_refused(tmp_path):
    ds = tiny_dataset()
    mtt = MTT(tiny_config(False), progress=False)
    mtt.buffer(ds, ds.train_labels, tmp_path / "b")
    with pytest.raises(ValueError, match="meta.labels"):
        mtt.buffer(ds, (ds.train_labels + 1) % 3, tmp_path / "b")


def test_load_distilled_errors(tmp_path):
    with pytest.raises(ValueError, match="run `tad distill` first"):
        load_distilled(tmp_path / "none.pt")
    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read distilled set"):
        load_distilled(tmp_path / "bad.pt")


def test_buffer_runs_the_dual_loop_and_writes_the_trust_report(tmp_path):
    ds = tiny_dataset()
    clean = ds.train_labels
    noisy = clean.clone()
    noisy[::5] = (noisy[::5] + 1) % 3  # 20% wrong labels
    cfg = tiny_config(True, **{"tad.inner_loop": "true", "tad.features": "pixels", "buffer.epochs": 5,
                               "tad.anchor_epoch": 3, "tad.anchor_ipc": 2, "tad.anchor_iterations": 2})
    store = MTT(cfg, progress=False).buffer(ds, noisy, tmp_path / "buffer", clean_labels=clean)
    report = TrustReport.load_json(store.root / "trust_report.json")
    stages = [r.stage for r in report.rounds]
    assert "division" in stages and "recalibration" in stages
    assert report.noisy_label_accuracy == pytest.approx(0.8)


def test_class_balanced_trusted_epochs_train_other_experts_from_the_same_split(tmp_path):
    ds = tiny_dataset()
    noisy = ds.train_labels.clone()
    noisy[::5] = (noisy[::5] + 1) % 3
    finals = {}
    for balance in ("false", "true"):
        cfg = tiny_config(True, **{"tad.inner_loop": "false", "buffer.epochs": 4, "tad.balance_classes": balance})
        assert cfg.tad.balance_classes is (balance == "true")
        store = MTT(cfg, progress=False).buffer(ds, noisy, tmp_path / balance, clean_labels=ds.train_labels)
        finals[balance] = store.trajectory(0)
        assert bool(torch.isfinite(finals[balance]).all())
    # the same initialisation, then other batches (the balanced draw applies from the first epoch on)
    assert torch.equal(finals["true"][0], finals["false"][0])
    assert not torch.equal(finals["true"][-1], finals["false"][-1])


def test_missing_feature_extractor_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TAD_PLUGIN_FEATURES", str(tmp_path / "none"))
    cfg = tiny_config(True, **{"tad.inner_loop": "true", "buffer.epochs": 5, "tad.anchor_epoch": 3})
    with pytest.raises(ValueError, match="tad features train"):
        MTT(cfg, progress=False).buffer(tiny_dataset(), tiny_dataset().train_labels, tmp_path / "buffer")

"""Table 3's switches of TAD's parts: Reg (tad.reg_weight), OL (tad.outer_loop), IL (tad.inner_loop); each changes
exactly the part it names."""

import pytest
import torch
import torch.nn.functional as F
from test_mtt_adapter import tiny_config, tiny_dataset

from tad_plugin import TADHooks, get_plugin_manager, hookimpl
from tad_plugin.adapters.mtt import MTT
from tad_plugin.engine.config import ConfigError, TADConfig
from tad_plugin.trust_report import TrustReport


def noisy_labels(ds):
    noisy = ds.train_labels.clone()
    noisy[::5] = (noisy[::5] + 1) % 3  # 20% wrong labels
    return noisy


class CountDivisions:
    """Records every division TAD makes (and leaves the division itself to TAD's own filter_dataset)."""

    def __init__(self):
        self.calls = 0

    @hookimpl(hookwrapper=True)
    def filter_dataset(self, losses, labels, num_classes):
        self.calls += 1
        yield


def buffer_with(tmp_path, name, **sets):
    ds = tiny_dataset()
    pm = get_plugin_manager()
    counter = CountDivisions()
    pm.register(counter)
    cfg = tiny_config(True, **{"buffer.epochs": 5, "tad.features": "pixels", "tad.anchor_epoch": 3,
                               "tad.anchor_ipc": 2, "tad.anchor_iterations": 2, **sets})
    store = MTT(cfg, hooks=TADHooks(pm), progress=False).buffer(ds, noisy_labels(ds), tmp_path / name,
                                                                   clean_labels=ds.train_labels)
    return store, counter.calls, noisy_labels(ds)


def test_outer_loop_off_trains_every_sample_and_makes_no_division(tmp_path):
    on, divisions_on, _ = buffer_with(tmp_path, "on", **{"tad.inner_loop": "false"})
    off, divisions_off, labels = buffer_with(tmp_path, "off", **{"tad.inner_loop": "false", "tad.outer_loop": "false"})
    assert divisions_on > 0 and divisions_off == 0
    for i in off.finished():
        rec = off.load_expert(i)
        assert bool(rec.trusted.all())  # every sample trains in every epoch
        assert torch.equal(rec.labels_at(rec.epochs), labels)
    assert not all(bool(on.load_expert(i).trusted.all()) for i in on.finished())
    votes, final_labels = off.final_trust()
    assert bool((votes == 1).all()) and torch.equal(final_labels, labels)


def test_inner_loop_off_recalibrates_nothing_and_keeps_the_labels(tmp_path):
    on, _, labels = buffer_with(tmp_path, "on", **{"tad.inner_loop": "true"})
    off, divisions, _ = buffer_with(tmp_path, "off", **{"tad.inner_loop": "false"})
    assert divisions > 0  # the outer loop still divides
    assert "recalibration" in [r.stage for r in TrustReport.load_json(on.root / "trust_report.json").rounds]
    assert not (off.root / "trust_report.json").exists()  # no dual loop ran
    for i in off.finished():
        rec = off.load_expert(i)
        assert rec.labels.shape[0] == 1 and torch.equal(rec.labels_at(rec.epochs), labels)


def test_reg_off_is_plain_cross_entropy():
    logits = torch.randn(16, 10, generator=torch.Generator().manual_seed(0))
    targets = torch.arange(16) % 10
    plain = MTT(tiny_config(True, **{"tad.reg_weight": 0}), progress=False).hooks
    with_reg = MTT(tiny_config(True), progress=False).hooks
    assert torch.allclose(plain.expert_loss(logits, targets), F.cross_entropy(logits, targets), atol=1e-6)
    assert with_reg.expert_loss(logits, targets) > F.cross_entropy(logits, targets) + 1e-3


def test_inner_loop_without_outer_loop_is_refused():
    with pytest.raises(ConfigError, match="tad.inner_loop needs tad.outer_loop.*tad.inner_loop=false"):
        TADConfig(outer_loop=False).validate()
    TADConfig(outer_loop=False, inner_loop=False).validate()
